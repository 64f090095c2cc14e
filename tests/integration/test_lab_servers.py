"""The lab is real: files round-trip through smbd and ganesha, security settings hold, and the lab
CLI starts, reports and stops exactly what it owns."""

import json
import os
import socket
import subprocess
import uuid

import nfs_rs
import pytest
import smbclient
from smbprotocol.exceptions import LogonFailure

from tests.integration.conftest import lab_cli
from tests.lab import core
from tests.lab.samba import smbstatus_json
from tests.secret_checks import assert_no_secret

# A second lab for the down/up tests: its own state dir, SMB port, namespace and subnet, so the main
# lab (which other sessions may be using) is never stopped by these tests.
SECOND_NETNS = "segura-lab-t"
SECOND_NET = "10.254.78"


def _unc(lab, share, *parts):
    return "\\".join(["\\\\" + lab["smb_server"], lab[share]] + list(parts))


@pytest.fixture
def smb_cache(lab):
    """A private SMB connection cache: our session is ours alone, so smbstatus can find it."""
    cache = {}
    smbclient.register_session(lab["smb_server"], username=lab["smb_username"], password=lab["smb_password"],
                               port=lab["smb_port"], connection_cache=cache)
    yield cache
    smbclient.reset_connection_cache(connection_cache=cache)


def _our_tcon(lab, cache, share_key):
    """smbstatus' view of our tree connect to the given share."""
    (connection,) = cache.values()
    session_ids = {str(session_id) for session_id in connection.session_table}
    status = smbstatus_json(lab["lab_state"])
    tcons = [t for t in status.get("tcons", {}).values()
             if t["session_id"] in session_ids and t["service"] == lab[share_key]]
    assert len(tcons) == 1, status
    return tcons[0]


def _smb_round_trip(lab, cache, share_key, dir_key):
    name = "roundtrip-%s.bin" % uuid.uuid4().hex
    payload = os.urandom(3 * 1024 * 1024 + 17)
    folder = _unc(lab, share_key, "labtest")
    smbclient.makedirs(folder, exist_ok=True, port=lab["smb_port"], connection_cache=cache)
    path = folder + "\\" + name
    with smbclient.open_file(path, mode="wb", port=lab["smb_port"], connection_cache=cache) as handle:
        handle.write(payload)
    with smbclient.open_file(path, mode="rb", port=lab["smb_port"], connection_cache=cache) as handle:
        assert handle.read() == payload
    # The bytes really are on the server's disk, in the share's directory.
    with open(os.path.join(lab[dir_key], "labtest", name), "rb") as handle:
        assert handle.read() == payload
    smbclient.remove(path, port=lab["smb_port"], connection_cache=cache)


def test_smb_signed_share_round_trip_is_signed_not_encrypted(lab, smb_cache):
    _smb_round_trip(lab, smb_cache, "smb_share_signed", "smb_dir_signed")
    tcon = _our_tcon(lab, smb_cache, "smb_share_signed")
    assert tcon["signing"]["degree"] == "full"
    assert tcon["encryption"]["degree"] == "none"


def test_smb_encrypted_share_round_trip_is_encrypted(lab, smb_cache):
    _smb_round_trip(lab, smb_cache, "smb_share_encrypted", "smb_dir_encrypted")
    tcon = _our_tcon(lab, smb_cache, "smb_share_encrypted")
    assert tcon["encryption"]["degree"] == "full"
    assert tcon["encryption"]["cipher"].startswith("AES-")


def test_smb_wrong_password_is_refused(lab):
    cache = {}
    try:
        with pytest.raises(LogonFailure):
            smbclient.register_session(lab["smb_server"], username=lab["smb_username"],
                                       password=lab["smb_password"] + "x", port=lab["smb_port"],
                                       connection_cache=cache)
    finally:
        smbclient.reset_connection_cache(connection_cache=cache)


def test_smb_password_file_is_private_and_up_never_prints_it(lab):
    info = os.stat(lab["smb_password_file"])
    assert info.st_mode & 0o777 == 0o600
    with open(lab["smb_password_file"], encoding="utf-8") as handle:
        assert handle.read() == lab["smb_password"]
    for char in "\\&!$'\"%, ":
        assert char in lab["smb_password"]
    up = lab_cli("up", "--no-pin", state_dir=lab["lab_state"])
    assert_no_secret(up.stdout + up.stderr, lab["smb_password"], "the output of lab up")


