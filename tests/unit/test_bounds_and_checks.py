# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trust (#15 items 6, 7, 9): bounded reading of hostile objects, honest check modes and preflights,
and the small ones (O_NOFOLLOW after lstat, directory fsync after rename, encryption without mode).

Everything runs on real files: objects are crafted with tarfile + zstandard + the project's age
writer and published with a sidecar on a real directory target, as a share writer could.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from datetime import datetime, timezone

import pytest
import zstandard

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, specs
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.reader import ArchiveReader, verify
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.writer import ArchiveWriter
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    ApplianceError,
    ArchiveError,
    ConfigError,
    IntegrityError,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.job import snapshot_request
from ansible_collections.segura.backup.plugins.module_utils._engine.options import build_decryption, build_encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.apply import restore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.logical import DumpScanner, spool_chunk
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.plan import plan_restore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import path as path_module
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget

PASSPHRASE = "correct horse"
APPLIANCE = "box"
MTIME = 1700000000


# ------------------------------------------------------------------ crafted objects on a real target
def tar_member(name, data=b"", kind=tarfile.REGTYPE, linkname="", mode=0o640):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = mode
    info.mtime = MTIME
    info.linkname = linkname
    return info


def _manifest_entry(info, data):
    kind = {tarfile.REGTYPE: "file", tarfile.SYMTYPE: "symlink", tarfile.DIRTYPE: "dir"}[info.type]
    return {"name": info.name, "type": kind, "size": len(data) if kind == "file" else 0,
            "sha256": hashlib.sha256(data).hexdigest() if kind == "file" else None, "mode": info.mode,
            "mtime": info.mtime, "uid": os.getuid(), "gid": os.getgid(), "linkname": info.linkname}


def publish_crafted(target_dir, members, snap_id="badc0de1", work_factor=4, counts=None, manifest_extra=None):
    """Publish a snapshot object of ``members`` ([(TarInfo, bytes)], snapshot.json and manifest.json
    added, every member listed) with a consistent sidecar; returns the snapshot id."""
    created = datetime(2020, 1, 1, tzinfo=timezone.utc)
    header = json.dumps({"format": "segura.backup/1", "id": snap_id, "appliance": APPLIANCE,
                         "created": catalog.format_utc(created), "components": ["config"],
                         "facts": {"appliance_version": "unknown"}}).encode()
    members = [(tar_member("snapshot.json", header), header)] + list(members)
    for info, _data in members:
        info.uid, info.gid = os.getuid(), os.getgid()
    manifest = dict({"format": "segura.backup/1", "id": snap_id, "appliance": APPLIANCE,
                     "members": [_manifest_entry(info, data) for info, data in members], "sessions": [],
                     "facts": {"appliance_version": "unknown"}}, **(manifest_extra or {}))
    manifest_bytes = json.dumps(manifest).encode()
    members.append((tar_member("manifest.json", manifest_bytes, mode=0o644), manifest_bytes))
    raw = io.BytesIO()
    compressor = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
    with tarfile.open(fileobj=compressor, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    compressor.close()
    sealed = io.BytesIO()
    encryptor = Encryption.passphrase(PASSPHRASE, work_factor=work_factor).open_encryptor(sealed)
    encryptor.write(raw.getvalue())
    encryptor.close()
    data = sealed.getvalue()
    os.makedirs(str(target_dir), exist_ok=True)
    target = PathTarget(str(target_dir))
    name = catalog.object_name(created, snap_id, True)
    target.write_bytes(catalog.object_path(APPLIANCE, name), data)
    catalog.publish_sidecar(target, catalog.Sidecar(
        id=snap_id, appliance=APPLIANCE, created=created, object=name, size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), components=["config"],
        counts=dict(counts if counts is not None else {"members": len(members)}),
        bytes_in=sum(len(d) for i, d in members if i.type == tarfile.REGTYPE),
        versions={"appliance": None, "tool": "0.1.0"}, encryption={"mode": "passphrase", "recipients": []},
        db=None, sessions={"count": 0, "bytes": 0}, duration=0.0))
    return snap_id


