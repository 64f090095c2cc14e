"""SmbTarget.put_files (pipelined related compounds) against the lab's real smbd, signed and encrypted shares.

Every behaviour is checked on the compound path and on the generic Target.put_files it falls back to.
Run: .venv/bin/pytest -q tests/integration/test_smb_put_files.py
"""

import hashlib
import os
import pwd
import subprocess

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import TargetError, TargetExists, TargetFull
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target, smb
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target, Upload
from tests.secret_checks import assert_no_secret

SHARES = ["smb_encrypted", "smb_signed"]
KiB = 1024


@pytest.fixture(params=SHARES)
def share(request, lab_target_factory):
    """A LabTarget on a fresh sub-path of one SMB share, and an open SmbTarget on it."""
    made = lab_target_factory(request.param)
    with open_target(made.options) as target:
        yield made, target


@pytest.fixture(params=["compound", "generic"])
def mode(request):
    return request.param


def put(target, uploads, mode):
    """put_files through the compound path, or through the generic one it falls back to."""
    if mode == "generic":
        target._put_mode = "generic"
    results = list(target.put_files(uploads))
    assert target._put_mode == mode
    return results


def payload(index, size):
    seed = hashlib.sha256(b"%d" % index).digest()
    return (seed * (size // len(seed) + 1))[:size]


def behind(made, relpath):
    with open(os.path.join(made.server_dir, relpath), "rb") as handle:
        return handle.read()


def partials(made):
    return sorted(os.path.relpath(os.path.join(folder, name), made.server_dir)
                  for folder, _dirs, names in os.walk(made.server_dir) for name in names if name.endswith(".partial"))


def test_many_files_in_new_nested_folders(share, mode):
    made, target = share
    sizes = [0, 1, 4 * KiB, 64 * KiB, 300 * KiB, 1024 * KiB]
    uploads = [Upload("2025/%04d/%02d/rec-%03d.arz" % (101 + index % 3, index % 4, index),
                      payload(index, sizes[index % len(sizes)]), tag=index) for index in range(90)]
    results = put(target, uploads, mode)
    assert sorted(upload.tag for upload, _exists in results) == list(range(90))
    assert all(exists is None for _upload, exists in results)
    for upload in uploads:
        assert behind(made, upload.remote) == upload.data
        assert target.stat(upload.remote).size == len(upload.data)
    assert partials(made) == []


def test_writes_split_at_max_write_size(share, monkeypatch):
    made, target = share
    init = smb._CompoundPuts.__init__

    def small_writes(self, *args):
        init(self, *args)
        self._max_write = 64 * KiB

    monkeypatch.setattr(smb._CompoundPuts, "__init__", small_writes)
    uploads = [Upload("split/%d" % size, payload(size, size)) for size in (64 * KiB, 64 * KiB + 1, 200 * KiB)]
    assert [exists for _upload, exists in put(target, uploads, "compound")] == [None] * 3
    for upload in uploads:
        assert behind(made, upload.remote) == upload.data


def test_no_replace_keeps_the_existing_file_and_replace_replaces(share, mode):
    made, target = share
    target.write_bytes("day/old", b"existing recording")
    target.write_bytes("day/replaced", b"old content")
    uploads = [Upload("day/old", b"new", tag="kept"), Upload("day/new", b"fresh", tag="new"),
               Upload("day/replaced", b"new content", replace=True, tag="replaced")]
    results = {upload.tag: exists for upload, exists in put(target, uploads, mode)}
    assert isinstance(results["kept"], TargetExists)
    assert "day/old" in str(results["kept"])
    assert results["new"] is None and results["replaced"] is None
    assert behind(made, "day/old") == b"existing recording"
    assert behind(made, "day/new") == b"fresh"
    assert behind(made, "day/replaced") == b"new content"
    assert partials(made) == []


def test_closing_the_generator_early_leaves_no_partial(share, mode):
    made, target = share
    if mode == "generic":
        target._put_mode = "generic"
    uploads = [Upload("early/%03d" % index, payload(index, 64 * KiB)) for index in range(200)]
    results = target.put_files(uploads)
    done = [next(results) for _index in range(40)]
    results.close()
    assert partials(made) == []
    for upload, _exists in done:
        assert behind(made, upload.remote) == upload.data
    written = [name for _dir, _dirs, names in os.walk(made.server_dir) for name in names]
    assert len(written) < 200  # it stopped: later uploads were never read


def test_uploads_are_consumed_lazily(share):
    _made, target = share
    pulled = []

    def uploads():
        for index in range(100):
            pulled.append(index)
            yield Upload("lazy/%03d" % index, payload(index, 16 * KiB))

    results = target.put_files(uploads())
    next(results)  # the probe: one upload alone
    next(results)
    assert len(pulled) <= 2 + smb.PUT_FILES_IN_FLIGHT
    results.close()


def test_in_flight_is_bounded_in_files_and_bytes(share, monkeypatch):
    made, target = share
    seen = []
    init = smb._CompoundPuts.__init__

    def spy(self, *args):
        init(self, *args)
        seen.append(self)

    monkeypatch.setattr(smb._CompoundPuts, "__init__", spy)
    monkeypatch.setattr(smb, "PUT_FILES_IN_FLIGHT", 5)
    put(target, [Upload("bound/a/%03d" % index, payload(index, 16 * KiB)) for index in range(60)], "compound")
    assert seen[-1].max_files == 5  # pipelined, never more than 5 files
    monkeypatch.setattr(smb, "PUT_BYTES_IN_FLIGHT", 200 * KiB)
    put(target, [Upload("bound/b/%03d" % index, payload(index, 64 * KiB)) for index in range(40)], "compound")
    assert 64 * KiB < seen[-1].max_bytes <= 200 * KiB
    assert seen[-1].max_files <= 3
    assert partials(made) == []


def test_a_chain_the_server_refuses_falls_back_to_the_generic_path(share, monkeypatch):
    """Behavioural fence: the server refuses the first compound's WRITE (here: a malformed one)."""
    made, target = share
    write = smb._write

    def refused(data, offset):
        packed = write(data, offset)
        packed.body = b"\x30\x00" + packed.body[2:]  # StructureSize 48 instead of 49: STATUS_INVALID_PARAMETER
        return packed

    monkeypatch.setattr(smb, "_write", refused)
    uploads = [Upload("fence/%02d" % index, payload(index, 8 * KiB)) for index in range(10)]
    results = list(target.put_files(uploads))
    assert target._put_mode == "generic"
    assert [exists for _upload, exists in results] == [None] * 10
    for upload in uploads:
        assert behind(made, upload.remote) == upload.data
    assert partials(made) == []


def test_an_unknown_smbprotocol_api_takes_the_generic_path(share, monkeypatch):
    made, target = share
    monkeypatch.setattr(smb._CompoundPuts, "usable", staticmethod(lambda: False))
    monkeypatch.setattr(Target, "put_files", _counting(Target.put_files))
    results = list(target.put_files([Upload("api/one", b"1"), Upload("api/two", b"22")]))
    assert [exists for _upload, exists in results] == [None, None]
    assert _counting.calls == 1
    assert behind(made, "api/two") == b"22"


def _counting(function):
    _counting.calls = 0

    def wrapper(*args, **kwargs):
        _counting.calls += 1
        return function(*args, **kwargs)
    return wrapper


def test_a_folder_refused_mid_way_raises_and_leaves_no_partial(share, mode, lab):
    made, target = share
    target.makedirs("open")
    locked = os.path.join(made.server_dir, "locked")
    os.makedirs(locked)
    os.chmod(locked, 0o555)  # owned by root: smbd, serving as user backup, cannot create in it
    uploads = [Upload("open/%03d" % index, payload(index, 64 * KiB)) for index in range(30)]
    uploads += [Upload("locked/%03d" % index, payload(index, 64 * KiB)) for index in range(30)]
    results = []
    with pytest.raises(TargetError) as error:
        for result in (target.put_files(uploads) if mode == "compound" else Target.put_files(target, uploads)):
            results.append(result)
    assert "permission denied" in str(error.value) and "locked/000.partial" in str(error.value)
    assert_no_secret(str(error.value), lab["smb_password"], "the error")
    assert partials(made) == []
    assert len(results) <= 30
    for upload, _exists in results:
        assert behind(made, upload.remote) == upload.data


@pytest.fixture
def tiny_volume(share):
    """A 1 MiB tmpfs mounted behind the share at <sub-path>/full (the share fills up mid-upload)."""
    made, target = share
    folder = os.path.join(made.server_dir, "full")
    os.makedirs(folder)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0770", "tmpfs", folder],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, timeout=30)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % mounted.stdout.decode(errors="replace").strip())
    try:
        account = pwd.getpwnam("backup")
        os.chown(folder, account.pw_uid, account.pw_gid)
        yield made, target
    finally:
        subprocess.run(["umount", folder], check=False, timeout=60)


def test_a_full_share_mid_way_raises_and_leaves_no_partial(tiny_volume, mode):
    made, target = tiny_volume
    uploads = [Upload("full/day/%03d" % index, payload(index, 64 * KiB)) for index in range(40)]  # 2.5 MiB > 1 MiB
    results = []
    with pytest.raises(TargetFull):
        for result in (target.put_files(uploads) if mode == "compound" else Target.put_files(target, uploads)):
            results.append(result)
    assert partials(made) == []
    assert 0 < len(results) < 40
    for upload, _exists in results:
        assert behind(made, upload.remote) == upload.data