def test_env_shell_lines_reproduce_every_value(lab):
    """`eval "$(python -m tests.lab env --shell)"` gives a shell the exact values, password included."""
    script = 'eval "$1"; printf "%s\\0%s" "$SEGURA_LAB_SMB_PASSWORD" "$SEGURA_LAB_NFS_SERVER"'
    lines = lab_cli("env", "--shell", state_dir=lab["lab_state"]).stdout
    result = subprocess.run(["bash", "-c", script, "bash", lines], stdout=subprocess.PIPE, check=True)
    assert result.stdout.decode().split("\0") == [lab["smb_password"], lab["nfs_server"]]


@pytest.mark.parametrize("version", ["3", "4.1"])
def test_nfs_round_trip(lab, version):
    url = "nfs://%s%s?version=%s" % (lab["nfs_server"], lab["nfs_export"], version)
    folder = "labtest/v%s-%s" % (version, uuid.uuid4().hex[:8])
    payload = os.urandom(5 * 1024 * 1024 + 3)
    with nfs_rs.Client.connect(url, connect_timeout=10, operation_timeout=60) as client:
        assert client.version == version
        client.mkdir(folder, parents=True, exist_ok=True)
        with client.open(folder + "/file.bin", "wb") as handle:
            handle.write(payload)
        with client.open(folder + "/file.bin", "rb") as handle:
            assert handle.read() == payload
        assert client.listdir(folder) == ["file.bin"]
        with open(os.path.join(lab["nfs_dir"], folder, "file.bin"), "rb") as handle:
            assert handle.read() == payload
        client.unlink(folder + "/file.bin")
        client.rmdir(folder)
        assert not os.path.exists(os.path.join(lab["nfs_dir"], folder))


def test_nfs_export_does_not_squash_root(lab):
    url = "nfs://%s%s?version=4.1" % (lab["nfs_server"], lab["nfs_export"])
    name = "labtest/root-%s" % uuid.uuid4().hex[:8]
    with nfs_rs.Client.connect(url, uid=0, gid=0, connect_timeout=10, operation_timeout=60) as client:
        client.mkdir("labtest", exist_ok=True)
        client.touch(name)
        assert client.stat(name).uid == 0
        client.unlink(name)


def _status(state_dir, env=None):
    result = lab_cli("status", state_dir=state_dir, env=env, check=False)
    return result.returncode, json.loads(result.stdout)


def test_up_twice_is_harmless_and_status_is_real(lab):
    code, before = _status(lab["lab_state"])
    assert code == 0, before
    lab_cli("up", "--no-pin", state_dir=lab["lab_state"])
    code, after = _status(lab["lab_state"])
    assert code == 0
    assert after["samba"]["pid"] == before["samba"]["pid"]
    assert after["ganesha"]["ganesha_pid"] == before["ganesha"]["ganesha_pid"]
    assert after["ganesha"]["rpcbind_pid"] == before["ganesha"]["rpcbind_pid"]
    # The PIDs status names are the real daemons.
    assert os.path.basename(core.pid_cmdline(after["samba"]["pid"])[0]) == "smbd"
    assert os.path.basename(core.pid_cmdline(after["ganesha"]["ganesha_pid"])[0]) == "ganesha.nfsd"
    assert os.path.basename(core.pid_cmdline(after["ganesha"]["rpcbind_pid"])[0]) == "rpcbind"
    assert core.tcp_port_open(lab["smb_server"], lab["smb_port"])
    assert core.tcp_port_open(lab["nfs_server"], 2049)


# --- a second, private lab for the down/up cycle ----------------------------------------------


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def second_lab(tmp_path):
    """State dir and environment of a second lab (samba + ganesha only); always torn down."""
    env = dict(os.environ, SEGURA_LAB_SMB_PORT=str(_free_port()), SEGURA_LAB_NETNS=SECOND_NETNS,
               SEGURA_LAB_NET=SECOND_NET)
    state_dir = str(tmp_path / "lab")
    try:
        yield state_dir, env
    finally:
        lab_cli("down", "--service", "samba", "--service", "ganesha", state_dir=state_dir, env=env,
                check=False)


