"""One behaviour contract for every Target, against the lab's real smbd and nfs-ganesha.

Run: .venv/bin/pytest tests/integration/test_targets.py
Throughput (not a test): .venv/bin/python -m tests.integration.test_targets --measure
"""

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

if __name__ == "__main__":  # run as a script (--measure): make the collection importable as pytest does
    import importlib

    importlib.import_module("tests.conftest")

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    ConfigError,
    TargetAuthError,
    TargetError,
    TargetExists,
    TargetFull,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import AtomicRenameUnsupported, rename_into_place
from tests.secret_checks import assert_no_secret

TARGET_KINDS = ["path", "smb_signed", "smb_encrypted", "nfs_v3", "nfs_v41"]
MiB = 1024 * 1024


def _unused_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def target_options(kind, lab, subdir, local_root=None):
    """The `target` option for one kind of target, rooted at `subdir` (unique per test)."""
    if kind == "path":
        return {"type": "path", "path": os.path.join(local_root, subdir)}
    if kind.startswith("smb"):
        share = lab["smb_share_encrypted"] if kind == "smb_encrypted" else lab["smb_share_signed"]
        return {
            "type": "smb",
            "server": lab["smb_server"],
            "port": int(lab["smb_port"]),
            "share": share,
            "path": subdir,
            "username": lab["smb_username"],
            "password": lab["smb_password"],
            "encrypt": kind == "smb_encrypted",
            "timeout": 10,
        }
    return {
        "type": "nfs",
        "server": lab["nfs_server"],
        "export": lab["nfs_export"],
        "path": subdir,
        "version": "3" if kind == "nfs_v3" else "4.1",
        "timeout": 10,
    }


@pytest.fixture(params=TARGET_KINDS)
def target(request, lab, tmp_path):
    subdir = "targets-test/%s" % uuid.uuid4().hex
    if request.param == "path":
        os.makedirs(os.path.join(str(tmp_path), subdir))
    opened = open_target(target_options(request.param, lab, subdir, str(tmp_path)))
    try:
        yield opened
    finally:
        opened.close()
        _remove_test_root(request.param, lab, subdir, str(tmp_path))


def _remove_test_root(kind, lab, subdir, local_root):
    """Remove a test's own folder through a target opened one level up (a target cannot rmdir its root)."""
    parent, name = subdir.rsplit("/", 1)
    with open_target(target_options(kind, lab, parent, local_root)) as target:
        if target.exists(name):  # tests that write nothing never create it
            _remove_tree(target, name)
            target.rmdir(name)


def _remove_tree(target, relpath):
    """Empty a test directory through the target itself (ganesha dislikes changes behind its back)."""
    try:
        entries = target.listdir(relpath)
    except TargetNotFound:
        return
    for entry in entries:
        child = "%s/%s" % (relpath, entry.name) if relpath else entry.name
        if entry.is_dir:
            _remove_tree(target, child)
            target.rmdir(child)
        else:
            target.remove(child)


@pytest.mark.parametrize("size", [0, 1, 20 * MiB + 3])
def test_round_trip(target, size):
    payload = os.urandom(size)
    with target.open_write("deep/er/file.bin") as handle:
        # uneven pieces, as the archive writer produces them
        for start in range(0, size, 3 * MiB + 17):
            handle.write(payload[start:start + 3 * MiB + 17])
    assert target.stat("deep/er/file.bin").size == size
    assert target.read_bytes("deep/er/file.bin", limit=64 * MiB) == payload
    with target.open_read("deep/er/file.bin") as handle:
        assert handle.read(1) == payload[:1]


def test_overwrite_truncates(target):
    target.write_bytes("f", b"long content")
    target.write_bytes("f", b"short")
    assert target.read_bytes("f") == b"short"


def test_exclusive_create_twice(target):
    target.write_bytes("locks/lock", b"first", exclusive=True)
    with pytest.raises(TargetExists, match="already exists"):
        target.write_bytes("locks/lock", b"second", exclusive=True)
    assert target.read_bytes("locks/lock") == b"first"
    # no temporary names left behind by the exclusive create
    assert [entry.name for entry in target.listdir("locks")] == ["lock"]


