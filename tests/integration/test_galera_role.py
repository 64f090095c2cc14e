"""The cluster role without a health URL, read from the running MariaDB server (real servers, no lab needed).

An appliance whose galera.cnf says wsrep_on=ON (as the reference appliance's does) but whose server runs
without a Galera cluster of several nodes is a lone node: appliance_info says standalone and warns about
nothing. Each case starts its own throwaway mariadbd (the Debian MariaDB the lab uses) on a private socket:
wsrep off, wsrep on without a provider, and a real one-node Galera cluster (galera-4's provider,
bootstrapped with --wsrep-new-cluster). Without a database connection the configuration decides, and a
node configured for Galera is reported as a member of unknown primary status, with the warning.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from tests.integration.playbook import run_task

GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
GALERA_CNF = ("[galera]\nwsrep_on=ON\nwsrep_provider=%s\nwsrep_cluster_name=\"segura-cluster\"\n"
              "wsrep_cluster_address=\"gcomm://10.20.1.1,10.20.1.2\"\n" % GALERA_PROVIDER)
WARNING = "give the health URL"


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_dir():
    """A fresh datadir (made once), copied for each server; a short path (sockets are limited to 107 bytes)."""
    if not shutil.which("mariadbd") or not shutil.which("mariadb-install-db"):
        pytest.skip("mariadb-server is not installed")
    base = tempfile.mkdtemp(prefix="galera-role-", dir="/tmp")
    template = os.path.join(base, "template")
    subprocess.run(["mariadb-install-db", "--no-defaults", "--datadir=" + template, "--user=root",
                    "--auth-root-authentication-method=socket", "--skip-test-db"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def appliance_root(tmp_path):
    """An appliance root whose galera.cnf asks for a cluster, as a Segura appliance's may."""
    cnf = tmp_path / "root/etc/mysql/conf.d/galera.cnf"
    cnf.parent.mkdir(parents=True)
    cnf.write_text(GALERA_CNF)
    return str(tmp_path / "root")


@pytest.fixture
def start_server(server_dir):
    """start_server(name, *extra_args) -> defaults file of a running mariadbd; stopped by PID at the end."""
    started = []

    def start(name, *extra):
        folder = os.path.join(server_dir, name)
        shutil.copytree(os.path.join(server_dir, "template"), os.path.join(folder, "data"))
        sock, log = os.path.join(folder, "s.sock"), os.path.join(folder, "error.log")
        process = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--user=root", "--datadir=" + os.path.join(folder, "data"),
             "--socket=" + sock, "--pid-file=" + os.path.join(folder, "p.pid"), "--skip-networking",
             "--log-error=" + log, "--innodb-buffer-pool-size=32M"] + list(extra),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        defaults = os.path.join(folder, "client.cnf")
        with open(defaults, "w", encoding="utf-8") as handle:
            handle.write("[client]\nuser=root\nsocket=%s\n" % sock)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            probe = subprocess.run(["mariadb", "--defaults-file=" + defaults, "-e", "SELECT 1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            if probe.returncode == 0:
                return defaults
            time.sleep(0.2)
        with open(log, encoding="utf-8", errors="replace") as handle:
            pytest.fail("mariadbd %s did not start: %s" % (name, handle.read()[-2000:]))
        return None

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _cluster(appliance_root, defaults_file=None):
    args = {"appliance": {"name": "galera-probe", "root": appliance_root}}
    if defaults_file:
        args["database"] = {"defaults_file": defaults_file}
    else:
        args["gather_database"] = False
    result = run_task("segura.backup.appliance_info", args)
    assert not result.failed, result.output
    return result.result["appliance"]["cluster"], result.output


def test_wsrep_off_is_a_lone_node_whatever_galera_cnf_says(appliance_root, start_server):
    cluster, output = _cluster(appliance_root, start_server("off"))
    assert cluster == {"role": "standalone", "is_primary": True, "source": "server", "cluster_size": 0}
    assert WARNING not in output and "Galera" not in output


def test_wsrep_on_without_a_provider_is_a_lone_node(appliance_root, start_server):
    cluster, output = _cluster(appliance_root, start_server("no-provider", "--wsrep-on=ON", "--binlog-format=ROW"))
    assert (cluster["role"], cluster["is_primary"], cluster["source"]) == ("standalone", True, "server")
    assert WARNING not in output


def test_a_galera_cluster_of_one_is_a_lone_node(appliance_root, start_server):
    if not os.path.exists(GALERA_PROVIDER):
        pytest.skip("galera-4 is not installed")
    port = _free_port()
    defaults = start_server(
        "one-node", "--wsrep-on=ON", "--binlog-format=ROW", "--innodb-autoinc-lock-mode=2",
        "--wsrep-provider=" + GALERA_PROVIDER, "--wsrep-cluster-address=gcomm://", "--wsrep-new-cluster",
        "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:%d;base_port=%d" % (port, _free_port()))
    status = subprocess.run(["mariadb", "--defaults-file=" + defaults, "--batch", "--skip-column-names", "-e",
                             "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_status'"],
                            stdout=subprocess.PIPE, check=True).stdout.decode()
    assert "Primary" in status  # a real cluster, of this node alone
    cluster, output = _cluster(appliance_root, defaults)
    assert cluster == {"role": "standalone", "is_primary": True, "source": "server", "cluster_size": 1}
    assert WARNING not in output


def test_without_a_database_connection_galera_cnf_decides(appliance_root):
    cluster, output = _cluster(appliance_root)
    assert (cluster["role"], cluster["is_primary"], cluster["source"]) == ("cluster_member", None, "galera.cnf")
    assert WARNING in output
