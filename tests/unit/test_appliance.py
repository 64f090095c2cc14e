# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of appliance.py: layout, connection arguments, file collection, facts.

The database dump itself is tested against a real mariadbd in tests/integration/test_appliance_dump.py.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance import facts as appliance_facts
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.dump import DatabaseDump
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.facts import estimate_snapshot_size
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.files import collect_files
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout, ConfigPath
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection, temporary_defaults_file
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ConfigError
from tests.doubles import serve_segura_health
from tests.secret_checks import assert_no_secret

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_appliance(root):
    """A small lab appliance: config files, a config folder, secrets staging, a day of recordings."""
    files = {
        "var/senhasegura/orbinibkp.conf": b"[backup]\nenabled=1\n",
        "etc/mysql/conf.d/galera.cnf": b"[galera]\nwsrep_on = OFF\n",
        "etc/senhasegura/app.conf": b"a=1\n",
        "etc/senhasegura/sub/b.conf": b"b=2\n",
        "srv/cache/coba/secrets.enc": b"\x00\x01secret-blob",
        "var/senhasegura/arz/2026/1127/s1.arz": b"x" * 10,
    }
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
    return ApplianceLayout(root=str(root))


# ----------------------------------------------------------------------------- layout


def test_layout_defaults_and_paths(tmp_path):
    layout = ApplianceLayout(root=str(tmp_path))
    assert layout.arz_path == os.path.join(str(tmp_path), "var/senhasegura/arz")
    assert layout.secrets_path == os.path.join(str(tmp_path), "srv/cache/coba")
    assert layout.databases == ("mt4", "senhasegura")
    assert [c.path for c in layout.config_paths] == [
        "var/senhasegura/orbinibkp.conf", "etc/mysql/conf.d/galera.cnf", "etc/senhasegura"]
    assert [c.optional for c in layout.config_paths] == [False, True, True]


def test_layout_accepts_absolute_style_and_dict_config_paths(tmp_path):
    layout = ApplianceLayout(root=str(tmp_path), arz_dir="/data/arz/",
                             config_paths=["/etc/a.conf", {"path": "etc/b", "optional": True}])
    assert layout.arz_dir == "data/arz"
    assert layout.config_paths == (ConfigPath("etc/a.conf", False), ConfigPath("etc/b", True))


@pytest.mark.parametrize("kwargs, fragment", [
    ({"root": "relative/dir"}, "relative/dir"),
    ({"root": "/nonexistent/appliance/root"}, "/nonexistent/appliance/root"),
    ({"arz_dir": "var/../../etc"}, "var/../../etc"),
    ({"secrets_dir": ""}, "secrets folder"),
    ({"config_paths": ["etc/ok", "etc/../../x"]}, "etc/../../x"),
    ({"config_paths": [{"path": "etc/x", "optinal": True}]}, "optinal"),
    ({"config_paths": "etc/single-string"}, "list"),
    ({"databases": ("mt4", "drop table;")}, "drop table;"),
    ({"databases": ()}, "non-empty"),
    ({"databases": ("mt4", "mt4")}, "twice"),
])
def test_layout_validation_names_the_bad_value(tmp_path, kwargs, fragment):
    kwargs.setdefault("root", str(tmp_path))
    with pytest.raises(ConfigError) as info:
        ApplianceLayout(**kwargs)
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------- connection


def test_connection_defaults_file_comes_first():
    conn = DatabaseConnection(defaults_file="/etc/x.cnf", socket="/run/s.sock", user="backup")
    assert conn.client_args() == ["--defaults-extra-file=/etc/x.cnf", "--socket=/run/s.sock", "--user=backup"]
    exclusive = DatabaseConnection(defaults_file="/etc/x.cnf", host="127.0.0.1", port=3307, exclusive_defaults=True)
    assert exclusive.client_args() == ["--defaults-file=/etc/x.cnf", "--host=127.0.0.1", "--port=3307"]
    dump_cmd = DatabaseDump(conn, ("mt4", "senhasegura")).command()
    assert dump_cmd[1] == "--defaults-extra-file=/etc/x.cnf"
    assert dump_cmd[-3:] == ["--databases", "mt4", "senhasegura"]
    assert "--single-transaction" in dump_cmd and "--skip-dump-date" in dump_cmd