def _up_second(state_dir, env, check=True):
    return lab_cli("up", "--service", "samba", "--service", "ganesha", state_dir=state_dir, env=env,
                   check=check)


def _second_status(state_dir, env):
    result = lab_cli("status", "--service", "samba", "--service", "ganesha", state_dir=state_dir, env=env,
                     check=False)
    return result.returncode, json.loads(result.stdout)


def _netns_exists(name):
    return os.path.exists(os.path.join("/var/run/netns", name))


def test_down_leaves_no_process_behind(second_lab):
    state_dir, env = second_lab
    _up_second(state_dir, env)
    code, status = _second_status(state_dir, env)
    assert code == 0, status
    lab_env = json.loads(lab_cli("env", "--service", "samba", "--service", "ganesha",
                                 state_dir=state_dir, env=env).stdout)
    # `smbclient -L` makes smbd spawn samba-dcerpcd, which re-parents to PID 1: down must find it too.
    auth = os.path.join(state_dir, "smbclient.auth")
    core.write_private_file(
        auth, "username = %s\npassword = %s\n" % (lab_env["smb_username"], lab_env["smb_password"]))
    listing = subprocess.run(["smbclient", "-L", "//127.0.0.1", "-p", str(lab_env["smb_port"]), "-A", auth,
                              "-s", lab_env["smb_conf"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=60, check=False)
    assert "backup_encrypted" in listing.stdout
    samba_pids = core.pids_with_argument(lab_env["smb_conf"])
    # (a helper may exit between the listing and this look: an empty command line is not the one)
    assert any("samba-dcerpcd" in (core.pid_cmdline(pid) or [""])[0] for pid in samba_pids)
    daemon_pids = samba_pids + [status["ganesha"]["ganesha_pid"], status["ganesha"]["rpcbind_pid"]]

    lab_cli("down", "--service", "samba", "--service", "ganesha", state_dir=state_dir, env=env)

    assert [pid for pid in daemon_pids if core.pid_alive(pid)] == []
    assert core.pids_with_argument(lab_env["smb_conf"]) == []
    assert not _netns_exists(SECOND_NETNS)
    assert subprocess.run(["ip", "link", "show", "dev", "sglab-t-h"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False).returncode != 0
    assert not core.tcp_port_open("127.0.0.1", lab_env["smb_port"])
    code, status = _second_status(state_dir, env)
    assert code == 3
    assert not status["samba"]["running"] and not status["ganesha"]["running"]


def test_stale_pid_files_are_cleaned_and_up_continues(second_lab):
    state_dir, env = second_lab
    _up_second(state_dir, env)
    lab_cli("down", "--service", "samba", "--service", "ganesha", state_dir=state_dir, env=env)
    # A PID that surely belonged to a process that is gone now.
    finished = subprocess.Popen(["true"])
    finished.wait()
    pid_files = [os.path.join(state_dir, "samba", "smbd.lab.pid"),
                 os.path.join(state_dir, "nfs", "ganesha.lab.pid"),
                 os.path.join(state_dir, "nfs", "rpcbind.lab.pid")]
    for path in pid_files:
        core.write_pid_file(path, finished.pid)
    code, status = _second_status(state_dir, env)
    assert code == 3 and not status["samba"]["running"]
    _up_second(state_dir, env)
    code, status = _second_status(state_dir, env)
    assert code == 0, status
    assert finished.pid not in (status["samba"]["pid"], status["ganesha"]["ganesha_pid"])


def test_port_taken_by_someone_else_is_reported(second_lab):
    state_dir, env = second_lab
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["SEGURA_LAB_SMB_PORT"])))
        squatter.listen(1)
        result = lab_cli("up", "--service", "samba", state_dir=state_dir, env=env, check=False)
    assert result.returncode == 1
    assert "already taken by another process" in result.stderr
    assert env["SEGURA_LAB_SMB_PORT"] in result.stderr
    assert core.pids_with_argument(os.path.join(state_dir, "samba", "smb.conf")) == []