def test_rename_into_place_and_replace(target):
    target.write_bytes("a.partial", b"new")
    target.write_bytes("a", b"old")
    with pytest.raises(TargetExists):
        target.rename("a.partial", "a")
    assert target.read_bytes("a") == b"old"
    assert target.read_bytes("a.partial") == b"new"
    target.rename("a.partial", "a", replace=True)
    assert target.read_bytes("a") == b"new"
    assert not target.exists("a.partial")
    target.rename("a", "moved/into/b")
    assert target.read_bytes("moved/into/b") == b"new"
    assert not target.exists("a")
    with pytest.raises(TargetNotFound):
        target.rename("missing", "c")


class _NoLinkError(Exception):
    """What nfs-rs raises for a server without hard links (the attribute the target reads)."""

    code_name = "NFS4ERR_NOTSUPP"


@pytest.mark.parametrize("kind", ["nfs_v3", "nfs_v41"])
def test_nfs_without_link_falls_back_and_says_so(lab, kind, monkeypatch):
    """A server refusing LINK: rename(replace=False) renames nothing and says so; rename_into_place
    then looks before renaming (still refusing an existing name) and records the missing capability."""
    subdir = "targets-test/%s" % uuid.uuid4().hex
    try:
        with open_target(target_options(kind, lab, subdir)) as nfs:
            nfs.write_bytes("a.partial", b"new")
            nfs.write_bytes("a", b"old")

            def refuse_link(*_args):
                raise _NoLinkError("LINK not supported")

            monkeypatch.setattr(nfs._client, "link", refuse_link)
            with pytest.raises(AtomicRenameUnsupported):
                nfs.rename("a.partial", "a")
            with pytest.raises(TargetExists):
                rename_into_place(nfs, "a.partial", "a")
            assert nfs.capabilities.atomic_no_replace_rename is False
            assert nfs.read_bytes("a") == b"old" and nfs.read_bytes("a.partial") == b"new"
            rename_into_place(nfs, "a.partial", "b")
            assert nfs.read_bytes("b") == b"new" and not nfs.exists("a.partial")
    finally:
        _remove_test_root(kind, lab, subdir, None)


def test_listdir_stat_remove_makedirs(target):
    target.makedirs("d1/d2")
    target.makedirs("d1/d2")  # exists: no error
    target.write_bytes("d1/f", b"12345")
    entries = {entry.name: entry for entry in target.listdir("d1")}
    assert sorted(entries) == ["d2", "f"]
    assert entries["d2"].is_dir and not entries["f"].is_dir
    assert entries["f"].size == 5
    assert abs(entries["f"].mtime - time.time()) < 300
    info = target.stat("d1/f")
    assert (info.name, info.is_dir, info.size) == ("f", False, 5)
    assert target.stat("d1").is_dir
    with pytest.raises(TargetNotFound):
        target.stat("d1/nope")
    with pytest.raises(TargetNotFound):
        target.listdir("nope")
    with pytest.raises(TargetError, match="not empty"):
        target.rmdir("d1")
    target.remove("d1/f")
    with pytest.raises(TargetNotFound):
        target.remove("d1/f")
    target.rmdir("d1/d2")
    assert target.listdir("d1") == []
    target.write_bytes("plain", b"x")
    with pytest.raises(TargetError):
        target.makedirs("plain/sub")


def test_free_space(target):
    free = target.free_space()
    assert isinstance(free, int) and free > 0


def test_paths_cannot_escape(target):
    with pytest.raises(ConfigError):
        target.write_bytes("../escape", b"x")


def test_describe_has_no_secret(target, lab):
    text = "%s %r" % (target.describe(), target)
    assert_no_secret(text, lab["smb_password"], "describe() and repr()")


# -- connection errors ---------------------------------------------------------------------------------


def test_smb_wrong_password(lab):
    options = target_options("smb_encrypted", lab, "x")
    options["password"] = "not-" + options["password"]
    with pytest.raises(TargetAuthError, match="refused the credentials for user %s" % lab["smb_username"]) as caught:
        open_target(options)
    assert_no_secret(str(caught.value), options["password"], "the error message")


