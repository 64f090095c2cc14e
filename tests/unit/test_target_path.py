"""PathTarget on real local filesystems (tmp dirs, and a 1 MiB tmpfs for the full-disk case)."""

import errno
import os
import stat
import subprocess
import tempfile
import threading

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    ConfigError,
    TargetError,
    TargetExists,
    TargetFull,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import path as path_module
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import AtomicRenameUnsupported, Upload, rename_into_place
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget


@pytest.fixture
def target(tmp_path):
    old_umask = os.umask(0o022)
    try:
        with PathTarget(str(tmp_path)) as opened:
            yield opened
    finally:
        os.umask(old_umask)


def test_root_must_exist(tmp_path):
    with pytest.raises(TargetNotFound, match="does not exist"):
        PathTarget(str(tmp_path / "not-mounted"))
    with pytest.raises(ConfigError):
        PathTarget("relative/dir")


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 7])
def test_round_trip(target, size):
    payload = os.urandom(size)
    with target.open_write("a/b/file.bin") as handle:
        assert handle.write(payload) == size
    assert target.read_bytes("a/b/file.bin") == payload
    assert target.stat("a/b/file.bin").size == size


def test_modes(target, tmp_path):
    target.write_bytes("x/y/z.bin", b"data")
    assert stat.S_IMODE(os.stat(tmp_path / "x").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(tmp_path / "x" / "y").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(tmp_path / "x" / "y" / "z.bin").st_mode) == 0o640


def test_configured_modes(tmp_path):
    custom = PathTarget(str(tmp_path), file_mode=0o600, dir_mode=0o700)
    custom.write_bytes("d/f", b"1")
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "f").st_mode) == 0o600


def test_exclusive_create(target):
    target.write_bytes("lock", b"first", exclusive=True)
    with pytest.raises(TargetExists, match="lock already exists"):
        target.write_bytes("lock", b"second", exclusive=True)
    assert target.read_bytes("lock") == b"first"
    target.write_bytes("lock", b"third")  # not exclusive: truncates
    assert target.read_bytes("lock") == b"third"


def test_rename_semantics(target):
    target.write_bytes("src", b"new")
    target.write_bytes("dst", b"old")
    with pytest.raises(TargetExists):
        target.rename("src", "dst")
    assert target.read_bytes("dst") == b"old"
    assert target.read_bytes("src") == b"new"
    target.rename("src", "dst", replace=True)
    assert target.read_bytes("dst") == b"new"
    assert not target.exists("src")
    target.rename("dst", "sub/dir/moved")
    assert target.read_bytes("sub/dir/moved") == b"new"
    with pytest.raises(TargetNotFound):
        target.rename("missing", "anything")


def test_rename_noreplace_fallback_via_link(target, monkeypatch):
    """Filesystems without RENAME_NOREPLACE (kernel NFS mounts) take the link + unlink path."""
    monkeypatch.setattr(path_module, "_renameat2", None)
    target.write_bytes("src", b"new")
    target.write_bytes("dst", b"old")
    with pytest.raises(TargetExists):
        target.rename("src", "dst")
    target.rename("src", "other")
    assert target.read_bytes("other") == b"new"
    assert not target.exists("src")


