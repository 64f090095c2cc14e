"""The lab's Segura appliance containers (tests/lab/containers.py): built without a registry, reached
over SSH as mt4adm with the lab key, systemd as PID 1, MariaDB by socket, the orbit test double, the
Segura tree, Ansible over SSH with become, deterministic reference seeding, and a clean `down`.

Timings (image build, start, ansible ping) are printed, never asserted. Run them with
`.venv/bin/pytest -m containers -s tests/integration/test_appliance_containers.py`.
"""

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from tests.lab import containers, core, reference

pytestmark = pytest.mark.containers

SEED_SIZE = 5_000_000


def _free_port_base(count):
    """A port base whose next `count` ports on 127.0.0.1 are free (other sessions may use 59101...)."""
    for base in range(59200, 59900, 10):
        if not any(core.tcp_port_open("127.0.0.1", base + n, 0.2) for n in range(1, count + 1)):
            return base
    pytest.fail("no free port range for appliance containers in 59200-59900")


def _lab(tmp_path_factory, name, count):
    state = str(tmp_path_factory.mktemp(name))
    prefix = "segura-test-%d-%s" % (os.getpid(), name)
    return containers.ApplianceContainers(state, prefix=prefix, port_base=_free_port_base(count))


def _ssh(appliance, command, check=True):
    lab_ssh = ["ssh", "-p", str(appliance["port"]), "-i", appliance["private_key"], "-o", "BatchMode=yes",
               "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=" + appliance["known_hosts"],
               "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5",
               "%s@%s" % (appliance["user"], appliance["host"]), command]
    result = subprocess.run(lab_ssh, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        pytest.fail("ssh %s %r failed (exit %d): %s" % (appliance["name"], command, result.returncode, result.stderr))
    return result


def _our_containers(state_dir):
    result = containers.podman(["ps", "--all", "--quiet", "--filter",
                                "label=%s=%s" % (containers.LABEL_STATE, state_dir)])
    return result.stdout.decode().split()


@pytest.fixture(scope="module")
def appliance_lab(tmp_path_factory):
    lab = _lab(tmp_path_factory, "pair", 2)
    started = time.monotonic()
    build = lab.build()
    print("\nimage build: %s (base %s)" % (
        "%.1fs cold" % build["seconds"] if build["built"] else "cached",
        "%.1fs cold" % build["base"]["seconds"] if build["base"]["built"] else "cached"))
    try:
        env = lab.up(count=2)
        print("build check + start of 2 appliances until ssh works: %.1fs (start %.1fs)" % (
            time.monotonic() - started, env["seconds"]["start"]))
        yield lab, env
    finally:
        lab.down()


@pytest.fixture(scope="module")
def primary(appliance_lab):
    return appliance_lab[1]["appliances"][0]


@pytest.fixture(scope="module")
def contingency(appliance_lab):
    return appliance_lab[1]["appliances"][1]


def test_second_build_is_cached(appliance_lab):
    lab, env = appliance_lab
    again = lab.build()
    assert again["built"] is False and again["base"]["built"] is False
    assert again["image"] == env["image"] == containers.appliance_image_ref()
    labels = json.loads(containers.podman(["image", "inspect", "--format", "{{json .Labels}}",
                                           env["image"]]).stdout)
    assert labels[containers.LABEL_RECIPE].startswith(env["image"].rsplit(":", 1)[1])


def test_cli_env_and_status_describe_the_running_pair(appliance_lab):
    lab, env = appliance_lab
    argv = [sys.executable, "-m", "tests.lab.containers", "--state", lab.state_dir]
    cli_env = subprocess.run(argv[:3] + ["env"] + argv[3:], cwd=core.REPO_ROOT, stdout=subprocess.PIPE,
                             text=True, timeout=60, check=True)
    described = json.loads(cli_env.stdout)
    assert [(a["name"], a["port"], a["user"]) for a in described["appliances"]] == \
        [(a["name"], a["port"], "mt4adm") for a in env["appliances"]]
    assert "ansible_port=%d" % env["appliances"][1]["port"] in described["inventory"]
    assert os.stat(described["appliances"][0]["private_key"]).st_mode & 0o777 == 0o600
    status = subprocess.run(argv[:3] + ["status"] + argv[3:], cwd=core.REPO_ROOT, stdout=subprocess.PIPE,
                            text=True, timeout=60, check=False)
    assert status.returncode == 0, status.stdout
    assert set(json.loads(status.stdout)["containers"].values()) == {"running"}


def test_mt4adm_logs_in_with_the_key_and_has_passwordless_sudo(primary, contingency):
    for appliance in (primary, contingency):
        result = _ssh(appliance, "id -un; sudo -n true && echo sudo-ok")
        assert result.stdout.split() == ["mt4adm", "sudo-ok"]


def test_password_login_is_refused(primary):
    result = subprocess.run(
        ["ssh", "-p", str(primary["port"]), "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
         "-o", "UserKnownHostsFile=" + primary["known_hosts"], "-o", "StrictHostKeyChecking=yes",
         "mt4adm@127.0.0.1", "true"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode == 255 and "Permission denied" in result.stderr


def test_systemd_is_pid_1_and_the_system_is_up(primary, contingency):
    for appliance in (primary, contingency):
        result = _ssh(appliance, "ps -p 1 -o comm=; systemctl is-system-running --wait; "
                                 "systemctl is-active ssh mariadb segura-health-double", check=False)
        lines = result.stdout.split()
        assert lines[0] == "systemd"
        assert lines[1] in ("running", "degraded"), result.stdout
        assert lines[2:] == ["active", "active", "active"]


def test_mariadb_answers_root_over_the_socket_and_debian_cnf(primary):
    result = _ssh(primary, "sudo -n mariadb --protocol=socket --socket=/run/mysqld/mysqld.sock -N -e "
                           "'SELECT CURRENT_USER()'; sudo -n mariadb --defaults-file=/etc/mysql/debian.cnf -N -e "
                           "'SELECT @@socket'; stat -c %a /etc/mysql/debian.cnf; mariadb -e 'SELECT 1' 2>&1 || true")
    lines = result.stdout.splitlines()
    assert lines[:3] == ["root@localhost", "/run/mysqld/mysqld.sock", "600"]
    assert "Access denied" in lines[3]  # mt4adm itself is not a database user


def test_orbit_is_a_test_double_that_needs_root(primary):
    as_root = _ssh(primary, "sudo -n orbit version").stdout.splitlines()
    assert as_root[0] == "3.32.0"
    assert "test double" in as_root[1]
    as_user = _ssh(primary, "orbit version", check=False)
    assert as_user.returncode == 1 and "must be run as root" in as_user.stderr
    assert "test double" in _ssh(primary, "head -3 /usr/local/bin/orbit").stdout.lower()


def test_segura_tree_exists(primary):
    checks = ["test -d /var/senhasegura/arz", "test -d /srv/cache/coba", "test -f /var/senhasegura/orbinibkp.conf",
              "test -d /etc/senhasegura", "test -f /etc/mysql/conf.d/galera.cnf", "test -d /srv/backup_remoto",
              "command -v age zstd mount.cifs mount.nfs python3", "python3 -m venv --help"]
    _ssh(primary, "sudo -n sh -ec %s >/dev/null" % shlex.quote("; ".join(checks)))


def test_primary_and_contingency_differ_in_galera_cnf_and_health(primary, contingency):
    probe = ("grep '^wsrep_on' /etc/mysql/conf.d/galera.cnf; python3 -c \"import urllib.request, urllib.error\n"
             "try:\n print(urllib.request.urlopen('%s').status)\nexcept urllib.error.HTTPError as e:\n print(e.code)\"")
    assert _ssh(primary, probe % primary["health_url"]).stdout.split() == ["wsrep_on=OFF", "200"]
    assert _ssh(contingency, probe % contingency["health_url"]).stdout.split() == ["wsrep_on=ON", "203"]
    # A contingency galera.cnf (wsrep_on=ON) must not keep MariaDB from starting: the lab runs no Galera.
    result = _ssh(contingency, "sudo -n systemctl restart mariadb && sudo -n mariadb -N -e 'SELECT @@wsrep_on'")
    assert result.stdout.strip() == "0"


def test_ansible_runs_modules_over_ssh_with_become(appliance_lab, tmp_path):
    _lab, env = appliance_lab
    started = time.monotonic()
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible"), "-i", env["inventory_path"], "all",
         "-m", "ansible.builtin.command", "-a", "id -un", "-o"],
        cwd=str(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp")), check=False)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    for appliance in env["appliances"]:
        assert "%s | CHANGED | rc=0 | (stdout) root" % appliance["name"] in result.stdout
    ping = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible"), "-i", env["inventory_path"], "all",
         "-m", "ansible.builtin.ping"], cwd=str(tmp_path), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=300, env=dict(os.environ, ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp")), check=False)
    assert ping.returncode == 0 and ping.stdout.count('"ping": "pong"') == 2, ping.stdout + ping.stderr
    print("\nansible command (become) on 2 appliances: %.1fs; ping: %.1fs" % (
        seconds, time.monotonic() - started - seconds))


def test_seeding_is_deterministic_and_matches_the_reference(appliance_lab, primary, contingency, tmp_path):
    node_galera = _ssh(contingency, "cat /etc/mysql/conf.d/galera.cnf").stdout
    summaries = [containers.seed(node["id"], SEED_SIZE, 3) for node in (primary, contingency)]
    print("\nseed %d bytes: %s s per node" % (SEED_SIZE, [s["seconds"] for s in summaries]))
    assert summaries[0]["databases"]["rows"] == summaries[1]["databases"]["rows"]
    assert summaries[0]["databases"]["rows"]["senhasegura.audit_log"] > 0

    # Same seed on both nodes: same files (mtimes included) and same databases; the node's own
    # galera.cnf (its cluster role) is kept.
    prints = [containers.fingerprint(node["id"], include_mtime=True) for node in (primary, contingency)]
    galera = "etc/mysql/conf.d/galera.cnf"
    assert prints[0]["databases"] == prints[1]["databases"]
    assert {k: v for k, v in prints[0]["files"].items() if k != galera} == \
        {k: v for k, v in prints[1]["files"].items() if k != galera}
    assert prints[0]["files"][galera]["sha256"] != prints[1]["files"][galera]["sha256"]
    assert _ssh(contingency, "cat /etc/mysql/conf.d/galera.cnf").stdout == node_galera

    # ... and the files are exactly what the reference generator writes on the host.
    host_root = tmp_path / "reference"
    reference.seed_files(str(host_root), SEED_SIZE, 3)
    expected = reference.fingerprint_files(str(host_root), include_mtime=True)
    assert {k: v for k, v in prints[0]["files"].items() if k != galera} == \
        {k: v for k, v in expected.items() if k != galera}
    assert any(path.endswith(".arz") for path in expected)


def test_containers_reach_the_lab_nfs_server(lab, primary):
    """NFS runs in the lab's network namespace; a container reaches it through the host's routing
    (netavark masquerades the bridge). SMB is NOT reachable as is: smbd binds 127.0.0.1 only."""
    probe = ("python3 -c \"import socket; socket.create_connection(('%s', %d), 5).close(); print('open')\""
             % (lab["nfs_server"], lab["nfs_port"]))
    assert _ssh(primary, probe).stdout.strip() == "open"
    exports = _ssh(primary, "/sbin/showmount -e %s" % lab["nfs_server"]).stdout
    assert lab["nfs_export"] in exports


def test_down_removes_exactly_the_containers_it_started(tmp_path_factory):
    lab = _lab(tmp_path_factory, "single", 1)
    env = lab.up(count=1)
    bystander = _lab(tmp_path_factory, "bystander", 1)  # after up: it must pick other ports
    try:
        other = bystander.up(count=1)
        assert [a["name"] for a in env["appliances"]] == ["%s-1" % lab.prefix]
        assert _our_containers(lab.state_dir) and lab.status()["running"]
        removed = lab.down()
        assert removed == [env["appliances"][0]["id"]]
        assert _our_containers(lab.state_dir) == []
        assert lab.status() == {"running": False, "containers": {}}
        assert bystander.status()["running"]  # another lab's container is left alone
        assert other["appliances"][0]["id"].startswith(_our_containers(bystander.state_dir)[0])
    finally:
        lab.down()
        bystander.down()
    assert _our_containers(bystander.state_dir) == []
