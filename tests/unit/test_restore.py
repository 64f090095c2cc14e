# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore engine without a database: dump scanning, symlink rules, the destination tree, and
files-only restores of real archives on a real directory target."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.writer import ArchiveWriter
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    ApplianceError,
    ArchiveError,
    ConfigError,
    IntegrityError,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.apply import restore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.commands import run_commands
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.logical import VERSION_SPECIFIC_LINE, DumpScanner
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.plan import plan_restore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.tree import DestinationTree, Wanted, check_symlink_target
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import Signers, SigningKey, TrustPolicy
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget

#: The test appliance "box" signs with this key; restores trust it (tests/unit/test_signing.py tries the rest).
BOX_KEY = SigningKey.generate()
BOX_TRUST = TrustPolicy(Signers())
BOX_TRUST.signers.pin("box", BOX_KEY.raw_public, "test")

DUMP = (b"-- MariaDB dump 10.19\n-- Host: localhost    Database: mt4\n/*!40101 SET NAMES utf8mb4 */;\n"
        b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mt4` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;\nUSE `mt4`;\n"
        b"INSERT INTO t VALUES (1,'-- not a comment');\n"
        b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `senhasegura`;\n--\n-- Dump completed\nx")
ROOTS = ["etc/senhasegura", "srv/cache/coba"]


# ------------------------------------------------------------------ dump scanner
def _digest(blocks):
    scanner = DumpScanner()
    for block in blocks:
        scanner.feed(block)
    return scanner.finish(), scanner.databases


def test_dump_scanner_finds_databases_in_order_and_ignores_comment_lines():
    digest, databases = _digest([DUMP])
    assert databases == ["mt4", "senhasegura"]
    kept = b"".join(line for line in DUMP.splitlines(True)
                    if not line.startswith(b"-- ") and not VERSION_SPECIFIC_LINE.fullmatch(line.rstrip()))
    assert digest == hashlib.sha256(kept).hexdigest()
    other_host = DUMP.replace(b"Host: localhost", b"Host: 10.0.0.9").replace(b"10.19", b"10.20")
    assert _digest([other_host])[0] == digest
    assert _digest([DUMP.replace(b"(1,", b"(2,")])[0] != digest


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(DUMP)), max_size=8))
def test_dump_scanner_does_not_depend_on_how_the_stream_is_cut(cuts):
    points = sorted(set(cuts))
    blocks = [DUMP[a:b] for a, b in zip([0] + points, points + [len(DUMP)])]
    assert _digest(blocks) == _digest([DUMP])


# ------------------------------------------------------------------ symlink rules
@pytest.mark.parametrize("relpath, link, ok", [
    ("etc/senhasegura/active.conf", "senhasegura.conf", True),
    ("etc/senhasegura/conf.d/a", "../senhasegura.conf", True),
    ("etc/senhasegura/a", "/etc/senhasegura/b", True),
    ("etc/senhasegura/a", "/srv/cache/coba/x", True),
    ("etc/senhasegura/a", "../../srv/cache/coba/x", True),
    ("etc/senhasegura/a", "/etc/shadow", False),
    ("etc/senhasegura/a", "../../../../etc", False),
    ("etc/senhasegura/a", "../passwd", False),
    ("etc/senhasegura/a", "../senhasegura-other/x", False),
    ("etc/senhasegura/a", "", False),
])
def test_symlink_targets_must_stay_inside_the_restored_paths(relpath, link, ok):
    assert (check_symlink_target(relpath, link, ROOTS) is None) is ok


# ------------------------------------------------------------------ destination tree
def _wanted(relpath, data=b"", kind="file", mode=0o640, link=""):
    return Wanted(relpath=relpath, type=kind, size=len(data), sha256=hashlib.sha256(data).hexdigest(), mode=mode,
                  mtime=1700000000, uid=os.getuid(), gid=os.getgid(), linkname=link)


def test_files_are_never_written_through_a_symlink_inside_the_restored_paths(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "etc/senhasegura").mkdir(parents=True)
    os.symlink(str(outside), str(root / "etc/senhasegura/conf.d"))
    tree = DestinationTree(str(root), ROOTS)
    with pytest.raises(ArchiveError, match="refusing to write through the symbolic link"):
        tree.write_file(_wanted("etc/senhasegura/conf.d/x", b"data"), iter([b"data"]))
    assert os.listdir(str(outside)) == []


def test_a_symlink_at_the_destination_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    root = tmp_path / "root"
    (root / "etc/senhasegura").mkdir(parents=True)
    os.symlink(str(victim), str(root / "etc/senhasegura/a.conf"))
    tree = DestinationTree(str(root), ROOTS)
    wanted = _wanted("etc/senhasegura/a.conf", b"new")
    assert tree.state(wanted) == "differs"
    tree.write_file(wanted, iter([b"new"]))
    assert victim.read_bytes() == b"keep me"
    assert not os.path.islink(str(root / "etc/senhasegura/a.conf"))
    assert (root / "etc/senhasegura/a.conf").read_bytes() == b"new"
    assert tree.state(wanted) == "same"


def test_content_that_does_not_match_is_never_renamed_into_place(tmp_path):
    root = tmp_path / "root"
    (root / "etc/senhasegura").mkdir(parents=True)
    (root / "etc/senhasegura/a.conf").write_bytes(b"old")
    tree = DestinationTree(str(root), ROOTS)
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        tree.write_file(_wanted("etc/senhasegura/a.conf", b"expected"), iter([b"tampered"]))
    assert sorted(os.listdir(str(root / "etc/senhasegura"))) == ["a.conf"]
    assert (root / "etc/senhasegura/a.conf").read_bytes() == b"old"


def test_paths_outside_the_allowed_roots_are_refused(tmp_path):
    tree = DestinationTree(str(tmp_path), ROOTS)
    with pytest.raises(ArchiveError, match="outside the restored paths"):
        tree.write_file(_wanted("etc/cron.d/x", b"x"), iter([b"x"]))


# ------------------------------------------------------------------ request and commands
def test_request_validation(tmp_path):
    layout = ApplianceLayout(root=str(tmp_path))
    with pytest.raises(ConfigError, match="allow_other_appliance"):
        RestoreRequest("box-b", layout, Decryption.none(), source_appliance="box-a")
    with pytest.raises(ConfigError, match="'latest' or a snapshot id"):
        RestoreRequest("box", layout, Decryption.none(), snapshot="yesterday")
    with pytest.raises(ConfigError, match="unknown component"):
        RestoreRequest("box", layout, Decryption.none(), components=["sessions"])
    with pytest.raises(ConfigError, match="without a shell"):
        RestoreRequest("box", layout, Decryption.none(), pre_commands=["systemctl stop x"])
    RestoreRequest("box-b", layout, Decryption.none(), source_appliance="box-a", allow_other_appliance=True)


def test_commands_run_without_a_shell_and_a_failure_says_why():
    done = run_commands([["echo", "$HOME;", "x"]], "pre", 30)
    assert done[0]["stdout"] == "$HOME; x\n" and done[0]["rc"] == 0
    with pytest.raises(ApplianceError, match=r"post command sh -c .* failed \(exit code 4\): nope"):
        run_commands([["sh", "-c", "echo nope >&2; exit 4"]], "post", 30)
    with pytest.raises(ApplianceError, match="program not found"):
        run_commands([["/nonexistent/tool"]], "pre", 30)


# ------------------------------------------------------------------ files-only restores of real archives
def _appliance(root):
    (root / "etc/senhasegura/conf.d").mkdir(parents=True)
    (root / "etc/senhasegura/senhasegura.conf").write_text("[app]\nnode=a\n")
    (root / "etc/senhasegura/conf.d/empty.conf").write_text("")
    os.symlink("senhasegura.conf", str(root / "etc/senhasegura/active.conf"))
    (root / "srv/cache/coba").mkdir(parents=True)
    (root / "srv/cache/coba/secrets.aes").write_bytes(os.urandom(100000))
    (root / "var/senhasegura").mkdir(parents=True)
    (root / "var/senhasegura/orbinibkp.conf").write_text("enabled=1\n")
    os.chmod(str(root / "srv/cache/coba/secrets.aes"), 0o600)


def _snapshot(source_root, target_dir, appliance="box", passphrase="correct horse"):
    from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.files import collect_files

    layout = ApplianceLayout(root=str(source_root))
    created = datetime.now(timezone.utc).replace(microsecond=0)
    snap_id = catalog.new_snapshot_id()
    name = catalog.object_name(created, snap_id, True)
    os.makedirs(str(target_dir), exist_ok=True)
    target = PathTarget(str(target_dir))
    with catalog.AtomicUpload(target, catalog.object_path(appliance, name)) as upload:
        writer = ArchiveWriter(upload, Encryption.passphrase(passphrase, work_factor=10))
        writer.add_json("snapshot.json", {"format": "segura.backup/1", "id": snap_id, "appliance": appliance,
                                          "created": catalog.format_utc(created), "components": ["config", "secrets"],
                                          "facts": {"appliance_version": "unknown"}})
        add = {"file": writer.add_file, "dir": writer.add_dir, "symlink": writer.add_symlink}
        for entry in collect_files(layout, ["config", "secrets"]):
            add[entry.kind](entry.archive_name, entry.abs_path)
        result = writer.finish({"facts": {"appliance_version": "unknown"}, "sessions": []})
    catalog.publish_sidecar(target, catalog.Sidecar(
        id=snap_id, appliance=appliance, created=created, object=name, size=upload.size, sha256=upload.sha256,
        components=["config", "secrets"], counts={}, bytes_in=result.bytes_in,
        versions={"appliance": None, "tool": "0.1.0"}, encryption={"mode": "passphrase", "recipients": []},
        db=None, sessions={"count": 0, "bytes": 0}, duration=0.0), BOX_KEY)
    return snap_id


#: Folders above the backed-up paths: not in a snapshot, so a restore creates them with the time of the day.
_PARENTS = ("etc", "srv", "srv/cache", "var", "var/senhasegura")


def _tree(root):
    found = {}
    for folder, dirs, files in os.walk(str(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            content = os.readlink(path) if os.path.islink(path) else (
                open(path, "rb").read() if os.path.isfile(path) else None)
            relpath = os.path.relpath(path, str(root))
            found[relpath] = (info.st_mode, None if relpath in _PARENTS else int(info.st_mtime), content)
    return found


def test_files_only_restore_brings_back_content_and_metadata_and_is_idempotent(tmp_path):
    source = tmp_path / "source"
    _appliance(source)
    _snapshot(source, tmp_path / "target")
    dest = tmp_path / "dest"
    dest.mkdir()
    request = RestoreRequest("box", ApplianceLayout(root=str(dest)), Decryption.passphrase("correct horse"), trust=BOX_TRUST)
    target = PathTarget(str(tmp_path / "target"))

    plan = plan_restore(target, request)
    assert plan.ok and plan.components == ["config", "secrets"] and plan.would_write()
    assert _tree(dest) == {}  # planning wrote nothing
    done = restore(target, request, plan=plan)
    assert done["changed"] is True and done["verification"]["ok"] is True
    assert _tree(dest) == _tree(source)

    again = restore(target, request)
    assert again["changed"] is False and again["written"]["unchanged"] == 5
    assert not plan_restore(target, request).would_write()


def test_a_wrong_passphrase_is_refused_before_anything_is_written(tmp_path):
    source = tmp_path / "source"
    _appliance(source)
    _snapshot(source, tmp_path / "target")
    dest = tmp_path / "dest"
    dest.mkdir()
    request = RestoreRequest("box", ApplianceLayout(root=str(dest)), Decryption.passphrase("wrong"), trust=BOX_TRUST)
    with pytest.raises(ArchiveError, match="wrong passphrase"):
        restore(PathTarget(str(tmp_path / "target")), request)
    assert _tree(dest) == {}


def test_a_truncated_object_fails_the_size_check_first(tmp_path):
    source = tmp_path / "source"
    _appliance(source)
    snap_id = _snapshot(source, tmp_path / "target")
    folder = tmp_path / "target/box/snapshots"
    obj = [p for p in folder.iterdir() if p.name.endswith(".age")][0]
    data = obj.read_bytes()
    obj.write_bytes(data[:-100])
    dest = tmp_path / "dest"
    dest.mkdir()
    request = RestoreRequest("box", ApplianceLayout(root=str(dest)), Decryption.passphrase("correct horse"), trust=BOX_TRUST,
                             snapshot=snap_id)
    with pytest.raises(IntegrityError, match="damaged"):
        restore(PathTarget(str(tmp_path / "target")), request)
    assert _tree(dest) == {}


def test_recordings_come_back_with_their_links_and_hard_links(tmp_path):
    """take_snapshot (no database) then a files + recordings restore into an empty root, on a path target."""
    from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import SnapshotRequest, take_snapshot

    source = tmp_path / "source"
    _appliance(source)
    day = source / "var/senhasegura/arz/2026/1207"
    day.mkdir(parents=True)
    (day / "b.arz").write_bytes(os.urandom(3000))
    os.link(str(day / "b.arz"), str(day / "a-again.arz"))  # sorts first: the name stored; b.arz is the link
    os.symlink("b.arz", str(day / "inside.arz"))
    os.symlink("../../../../../../etc/shadow", str(day / "escaping.arz"))
    (tmp_path / "target").mkdir()
    target = PathTarget(str(tmp_path / "target"))
    done = take_snapshot(target, SnapshotRequest(
        appliance="box", layout=ApplianceLayout(root=str(source)), components=["config", "secrets", "sessions"],
        encryption=Encryption.passphrase("correct horse", work_factor=10), signing_key=BOX_KEY))
    assert (done["counts"]["sessions_hardlinks"], done["counts"]["sessions_symlinks"]) == (1, 2)

    dest = tmp_path / "dest"
    dest.mkdir()
    request = RestoreRequest("box", ApplianceLayout(root=str(dest)), Decryption.passphrase("correct horse"), trust=BOX_TRUST,
                             restore_sessions=True)
    result = restore(target, request)
    assert result["verification"]["ok"] is True, result["verification"]
    restored = dest / "var/senhasegura/arz/2026/1207"
    assert (restored / "b.arz").read_bytes() == (day / "b.arz").read_bytes()
    assert os.stat(str(restored / "b.arz")).st_ino == os.stat(str(restored / "a-again.arz")).st_ino
    assert os.readlink(str(restored / "inside.arz")) == "b.arz"
    assert not os.path.lexists(str(restored / "escaping.arz"))
    assert [item["path"] for item in result["sessions"]["refused"]] == ["/var/senhasegura/arz/2026/1207/escaping.arz"]
    assert (result["sessions"]["restored"], result["sessions"]["links"]) == (3, 2)
    again = restore(target, request)  # everything is in place: nothing is written again
    assert again["sessions"]["restored"] == 0 and again["sessions"]["skipped"] == 3