@pytest.mark.parametrize("kind", ["smb_signed", "nfs_v3", "nfs_v41", "path"])
def test_unknown_share_or_export(lab, kind, tmp_path):
    options = target_options(kind, lab, "x", str(tmp_path))
    if kind.startswith("smb"):
        options["share"] = "no_such_share"
        expected = "share no_such_share not found"
    elif kind.startswith("nfs"):
        options["export"] = "/no_such_export"
        expected = "export /no_such_export not found"
    else:
        options["path"] = str(tmp_path / "no_such_dir")
        expected = "does not exist"
    with pytest.raises(TargetNotFound, match=expected):
        open_target(options)


@pytest.mark.parametrize("kind", ["smb_signed", "nfs_v3", "nfs_v41"])
def test_unreachable_host(lab, kind):
    options = target_options(kind, lab, "x")
    port = _unused_port()
    options.update(server="127.0.0.1", port=port, timeout=5)
    started = time.monotonic()
    with pytest.raises(TargetError, match="127.0.0.1") as caught:
        open_target(options)
    assert time.monotonic() - started < 10  # bounded by the timeout, not a speed test
    assert not isinstance(caught.value, (TargetAuthError, TargetNotFound))


# -- SMB security: what the server saw ----------------------------------------------------------------


def _smbstatus_tcons(lab, target):
    """The server's view (smbstatus --json) of the tree connects behind this target's connection.

    Tree connects, not the session: smbd reports session encryption as 'partial' because the
    session setup itself travels before the keys exist.
    """
    (connection,) = target._connections.values()
    local_port = connection.transport._sock.getsockname()[1]
    status = json.loads(
        subprocess.run(["smbstatus", "-s", lab["smb_conf"], "--json"], check=True, stdout=subprocess.PIPE, text=True).stdout
    )
    sessions = [session["session_id"] for session in status.get("sessions", {}).values()
                if session["hostname"].endswith(":%d" % local_port)]
    assert len(sessions) == 1, "smbd should list exactly one session from port %d" % local_port
    tcons = [tcon for tcon in status.get("tcons", {}).values() if tcon["session_id"] == sessions[0]]
    assert tcons, "smbd lists no tree connect for our session"
    return tcons


@pytest.mark.parametrize("kind,encrypt", [("smb_signed", False), ("smb_signed", True), ("smb_encrypted", True)])
def test_smb_traffic_is_signed_or_encrypted(lab, kind, encrypt):
    options = target_options(kind, lab, "")
    options["encrypt"] = encrypt
    with open_target(options) as target:
        target.listdir("")
        tcons = _smbstatus_tcons(lab, target)
    for tcon in tcons:
        assert tcon["signing"]["degree"] == "full"  # always required
        assert tcon["encryption"]["degree"] == ("full" if encrypt else "none")


def test_two_smb_targets_do_not_share_sessions(lab):
    """Each target owns its connection: closing one leaves the other working."""
    first = open_target(target_options("smb_signed", lab, ""))
    second = open_target(target_options("smb_encrypted", lab, ""))
    try:
        assert first._connections is not second._connections
        first.close()
        second.listdir("")
        with pytest.raises(TargetAuthError):
            options = target_options("smb_signed", lab, "")
            options["password"] = "wrong"
            open_target(options)
        second.listdir("")
    finally:
        first.close()
        second.close()