def _unsigned_trust():
    """These crafted objects are unsigned: trust them the way a disaster restore would (when the restore
    request knows about signatures at all)."""
    if "trust" not in getattr(RestoreRequest, "__dataclass_fields__", {}):
        return {}
    from ansible_collections.segura.backup.plugins.module_utils._engine import signing

    return {"trust": signing.TrustPolicy(signers=signing.Signers(), allow_unsigned=True)}


def restore_request(root, snap_id, **extra):
    return RestoreRequest(appliance=APPLIANCE, layout=ApplianceLayout(root=str(root)),
                          decryption=Decryption.passphrase(PASSPHRASE), snapshot=snap_id,
                          components=["config"], **dict(_unsigned_trust(), **extra))


def tree_of(root):
    found = {}
    for folder, dirs, files in os.walk(str(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, str(root))] = os.lstat(path).st_mode
    return found


# ------------------------------------------------------------------ item 7: the plan refuses what pass 2 would
@pytest.mark.parametrize("parent_kind", ["symlink", "file"])
def test_the_plan_refuses_a_member_below_a_symlink_or_file_member(tmp_path, parent_kind):
    """A link that stays inside the restored paths, then a file through it: pass 2 would write the link
    and then refuse the file (O_NOFOLLOW); the plan must refuse first, with nothing written."""
    root = tmp_path / "root"
    (root / "etc/senhasegura").mkdir(parents=True)
    (root / "etc/senhasegura/keep.conf").write_text("keep\n")
    (root / "etc/senhasegura/real").mkdir()
    first = (tar_member("files/etc/senhasegura/conf.d", kind=tarfile.SYMTYPE, linkname="real")
             if parent_kind == "symlink" else tar_member("files/etc/senhasegura/conf.d", b"a file\n"))
    members = [(tar_member("files/etc/senhasegura", kind=tarfile.DIRTYPE, mode=0o755), b""),
               (tar_member("files/etc/senhasegura/a.conf", b"first\n"), b"first\n"),
               (first, b"" if parent_kind == "symlink" else b"a file\n"),
               (tar_member("files/etc/senhasegura/conf.d/x.conf", b"through\n"), b"through\n")]
    snap_id = publish_crafted(tmp_path / "target", members)
    before = tree_of(root)
    with PathTarget(str(tmp_path / "target")) as target:
        with pytest.raises(IntegrityError, match="conf.d/x.conf.*below.*conf.d.*refusing it"):
            plan_restore(target, restore_request(root, snap_id))
        with pytest.raises(IntegrityError, match="below"):
            restore(target, restore_request(root, snap_id))
    assert tree_of(root) == before
    assert not os.path.exists(str(root / "etc/senhasegura/real/x.conf"))


# ------------------------------------------------------------------ item 7: check mode validates every option
def _snapshot_params(tmp_path, **changes):
    params = {"target": {"type": "path", "path": str(tmp_path)}, "encryption": {"passphrase": "pw"},
              "components": ["config"], "appliance": {"name": APPLIANCE, "root": str(tmp_path)}}
    params.update(changes)
    return specs.validate(specs.snapshot_spec(), params, "snapshot")


@pytest.mark.parametrize("compression, words", [
    ({"level": 23}, "compression.level"),
    ({"level": -8}, "compression.level"),
    ({"threads": 100000}, "compression.threads"),
])
def test_compression_bounds_are_checked_before_anything_runs(tmp_path, compression, words):
    """The check mode of snapshot and backup_job builds only the request: the writer's own checks
    (level -7..22, a sane worker count) must already be there."""
    with pytest.raises(ConfigError, match=words):
        snapshot_request(_snapshot_params(tmp_path, compression=compression))


@pytest.mark.parametrize("timeout", [0, -5])
def test_restore_refuses_a_command_timeout_that_is_not_positive(tmp_path, timeout):
    with pytest.raises(ConfigError, match="command_timeout"):
        restore_request(tmp_path, "latest", command_timeout=timeout)


