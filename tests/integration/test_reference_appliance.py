"""The reference appliance against real MariaDB servers: deterministic DB content, and a fingerprint
that survives `mariadb-dump` + reload into a fresh server (what restore checks will rely on)."""

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.lab import core, reference
from tests.lab.mariadb import PORT_ENV, MariaDBService

MB = 1000 ** 2
DUMP_OPTIONS = ["--single-transaction", "--routines", "--triggers", "--events", "--hex-blob",
                "--databases", "mt4", "senhasegura"]


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _service(state_dir, port) -> MariaDBService:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PORT_ENV, str(port))
        return MariaDBService(str(state_dir))


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two private servers on free ports: 'source' (seeded) and 'fresh' (restore destination)."""
    started = []
    try:
        for name in ("source", "fresh"):
            service = _service(tmp_path_factory.mktemp("lab-" + name), _free_port())
            service.up()
            started.append(service)
        yield dict(zip(("source", "fresh"), started))
    finally:
        for service in started:
            service.down()


def _conn(service):
    return {"defaults_file": service.env()["mysql_defaults_file"]}


def _sql(service, text):
    result = subprocess.run(reference.client_command(_conn(service)) + ["--batch", "--skip-column-names"],
                            input=text.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().strip()


def _dump_and_load(source, destination, tmp_path):
    dump = tmp_path / "dump.sql"
    with open(dump, "wb") as out:
        subprocess.run(["mariadb-dump", "--defaults-file=" + source.defaults_file] + DUMP_OPTIONS,
                       stdout=out, check=True, timeout=300)
    with open(dump, "rb") as dump_in:
        subprocess.run(["mariadb", "--defaults-file=" + destination.defaults_file], stdin=dump_in,
                       check=True, timeout=300)


def test_service_up_is_idempotent_and_refuses_a_taken_port(servers, tmp_path):
    source = servers["source"]
    pid = source.status()["pid"]
    assert source.up()["pid"] == pid
    assert oct(os.stat(source.defaults_file).st_mode & 0o777) == "0o600"
    intruder = _service(tmp_path, source.port)
    with pytest.raises(core.LabError, match="already taken"):
        intruder.up()
    assert not intruder.status()["running"]
    # TCP login works with the defaults file too (the password lives only there).
    tcp = {"defaults_file": source.defaults_file, "host": "127.0.0.1", "port": source.port}
    assert reference._query(tcp, "SELECT @@port") == [[str(source.port)]]


def test_database_seed_is_deterministic(servers, tmp_path):
    source = servers["source"]
    reference.seed(str(tmp_path / "a"), 4 * MB, 7, _conn(source))
    first = reference.fingerprint(str(tmp_path / "a"), _conn(source))
    reference.seed(str(tmp_path / "b"), 4 * MB, 7, _conn(source))
    assert reference.fingerprint(str(tmp_path / "b"), _conn(source)) == first
    reference.seed_databases(_conn(source), 4 * MB, 8)
    other = reference.fingerprint_databases(_conn(source))
    assert other["mt4"]["tables"]["credentials"]["sha256"] != first["databases"]["mt4"]["tables"]["credentials"]["sha256"]
    assert other["mt4"]["views"] == first["databases"]["mt4"]["views"]  # same schema, other data


def test_seed_size_and_schema(servers, tmp_path):
    source = servers["source"]
    summary = reference.seed(str(tmp_path), 20 * MB, 1, _conn(source))
    assert 0.8 * 20 * MB <= summary["total_bytes"] <= 1.2 * 20 * MB
    database_bytes = summary["databases"]["innodb_bytes"]
    assert 0.3 * 20 * MB <= database_bytes <= 0.55 * 20 * MB
    printed = reference.fingerprint_databases(_conn(source))
    assert set(printed) == {"mt4", "senhasegura"}
    audit = printed["senhasegura"]["tables"]["audit_log"]
    assert audit["rows"] == summary["databases"]["rows"]["senhasegura.audit_log"]
    assert printed["mt4"]["views"] and printed["mt4"]["triggers"] and printed["mt4"]["routines"]
    assert printed["senhasegura"]["events"] and printed["senhasegura"]["routines"]
    engines = _sql(source, "SELECT DISTINCT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA "
                           "IN ('mt4','senhasegura') AND TABLE_TYPE = 'BASE TABLE'")
    assert engines == "InnoDB"
    # Every encrypted blob holds both 0x00 and 0xFF; names carry accents, CJK and emoji.
    assert _sql(source, "SELECT COUNT(*) FROM mt4.credentials WHERE LOCATE(0x00, secret_encrypted) = 0 "
                        "OR LOCATE(0xFF, secret_encrypted) = 0") == "0"
    assert _sql(source, "SELECT COUNT(*) > 0 FROM mt4.credentials WHERE label LIKE '%🔑%'") == "1"
    assert _sql(source, "SELECT COUNT(*) > 0 FROM mt4.devices WHERE site LIKE '%東京%'") == "1"
    # Sessions point at the recordings that were written.
    path = _sql(source, "SELECT recording_path FROM senhasegura.sessions ORDER BY id LIMIT 1")
    assert os.path.isfile(os.path.join(str(tmp_path), path.lstrip("/")))


def test_dump_into_a_fresh_server_reproduces_the_fingerprint(servers, tmp_path):
    source, fresh = servers["source"], servers["fresh"]
    reference.seed_databases(_conn(source), 6 * MB, 11)
    expected = reference.fingerprint_databases(_conn(source))
    _sql(fresh, "DROP DATABASE IF EXISTS mt4; DROP DATABASE IF EXISTS senhasegura;")
    assert reference.fingerprint_databases(_conn(fresh)) == {"mt4": None, "senhasegura": None}

    _dump_and_load(source, fresh, tmp_path)
    assert reference.fingerprint_databases(_conn(fresh)) == expected

    # ...and the fingerprint notices a change: rotating one secret (procedure + trigger at work).
    _sql(fresh, "CALL mt4.sp_rotate_credential(1, 0x00FF00, '2025-01-05 10:00:00')")
    changed = reference.fingerprint_databases(_conn(fresh))
    assert changed != expected
    for table in ("credentials", "credential_history"):
        assert changed["mt4"]["tables"][table]["sha256"] != expected["mt4"]["tables"][table]["sha256"]
    assert changed["mt4"]["tables"]["credential_history"]["rows"] == \
        expected["mt4"]["tables"]["credential_history"]["rows"] + 1


def test_fingerprint_survives_a_server_restart(servers):
    fresh = servers["fresh"]
    reference.seed_databases(_conn(fresh), 2 * MB, 3)
    before = reference.fingerprint_databases(_conn(fresh))
    fresh.down()
    assert not fresh.status()["running"]
    fresh.up()
    assert reference.fingerprint_databases(_conn(fresh)) == before


def test_cli_seeds_and_prints_the_same_fingerprint(servers, tmp_path):
    source = servers["source"]
    root = str(tmp_path / "appliance")

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "tests.lab.reference"] + list(args)
                                + ["--root", root, "--defaults-file", source.defaults_file],
                                cwd=core.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                timeout=300, check=False)
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)

    summary = cli("seed", "--size", "3MB", "--seed", "4")
    assert summary["size_bytes"] == 3 * MB and summary["databases"]["rows"]["mt4.users"] > 0
    assert cli("fingerprint") == reference.fingerprint(root, _conn(source))