def test_rename_noreplace_fallback_without_links(target, monkeypatch):
    """Filesystems refusing hard links (some CIFS mounts): the target says it cannot, renames nothing,
    and rename_into_place looks, then renames, and remembers the capability is missing."""

    def refuse_link(*_args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(path_module, "_renameat2", None)
    monkeypatch.setattr(path_module.os, "link", refuse_link)
    target.write_bytes("src", b"new")
    target.write_bytes("dst", b"old")
    with pytest.raises(AtomicRenameUnsupported):
        target.rename("src", "dst")
    assert target.read_bytes("src") == b"new" and target.read_bytes("dst") == b"old"
    assert target.capabilities.atomic_no_replace_rename is True  # not known before rename_into_place tried
    with pytest.raises(TargetExists):
        rename_into_place(target, "src", "dst")
    assert target.capabilities.atomic_no_replace_rename is False
    assert target.read_bytes("dst") == b"old"
    rename_into_place(target, "src", "other")
    assert target.read_bytes("other") == b"new" and not target.exists("src")


def test_listdir_stat_remove_rmdir(target):
    target.makedirs("top/sub")
    target.makedirs("top/sub")  # idempotent
    target.write_bytes("top/file", b"12345")
    entries = {entry.name: entry for entry in target.listdir("top")}
    assert set(entries) == {"sub", "file"}
    assert entries["sub"].is_dir and not entries["file"].is_dir
    assert entries["file"].size == 5
    assert target.stat("top").is_dir
    with pytest.raises(TargetError, match="not empty"):
        target.rmdir("top")
    target.remove("top/file")
    with pytest.raises(TargetNotFound):
        target.remove("top/file")
    with pytest.raises(TargetNotFound):
        target.stat("top/file")
    with pytest.raises(TargetNotFound):
        target.listdir("nope")
    target.rmdir("top/sub")
    assert target.listdir("top") == []
    assert target.listdir("") != []


def test_paths_cannot_escape(target):
    with pytest.raises(ConfigError):
        target.stat("../etc/passwd")


def test_makedirs_over_a_file(target):
    target.write_bytes("plain", b"x")
    with pytest.raises(TargetError):
        target.makedirs("plain/sub")


def test_free_space(target, tmp_path):
    free = target.free_space()
    vfs = os.statvfs(str(tmp_path))
    assert free == vfs.f_bavail * vfs.f_frsize
    assert free > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_permission_denied_names_path(tmp_path):
    # root bypasses permission bits, so use a read-only bind of a tmpfs instead of chmod
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount_point)], check=True)
    try:
        readonly = PathTarget(str(mount_point))
        with pytest.raises(TargetError, match="permission denied on %s" % mount_point):
            readonly.write_bytes("f", b"x")
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_filesystem_raises_target_full():
    mount_point = tempfile.mkdtemp(prefix="segura-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount_point], check=True)
    try:
        full = PathTarget(mount_point)
        assert 0 < full.free_space() <= 1024 * 1024
        with pytest.raises(TargetFull, match="no space left on %s/big" % mount_point):
            with full.open_write("big") as handle:
                for dummy in range(8):
                    handle.write(b"\0" * 256 * 1024)
    finally:
        subprocess.run(["umount", mount_point], check=True)
        os.rmdir(mount_point)


# -- the shared `target` option and open_target() ------------------------------------------------------

from ansible_collections.segura.backup.plugins.module_utils._engine.specs import target_spec  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import (  # noqa: E402
    open_target,
    validate_target_options,
)


def test_open_target_path_with_modes(tmp_path):
    target = open_target({"type": "path", "path": str(tmp_path), "mode": "0600", "directory_mode": 0o700})
    assert isinstance(target, PathTarget)
    assert (target.file_mode, target.dir_mode) == (0o600, 0o700)


@pytest.mark.parametrize(
    "options,message",
    [
        # the messages of ansible-core's ArgumentSpecValidator, as a module would print them
        ({"type": "smb", "server": "h", "share": "s", "username": "u"}, "type is smb but all of the following are missing: password"),
        ({"type": "nfs", "server": "h"}, "type is nfs but all of the following are missing: export"),
        ({"type": "path"}, "type is path but all of the following are missing: path"),
        ({"type": "ftp"}, "value of type must be one of: smb, nfs, path, got: ftp"),
        ({"type": "nfs", "server": "h", "export": "/e", "version": "4.2"}, "value of version must be one of: 3, 4.1"),
        ({"type": "path", "path": "/x", "sharename": "s"}, "unknown option target.sharename"),
        ({"type": "path", "path": "/x", "timeout": "soon"}, "argument 'timeout' is of type str"),
        ({"type": "path", "path": "/x", "mode": "rw-r"}, "'mode' must be an octal mode"),
        ({"type": "smb", "server": "h", "share": "s", "username": "u", "password": "p", "port": 0}, "'port'"),
    ],
)
def test_validation_names_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        validate_target_options(options)


def test_validation_defaults():
    smb = validate_target_options({"type": "smb", "server": "h", "share": "s", "username": "u", "password": "p"})
    assert (smb["port"], smb["encrypt"], smb["timeout"], smb["path"]) == (445, True, 30, "")
    nfs = validate_target_options({"type": "nfs", "server": "h", "export": "/e", "version": 3})
    assert (nfs["port"], nfs["version"], nfs["uid"], nfs["gid"]) == (None, "3", 0, 0)


def test_argument_spec_shape():
    spec = target_spec()
    target = spec["target"]
    assert target["type"] == "dict" and target["required"] is True
    assert target["options"]["password"]["no_log"] is True
    assert ["type", "smb", ["server", "share", "username", "password"]] in target["required_if"]
    spec["target"]["options"]["port"]["default"] = 1  # callers get a copy
    assert target_spec()["target"]["options"]["port"].get("default") is None


# ----------------------------------------------------------------------------- put_files


def _uploads(count, size=1000, replace=False):
    return [Upload("d%d/f%03d" % (number % 3, number), bytes([number % 256]) * size, replace=replace, tag=number)
            for number in range(count)]


def test_put_files_puts_every_file_whole_and_leaves_no_partial(tmp_path):
    target = PathTarget(str(tmp_path))
    results = list(target.put_files(_uploads(50)))
    assert sorted(upload.tag for upload, exists in results if exists is None) == list(range(50))
    for number in range(50):
        assert (tmp_path / ("d%d/f%03d" % (number % 3, number))).read_bytes() == bytes([number % 256]) * 1000
    assert not list(tmp_path.rglob("*.partial"))


def test_put_files_reports_an_existing_file_and_keeps_it(tmp_path):
    target = PathTarget(str(tmp_path))
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1/f001").write_bytes(b"older")
    results = {upload.tag: exists for upload, exists in target.put_files(_uploads(3))}
    assert isinstance(results[1], TargetExists) and results[0] is None and results[2] is None
    assert (tmp_path / "d1/f001").read_bytes() == b"older"
    replaced = {upload.tag: exists for upload, exists in target.put_files(_uploads(3, replace=True))}
    assert replaced == {0: None, 1: None, 2: None} and (tmp_path / "d1/f001").read_bytes() == b"\x01" * 1000
    assert not list(tmp_path.rglob("*.partial"))


def test_put_files_is_lazy_and_bounded(tmp_path):
    """At most 8 uploads (and 16 MiB) are taken from the source before the first result comes back."""
    target = PathTarget(str(tmp_path))
    taken = []

    def source():
        for upload in _uploads(40, size=3 * 1024 * 1024):
            taken.append(upload.tag)
            yield upload

    results = target.put_files(source())
    first = next(results)
    assert first[1] is None and len(taken) <= 7  # 6 x 3 MiB fit in 16 MiB, the 7th waits in hand
    assert len(list(results)) == 39


def test_put_files_error_finishes_the_flight_then_raises_without_partials(tmp_path):
    target = PathTarget(str(tmp_path))
    (tmp_path / "d2").write_bytes(b"a file where a folder must be")
    with pytest.raises(TargetError):
        list(target.put_files(_uploads(30)))
    assert not list(tmp_path.rglob("*.partial"))


def test_put_files_stopped_early_leaves_nothing_running(tmp_path):
    target = PathTarget(str(tmp_path))
    results = target.put_files(_uploads(30))
    next(results)
    results.close()  # the caller stops: what was in flight finishes, each file whole or absent
    assert not list(tmp_path.rglob("*.partial"))
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("put_files")]


def test_mount_type_of_real_mounts_and_what_check_writable_answers(tmp_path):
    """access(2) decides on a local or NFS mount; on a kernel SMB mount it answers from the mount options, so
    check_writable says it cannot tell (False) there instead of a yes the server may not honour."""
    assert path_module._mount_type("/proc/self") == "proc"  # pylint: disable=protected-access
    assert path_module._mount_type("/proc") == "proc"  # pylint: disable=protected-access
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        root_type = [line.split()[2] for line in handle if line.split()[1] == "/"][-1]
    assert path_module._mount_type("/") == root_type  # pylint: disable=protected-access
    with PathTarget(str(tmp_path)) as target:
        assert target.check_writable("") is True