# ------------------------------------------------------------------ item 7: dump comparison across patch versions
_DUMP_NEW = (b"/*M!999999\\- enable the sandbox mode */ \n"
             b"-- MariaDB dump 10.19-10.11.19-MariaDB, for debian-linux-gnu (x86_64)\n"
             b"/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n"
             b"/*M!100616 SET @OLD_NOTE_VERBOSITY=@@NOTE_VERBOSITY, NOTE_VERBOSITY=0 */;\n"
             b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mt4` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n"
             b"INSERT INTO `t` VALUES (1,'a');\n"
             b"/*M!100616 SET NOTE_VERBOSITY=@OLD_NOTE_VERBOSITY */;\n"
             b"-- Dump completed on 2026-01-01  1:00:00\n")
_DUMP_OLD = (b"-- MariaDB dump 10.19  Distrib 10.11.4-MariaDB, for debian-linux-gnu (x86_64)\n"
             b"/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;\n"
             b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mt4` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\n"
             b"INSERT INTO `t` VALUES (1,'a');\n"
             b"-- Dump completed on 2025-01-01  1:00:00\n")


def _scan(data, cut=7):
    scanner = DumpScanner()
    for start in range(0, len(data), cut):
        scanner.feed(data[start:start + cut])
    return scanner.finish(), scanner.databases


def test_dump_digest_ignores_version_specific_lines_but_not_data():
    new, old = _scan(_DUMP_NEW), _scan(_DUMP_OLD)
    assert new == old and new[1] == ["mt4"]
    assert _scan(_DUMP_NEW, cut=1) == new
    assert _scan(_DUMP_NEW.replace(b"(1,'a')", b"(1,'b')"))[0] != new[0]
    # A statement that only looks like a header line is data.
    assert _scan(_DUMP_OLD + b"/*!50003 CREATE TRIGGER x BEFORE INSERT ON t FOR EACH ROW SET @a=1 */;;\n")[0] != new[0]


# ------------------------------------------------------------------ item 6: bounded reading
def test_a_db_chunk_is_never_spooled_past_its_verified_size(tmp_path):
    """Pass 2 spools a chunk (to $TMPDIR past 64 MiB) until its end: a tar header that lies must not make
    it spool more than the size the manifest verified in pass 1."""
    expected = {"size": 1024, "sha256": hashlib.sha256(bytes(1024)).hexdigest()}

    class Endless:
        read_bytes = 0

        def read(self, size=-1):
            size = 1024 * 1024 if size is None or size < 0 else size
            self.read_bytes += size
            if self.read_bytes > 512 * 1024 * 1024:  # bounded even without the fix
                return b""
            return bytes(size)

    source = Endless()
    with pytest.raises(IntegrityError, match="differs from the manifest"):
        spool_chunk(source, expected, "db/dump.sql.000000")
    assert source.read_bytes <= 2 * 1024 * 1024


def test_a_db_chunk_larger_than_any_snapshot_writes_is_refused_before_it_is_read():
    expected = {"size": 300 * 1024 * 1024, "sha256": "0" * 64}
    source = io.BytesIO(b"x")
    with pytest.raises(IntegrityError, match="larger than"):
        spool_chunk(source, expected, "db/dump.sql.000000")
    assert source.tell() == 0


def _many_members_object(count, listed):
    members = [(tar_member("files/etc/senhasegura/m%07d" % index), b"") for index in range(count)]
    raw = io.BytesIO()
    header = json.dumps({"format": "segura.backup/1", "id": "badc0de2", "appliance": APPLIANCE}).encode()
    compressor = zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False)
    entries = [_manifest_entry(info, data) for info, data in
               [(tar_member("snapshot.json", header), header)] + members] if listed else []
    manifest = json.dumps({"format": "segura.backup/1", "id": "badc0de2", "appliance": APPLIANCE,
                           "members": entries}).encode()
    with tarfile.open(fileobj=compressor, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tar_member("snapshot.json", header), io.BytesIO(header))
        for info, _data in members:
            tar.addfile(info, io.BytesIO(b""))
        tar.addfile(tar_member("manifest.json", manifest), io.BytesIO(manifest))
    compressor.close()
    return raw.getvalue()


def test_the_member_count_is_capped_by_what_the_sidecar_declares():
    blob = _many_members_object(50, listed=True)
    assert verify(io.BytesIO(blob), Decryption.none(), max_members=52).ok
    report = verify(io.BytesIO(blob), Decryption.none(), max_members=20)
    assert not report.ok
    assert "more than 20 members" in report.problems[0], report.problems
    reader = ArchiveReader(io.BytesIO(blob), Decryption.none(), max_members=20)
    with pytest.raises(IntegrityError, match="more than 20 members"):
        for _info, _content in reader:
            pass
    assert reader.member_count == 21  # stopped at the first member too many