def test_connection_has_no_password_field():
    with pytest.raises(TypeError):
        DatabaseConnection(password="x")  # pylint: disable=unexpected-keyword-arg


@pytest.mark.parametrize("kwargs", [
    {"defaults_file": "relative.cnf"}, {"socket": "run/s"}, {"port": 0}, {"port": "3306"}, {"user": ""},
])
def test_connection_validation(kwargs):
    with pytest.raises(ConfigError):
        DatabaseConnection(**kwargs)


def test_appliance_default_connection(tmp_path):
    debian = tmp_path / "debian.cnf"
    assert DatabaseConnection.appliance_default(str(debian)).client_args() == [
        "--socket=/run/mysqld/mysqld.sock", "--user=root"]
    debian.write_text("[client]\nuser=root\n")
    assert DatabaseConnection.appliance_default(str(debian)).client_args() == ["--defaults-file=" + str(debian)]


def test_temporary_defaults_file_is_private_and_removed(tmp_path):
    password = 'p a"s\\s#w;o\'rd!&'
    with temporary_defaults_file(password, user="backup", directory=str(tmp_path)) as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        text = open(path, encoding="utf-8").read()
        assert text == '[client]\nuser="backup"\npassword="p a\\"s\\\\s#w;o\'rd!&"\n'
        conn = DatabaseConnection(defaults_file=path)
        assert_no_secret(" ".join(DatabaseDump(conn).command()), password, "the dump command line")
    assert not os.path.exists(path)


def test_dump_failure_quotes_the_tool(tmp_path):
    """A real mariadb-dump against a socket where no server listens: exit code and message quoted."""
    conn = DatabaseConnection(socket=str(tmp_path / "no-server.sock"), user="root")
    with pytest.raises(ApplianceError) as info:
        with DatabaseDump(conn, ("mt4",)) as dump:
            assert dump.stdout.read() == b""
    message = str(info.value)
    assert "mariadb-dump exit code 2" in message and "Can't connect" in message, message


def test_dump_rejects_bad_database_names():
    with pytest.raises(ConfigError):
        DatabaseDump(DatabaseConnection(), ("mt4; drop",))


# ----------------------------------------------------------------------------- files


def names(items):
    return [(item.archive_name, item.kind) for item in items]


def test_collect_files_deterministic_order_and_kinds(tmp_path):
    layout = make_appliance(tmp_path)
    os.symlink("/nonexistent/target", tmp_path / "etc/senhasegura/dangling-link")
    problems = []
    items = list(collect_files(layout, ["config", "secrets"], problems))
    assert problems == []
    assert names(items) == [
        ("files/var/senhasegura/orbinibkp.conf", "file"),
        ("files/etc/mysql/conf.d/galera.cnf", "file"),
        ("files/etc/senhasegura", "dir"),
        ("files/etc/senhasegura/app.conf", "file"),
        ("files/etc/senhasegura/dangling-link", "symlink"),  # archived as a link, not followed
        ("files/etc/senhasegura/sub", "dir"),
        ("files/etc/senhasegura/sub/b.conf", "file"),
        ("files/srv/cache/coba", "dir"),
        ("files/srv/cache/coba/secrets.enc", "file"),
    ]
    assert items[0].abs_path == os.path.join(str(tmp_path), "var/senhasegura/orbinibkp.conf")
    assert names(collect_files(layout, ["secrets"])) == [
        ("files/srv/cache/coba", "dir"), ("files/srv/cache/coba/secrets.enc", "file")]
    assert list(collect_files(layout, ["database", "sessions"])) == []