@pytest.fixture(scope="module")
def private_smbd(lab):
    """A private smbd limited to SMB 2.1 (no encryption), on a free port, stopped by PID afterwards.

    Share `plain` is a normal folder, share `full` a 1 MiB tmpfs (for the disk-full error).
    """
    base = tempfile.mkdtemp(prefix="segura-smb21-")
    share = os.path.join(base, "share")
    for folder in ("share", "private", "lock", "state", "cache", "pid", "ncalrpc"):
        os.makedirs(os.path.join(base, folder))
    # smbd serves the share as the SMB user: it must be able to reach and write the folder
    os.chmod(base, 0o755)
    account = pwd.getpwnam(lab["smb_username"])
    os.chown(share, account.pw_uid, account.pw_gid)
    full = os.path.join(base, "full")
    os.makedirs(full)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755,uid=%d" % account.pw_uid, "tmpfs", full],
                   check=True)
    port = _unused_port()
    conf = os.path.join(base, "smb.conf")
    with open(conf, "w") as handle:
        handle.write(
            "[global]\nserver role = standalone server\ndisable netbios = yes\ninterfaces = 127.0.0.1\n"
            "bind interfaces only = yes\nsmb ports = %d\nload printers = no\ndisable spoolss = yes\n"
            "server min protocol = SMB2_02\nserver max protocol = SMB2_10\nserver signing = mandatory\n"
            "passdb backend = tdbsam:%s/passdb.tdb\n" % (port, base)
            + "".join("%s = %s/%s\n" % (key, base, key.split()[0]) for key in
                      ("private dir", "lock directory", "state directory", "cache directory", "pid directory",
                       "ncalrpc dir", "log file"))
            + "[plain]\npath = %s\nread only = no\n" % share
            + "[full]\npath = %s\nread only = no\n" % full
        )
    password = lab["smb_password"] + "-21"
    subprocess.run(["smbpasswd", "-c", conf, "-s", "-a", lab["smb_username"]], input="%s\n%s\n" % (password, password),
                   check=True, stdout=subprocess.DEVNULL, text=True)
    server = subprocess.Popen(["smbd", "-F", "--no-process-group", "-s", conf], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield {"port": port, "password": password, "share": "plain"}
    finally:
        server.terminate()
        server.wait(timeout=10)
        _stop_processes_mentioning(conf)
        subprocess.run(["umount", full], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _stop_processes_mentioning(conf):
    """samba-dcerpcd and friends re-parent to PID 1: find them by OUR config path."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                if conf.encode() in handle.read():
                    os.kill(int(pid), 15)
        except OSError:
            pass


def test_smb_refuses_server_without_encryption(lab, private_smbd):
    options = target_options("smb_signed", lab, "")
    options.update(port=private_smbd["port"], share=private_smbd["share"],
                   password=private_smbd["password"], encrypt=True)
    with pytest.raises(TargetError, match="cannot encrypt") as caught:
        open_target(options)
    assert_no_secret(str(caught.value), options["password"], "the error message")
    # the same server is fine when encryption is not asked for (signing is still required)
    options["encrypt"] = False
    with open_target(options) as target:
        target.write_bytes("probe", b"ok")
        assert target.read_bytes("probe") == b"ok"
        target.remove("probe")


def test_smb_disk_full(lab, private_smbd):
    options = target_options("smb_signed", lab, "")
    options.update(port=private_smbd["port"], share="full", password=private_smbd["password"], encrypt=False)
    with open_target(options) as target:
        assert 0 < target.free_space() <= 1024 * 1024
        with pytest.raises(TargetFull, match="no space left on smb://127.0.0.1:%d/full/big" % private_smbd["port"]):
            with target.open_write("big") as handle:
                for dummy in range(4):
                    handle.write(b"\0" * 1024 * 1024)
        target.remove("big")


# -- throughput (not a test) ----------------------------------------------------------------------------


def measure(total=200 * MiB, piece=4 * MiB):
    """Write `total` bytes on each kind of target and print MB/s (MB = 10^6 bytes)."""
    lab = json.loads(subprocess.run([sys.executable, "-m", "tests.lab", "env"], check=True, stdout=subprocess.PIPE,
                                    text=True).stdout)
    data = os.urandom(piece)
    with tempfile.TemporaryDirectory(dir=os.environ.get("MEASURE_LOCAL_DIR")) as local:
        for kind in TARGET_KINDS:
            subdir = "targets-measure/%s" % uuid.uuid4().hex
            if kind == "path":
                os.makedirs(os.path.join(local, subdir))
            with open_target(target_options(kind, lab, subdir, local)) as target:
                started = time.monotonic()
                with target.open_write("big.bin") as handle:
                    for dummy in range(total // piece):
                        handle.write(data)
                seconds = time.monotonic() - started
                started = time.monotonic()
                with target.open_read("big.bin") as handle:
                    while handle.read(piece):
                        pass
                read_seconds = time.monotonic() - started
                print("%-14s write %7.1f MB/s   read %7.1f MB/s" % (kind, total / seconds / 1e6, total / read_seconds / 1e6))
                target.remove("big.bin")
            _remove_test_root(kind, lab, subdir, local)


if __name__ == "__main__" and "--measure" in sys.argv:
    measure()