def test_the_reader_keeps_little_per_member():
    """Bookkeeping per member is a few dozen bytes, not a TarInfo and a dataclass (the 300,000-member
    RSS figure is measured in tests/faults/test_hostile_objects.py)."""
    import tracemalloc

    blob = _many_members_object(20000, listed=False)
    tracemalloc.start()
    try:
        report = verify(io.BytesIO(blob), Decryption.none())
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not report.ok and "members not in the manifest" in report.problems[0]
    assert report.members == 20002
    assert peak < 20000 * 400, "%d bytes for 20,000 members" % peak


def test_the_scrypt_work_factor_is_capped_by_an_option(tmp_path):
    sealed = io.BytesIO()
    encryptor = Encryption.passphrase("pw", work_factor=12).open_encryptor(sealed)
    encryptor.write(zstandard.ZstdCompressor().compress(b"x"))
    encryptor.close()
    params = specs.validate(specs.verify_spec(), {"target": {"type": "path", "path": str(tmp_path)},
                                                  "decryption": {"passphrase": "pw", "max_scrypt_work_factor": 11}},
                            "verify")
    decryption = build_decryption(params["decryption"])
    with pytest.raises(ArchiveError, match="scrypt work factor 12 exceeds the allowed maximum 11.*max_scrypt_work_factor"):
        ArchiveReader(io.BytesIO(sealed.getvalue()), decryption)
    defaults = specs.validate(specs.verify_spec(), {"target": {"type": "path", "path": str(tmp_path)},
                                                    "decryption": {"passphrase": "pw"}}, "verify")
    assert defaults["decryption"]["max_scrypt_work_factor"] == 22
    # A header that asks for 2^30 (a GiB of memory per try) is refused before any scrypt runs.
    forged = sealed.getvalue().replace(b" 12\n", b" 30\n", 1)
    with pytest.raises(ArchiveError, match="scrypt work factor 30"):
        ArchiveReader(io.BytesIO(forged), build_decryption(defaults["decryption"]))
    for bad in (0, 41):
        with pytest.raises(ConfigError, match="max_scrypt_work_factor"):
            build_decryption({"passphrase": "pw", "max_scrypt_work_factor": bad})


# ------------------------------------------------------------------ item 9: the small ones
def test_add_file_refuses_a_file_swapped_for_a_symlink_after_lstat(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:secret-hash\n")
    collected = tmp_path / "app.conf"  # lstat said: a regular file; then it became a link
    os.symlink(str(secret), str(collected))
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, Encryption.none())
    writer.add_json("snapshot.json", {"id": "x"})
    with pytest.raises(ApplianceError, match="symbolic link"):
        writer.add_file("files/etc/app.conf", str(collected))
    writer.abort()
    assert b"secret-hash" not in zstandard.ZstdDecompressor().decompressobj().decompress(sink.getvalue())


def test_the_path_target_fsyncs_the_directory_after_a_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino))
        return real_fsync(fd)

    monkeypatch.setattr(path_module.os, "fsync", fsync)
    target = PathTarget(str(tmp_path))
    target.write_bytes("a/src.part", b"data")
    for replace in (False, True):
        del synced[:]
        target.rename("a/src.part", "b/dst", replace=replace)
        assert (True, os.stat(str(tmp_path / "b")).st_ino) in synced, synced
        target.write_bytes("a/src.part", b"again")


def test_encryption_with_a_passphrase_needs_no_mode(tmp_path):
    params = _snapshot_params(tmp_path, encryption={"passphrase": "pw"})
    assert build_encryption(params["encryption"]).mode == "passphrase"
    assert snapshot_request(params).encryption.mode == "passphrase"
    params = specs.validate(specs.backup_job_spec(), {
        "target": {"type": "path", "path": str(tmp_path)}, "encryption": {"passphrase": "pw"},
        "components": ["config"], "appliance": {"root": str(tmp_path)}}, "backup_job")
    assert build_encryption(params["encryption"]).mode == "passphrase"