def test_collect_files_overlapping_paths_yield_once(tmp_path):
    layout = make_appliance(tmp_path)
    layout = ApplianceLayout(root=str(tmp_path), config_paths=["etc/senhasegura", "etc/senhasegura/app.conf"])
    found = [item.archive_name for item in collect_files(layout, ["config"])]
    assert found.count("files/etc/senhasegura/app.conf") == 1


def test_missing_required_path_fails_and_optional_is_skipped(tmp_path):
    make_appliance(tmp_path)
    layout = ApplianceLayout(root=str(tmp_path), config_paths=[{"path": "etc/absent", "optional": True}])
    assert list(collect_files(layout, ["config"])) == []
    layout = ApplianceLayout(root=str(tmp_path), config_paths=["etc/absent.conf"])
    with pytest.raises(ApplianceError) as info:
        collect_files(layout, ["config"])  # raised at call time, before any walk
    assert os.path.join(str(tmp_path), "etc/absent.conf") in str(info.value)
    shutil.rmtree(tmp_path / "srv/cache/coba")
    with pytest.raises(ApplianceError, match="srv/cache/coba"):
        collect_files(ApplianceLayout(root=str(tmp_path)), ["secrets"])
    with pytest.raises(ConfigError, match="bogus"):
        collect_files(ApplianceLayout(root=str(tmp_path)), ["bogus"])


def test_fifo_is_reported_not_skipped(tmp_path):
    layout = make_appliance(tmp_path)
    fifo = tmp_path / "etc/senhasegura/control.fifo"
    os.mkfifo(fifo)
    problems = []
    items = list(collect_files(layout, ["config"], problems))
    assert [p.path for p in problems] == [str(fifo)]
    assert "files/etc/senhasegura/control.fifo" not in [i.archive_name for i in items]
    # Without a problems list, the walk ends with one error naming the file.
    with pytest.raises(ApplianceError) as info:
        list(collect_files(layout, ["config"]))
    assert str(fifo) in str(info.value) and "1 files could not be read" in str(info.value)


def test_file_vanishing_during_the_walk_is_reported(tmp_path):
    layout = make_appliance(tmp_path)
    problems = []
    walk = collect_files(layout, ["config"], problems)
    seen = []
    for item in walk:
        seen.append(item.archive_name)
        if item.archive_name == "files/etc/senhasegura/app.conf":  # its folder is listed, 'sub' is next
            shutil.rmtree(tmp_path / "etc/senhasegura/sub")
    assert [str(p) for p in problems] == [
        os.path.join(str(tmp_path), "etc/senhasegura/sub") + ": vanished while being collected"]
    assert "files/etc/senhasegura/sub" not in seen and "files/srv/cache/coba" not in seen


UNPRIVILEGED_WALK = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.files import collect_files
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
problems = []
items = list(collect_files(ApplianceLayout(root=sys.argv[2]), ["config", "secrets"], problems))
print(json.dumps({"items": [i.archive_name for i in items], "problems": [list(p) for p in problems]}))
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed")
def test_unreadable_file_is_reported(tmp_path):
    """chmod 000 does not stop root, so run the walk as root WITHOUT the DAC override capabilities."""
    layout = make_appliance(tmp_path)
    secret = tmp_path / "srv/cache/coba/secrets.enc"
    os.chmod(secret, 0)
    collections = os.path.join(REPO, ".build", "collections")
    result = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", sys.executable, "-c",
         UNPRIVILEGED_WALK, collections, layout.root],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=True)
    report = json.loads(result.stdout)
    assert report["problems"] == [[str(secret), "cannot be read (Permission denied)"]]
    assert "files/srv/cache/coba/secrets.enc" not in report["items"]
    assert "files/srv/cache/coba" in report["items"]


# ----------------------------------------------------------------------------- facts


@pytest.fixture
def health_double():
    with serve_segura_health() as server:
        yield server


@pytest.mark.parametrize("code, role, primary", [
    (200, "primary", True), (203, "secondary", False), (403, "inactive", False),
    (451, "licence_expired", False), (503, "unavailable", False), (500, "unknown", False),
])
def test_cluster_role_from_health_endpoint(tmp_path, health_double, code, role, primary):
    layout = make_appliance(tmp_path)
    url = "http://127.0.0.1:%d/flow/orbit/mntr/%d" % (health_double.server_address[1], code)
    result = appliance_facts.cluster_role(layout, health_url=url, timeout=10)
    assert result == {"role": role, "is_primary": primary, "source": "health", "status": code}


def test_cluster_role_unreachable_health_is_unknown(tmp_path, health_double):
    port = health_double.server_address[1]
    health_double.shutdown()
    health_double.server_close()
    result = appliance_facts.cluster_role(make_appliance(tmp_path), "http://127.0.0.1:%d/flow/orbit/mntr" % port, timeout=5)
    assert result["role"] == "unknown" and result["is_primary"] is None and "did not answer" in result["error"]
    with pytest.raises(ConfigError):
        appliance_facts.cluster_role(make_appliance(tmp_path), "ftp://x/")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed for a self-signed certificate")
def test_health_endpoint_tls_is_verified_unless_disabled(tmp_path):
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    with serve_segura_health(lambda sock: context.wrap_socket(sock, server_side=True)) as server:
        layout = make_appliance(tmp_path / "root")
        url = "https://127.0.0.1:%d/flow/orbit/mntr/203" % server.server_address[1]
        verified = appliance_facts.cluster_role(layout, url, timeout=10)
        assert verified["role"] == "unknown" and "CERTIFICATE_VERIFY_FAILED" in verified["error"]
        assert appliance_facts.cluster_role(layout, url, verify_tls=False, timeout=10)["role"] == "secondary"


@pytest.mark.parametrize("galera, role, primary", [
    (None, "standalone", True),
    ("[galera]\nwsrep_on = OFF\n", "standalone", True),
    ("[galera]\n# wsrep_on=ON\nwsrep-on = ON\nwsrep_provider=/usr/lib/galera/libgalera_smm.so\n", "cluster_member", None),
    ("[mysqld]\nwsrep_on=1\nwsrep_provider = none\n", "standalone", True),
])
def test_cluster_role_from_galera_config(tmp_path, galera, role, primary):
    layout = make_appliance(tmp_path)
    cnf = tmp_path / "etc/mysql/conf.d/galera.cnf"
    if galera is None:
        cnf.unlink()
    else:
        cnf.write_text(galera)
    result = appliance_facts.cluster_role(layout)
    assert (result["role"], result["is_primary"], result["source"]) == (role, primary, "galera.cnf")


@pytest.mark.parametrize("values, role, size", [
    ({}, "standalone", 0),  # a build without Galera: no wsrep rows at all
    ({"wsrep_on": "OFF", "wsrep_cluster_size": "0", "wsrep_cluster_status": "Disconnected"}, "standalone", 0),
    ({"wsrep_on": "ON", "wsrep_cluster_size": "0", "wsrep_cluster_status": "Disconnected"}, "standalone", 0),
    ({"wsrep_on": "ON", "wsrep_provider": "none", "wsrep_cluster_size": "0", "wsrep_cluster_status": "Disconnected"},
     "standalone", 0),
    # the provider loaded but no cluster: an evicted member reports what a node without a provider does
    ({"wsrep_on": "ON", "wsrep_provider": "/usr/lib/galera/libgalera_smm.so", "wsrep_cluster_size": "0",
      "wsrep_cluster_status": "Disconnected"}, "cluster_member", 0),
    ({"wsrep_on": "ON", "wsrep_cluster_size": "1", "wsrep_cluster_status": "Primary"}, "standalone", 1),
    ({"wsrep_on": "ON", "wsrep_cluster_size": "3", "wsrep_cluster_status": "Primary"}, "cluster_member", 3),
    ({"wsrep_on": "ON", "wsrep_cluster_size": "1", "wsrep_cluster_status": "non-Primary"}, "cluster_member", 1),
])
def test_cluster_role_from_the_running_server(values, role, size):
    """The server's wsrep state decides (tests/integration/test_galera_role.py runs the real servers)."""
    result = appliance_facts.role_from_wsrep(values)
    assert (result["role"], result["source"], result["cluster_size"]) == (role, "server", size)
    if role == "standalone":
        assert result["is_primary"] is True and "error" not in result
    else:
        assert result["is_primary"] is None and "give the health URL" in result["error"]


def test_appliance_version_sources(tmp_path):
    layout = make_appliance(tmp_path)
    if shutil.which("orbit") is None:
        assert appliance_facts.appliance_version(layout) == {"version": "unknown", "source": "none"}
    (tmp_path / "etc/senhasegura/version").write_text("3.32.0.12\n")
    assert appliance_facts.appliance_version(layout, orbit="") == {
        "version": "3.32.0.12", "source": str(tmp_path / "etc/senhasegura/version")}
    # TEST DOUBLE of the proprietary orbit CLI.
    orbit = tmp_path / "orbit"
    orbit.write_text("#!/bin/sh\n[ \"$1\" = version ] && echo 'Segura 4.0.1' && exit 0\nexit 3\n")
    orbit.chmod(0o755)
    assert appliance_facts.appliance_version(layout, orbit=str(orbit)) == {"version": "Segura 4.0.1", "source": "orbit"}
    orbit.write_text("#!/bin/sh\necho 'orbit: needs root' >&2\nexit 1\n")
    with pytest.raises(ApplianceError, match="needs root"):
        appliance_facts.appliance_version(layout, orbit=str(orbit))


def test_network_mounts_keep_cifs_and_nfs_without_credentials(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        "//nas/backup /srv/backup\\040remoto cifs rw,vers=3.0,username=bk,password=hunter2,domain=X 0 0\n"
        "nas:/export /mnt/nfs nfs4 rw,vers=4.1,addr=10.0.0.1 0 0\n"
        "proc /proc proc rw 0 0\n")
    found = appliance_facts.network_mounts(str(mounts))
    assert found == [
        {"source": "//nas/backup", "mountpoint": "/srv/backup remoto", "fstype": "cifs",
         "options": "rw,vers=3.0,username=bk,domain=X"},
        {"source": "nas:/export", "mountpoint": "/mnt/nfs", "fstype": "nfs4", "options": "rw,vers=4.1,addr=10.0.0.1"},
    ]


def test_facts_without_database_and_size_estimate(tmp_path):
    layout = make_appliance(tmp_path)
    result = appliance_facts.facts(layout)
    assert result["hostname"] and result["root"] == str(tmp_path)
    assert result["cluster"]["role"] == "standalone"
    config = {item["path"]: item for item in result["paths"]["config"]}
    assert config[os.path.join(str(tmp_path), "etc/senhasegura")] == {
        "path": os.path.join(str(tmp_path), "etc/senhasegura"), "exists": True, "bytes": 8, "files": 2}
    assert result["paths"]["sessions"]["bytes"] == 10 and result["paths"]["sessions"]["files"] == 1
    assert result["free_space"]["root"]["bytes_free"] > 0
    assert "mariadb" not in result
    json.dumps(result)  # facts must be JSON-serialisable for Ansible
    result["mariadb"] = {"databases": {"mt4": {"data_bytes": 1000, "index_bytes": 24},
                                       "senhasegura": {"data_bytes": 5, "index_bytes": 0}}}
    files = 19 + 24 + 8 + 13  # orbinibkp.conf, galera.cnf, etc/senhasegura, secrets
    assert estimate_snapshot_size(result) == {"database_bytes": 1029, "files_bytes": files,
                                              "snapshot_bytes": 1029 + files, "sessions_bytes": 10}
