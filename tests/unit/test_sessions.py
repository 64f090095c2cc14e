# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incremental session sync against a real PathTarget (a local directory).

``CountingTarget`` wraps the real target and only counts calls (and can run a hook on a write), so
tests can prove what a run did on the target without mocking it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import socket
import stat

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.sessions import (
    BLOCK_SIZE,
    SMALL_FILE,
    load_index,
    sync_sessions,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget

APPLIANCE = "seg-01"


class CountingTarget(Target):
    """Delegates to a real target; counts calls and the sizes of written blocks."""

    kind = "path"

    def __init__(self, inner: Target, on_write=None):
        self.inner = inner
        self.calls = collections.Counter()
        self.write_sizes = []
        self.on_write = on_write

    def describe(self):
        return self.inner.describe()

    def open_write(self, relpath, exclusive=False):
        self.calls["open_write"] += 1
        handle = self.inner.open_write(relpath, exclusive)
        counter = self

        class Writer:
            def write(self, data):
                counter.write_sizes.append(len(data))
                if counter.on_write:
                    counter.on_write(relpath, len(counter.write_sizes))
                return handle.write(data)

            def close(self):
                handle.close()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

        return Writer()

    def open_read(self, relpath):
        self.calls["open_read"] += 1
        return self.inner.open_read(relpath)

    def stat(self, relpath):
        self.calls["stat"] += 1
        return self.inner.stat(relpath)

    def listdir(self, relpath):
        self.calls["listdir"] += 1
        return self.inner.listdir(relpath)

    def makedirs(self, relpath):
        self.calls["makedirs"] += 1
        return self.inner.makedirs(relpath)

    def remove(self, relpath):
        self.calls["remove"] += 1
        return self.inner.remove(relpath)

    def rmdir(self, relpath):
        self.calls["rmdir"] += 1
        return self.inner.rmdir(relpath)

    def rename(self, src, dst, replace=False):
        self.calls["rename_replace" if replace else "rename"] += 1
        return self.inner.rename(src, dst, replace)

    def free_space(self):
        return self.inner.free_space()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


@pytest.fixture
def lab(tmp_path):
    """(layout, arz folder, target directory, real PathTarget) with three recordings on two days."""
    root = tmp_path / "appliance"
    arz = root / "var/senhasegura/arz"
    write(str(arz / "2026/1126/a.arz"), b"A" * 1000)
    write(str(arz / "2026/1127/b.arz"), b"B" * 2000)
    write(str(arz / "2026/1127/c.arz"), b"C" * 3000)
    store = tmp_path / "target"
    store.mkdir()
    return ApplianceLayout(root=str(root)), arz, store, PathTarget(str(store))


def remote_files(store):
    found = {}
    for folder, _dirs, files in os.walk(store):
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, store)] = os.stat(path)
    return found


def test_first_run_uploads_everything(lab):
    layout, _arz, store, target = lab
    counted = CountingTarget(target)
    result = sync_sessions(counted, APPLIANCE, layout)
    assert (result.uploaded_count, result.uploaded_bytes, result.skipped_count) == (3, 6000, 0)
    assert result.problems == []
    assert result.referenced == [
        {"path": "seg-01/sessions/2026/1126/a.arz", "size": 1000, "sha256": sha(b"A" * 1000)},
        {"path": "seg-01/sessions/2026/1127/b.arz", "size": 2000, "sha256": sha(b"B" * 2000)},
        {"path": "seg-01/sessions/2026/1127/c.arz", "size": 3000, "sha256": sha(b"C" * 3000)},
    ]
    assert sorted(remote_files(store)) == [
        "seg-01/sessions/2026/1126/a.arz", "seg-01/sessions/2026/1127/b.arz",
        "seg-01/sessions/2026/1127/c.arz", "seg-01/sessions/index.json"]
    assert (store / "seg-01/sessions/2026/1127/c.arz").read_bytes() == b"C" * 3000
    # one listing per local day folder; three no-replace renames, the index renamed over itself
    assert counted.calls["listdir"] == 2
    assert counted.calls["rename"] == 3 and counted.calls["rename_replace"] == 1
    index = json.loads((store / "seg-01/sessions/index.json").read_text())
    assert index["format"] == "segura.backup/sessions-index/2"
    size, _mtime_ns, digest = index["files"]["2026/1126/a.arz"]
    assert (size, digest) == (1000, sha(b"A" * 1000))


def test_an_index_of_format_1_is_still_used(lab):
    """A sync after an upgrade reads the older index (an object per entry) instead of re-hashing all."""
    layout, arz, store, target = lab
    sync_sessions(target, APPLIANCE, layout)
    path = store / "seg-01/sessions/index.json"
    files = json.loads(path.read_text())["files"]
    path.write_text(json.dumps({"format": "segura.backup/sessions-index/1", "files": {
        relpath: {"size": size, "mtime_ns": mtime_ns, "sha256": digest} for relpath, (size, mtime_ns, digest) in files.items()}}))
    result = sync_sessions(target, APPLIANCE, layout)
    assert result.hashed_count == 0 and result.uploaded_count == 0 and result.skipped_count == 3
    assert json.loads(path.read_text())["format"] == "segura.backup/sessions-index/1"  # unchanged: not rewritten
    write(str(arz / "2026/1128/d.arz"), b"D")
    assert sync_sessions(target, APPLIANCE, layout).hashed_count == 0
    assert json.loads(path.read_text())["format"] == "segura.backup/sessions-index/2"  # the next change rewrites it


def test_a_damaged_index_entry_costs_a_read_never_a_wrong_reference(lab):
    layout, arz, store, target = lab
    sync_sessions(target, APPLIANCE, layout)
    path = store / "seg-01/sessions/index.json"
    doc = json.loads(path.read_text())
    forged = doc["files"]["2026/1127/b.arz"]
    doc["files"]["2026/1127/b.arz"] = [forged[0], forged[1], "0" * 64]  # a forged sha256, same size and mtime
    doc["files"]["2026/1127/c.arz"] = ["oops"]
    path.write_text(json.dumps(doc))
    result = sync_sessions(target, APPLIANCE, layout)
    # b: the index's sha256 is trusted for an unchanged file (the cache's promise), but c is re-read
    assert result.hashed_count == 1
    assert {"path": "seg-01/sessions/2026/1127/c.arz", "size": 3000, "sha256": sha(b"C" * 3000)} in result.referenced


def test_second_run_moves_nothing_and_reads_nothing(lab):
    layout, _arz, store, target = lab
    first = sync_sessions(target, APPLIANCE, layout)
    before = {name: (st.st_mtime_ns, st.st_ino) for name, st in remote_files(store).items()}
    counted = CountingTarget(target)
    second = sync_sessions(counted, APPLIANCE, layout)
    assert (second.uploaded_count, second.uploaded_bytes, second.skipped_count) == (0, 0, 3)
    assert second.hashed_count == 0  # the index vouches for unchanged local files
    assert second.referenced == first.referenced
    assert counted.calls["open_write"] == 0 and counted.calls["rename"] == 0
    assert counted.calls["rename_replace"] == 0 and counted.calls["stat"] == 0
    assert counted.calls["listdir"] == 2
    after = {name: (st.st_mtime_ns, st.st_ino) for name, st in remote_files(store).items()}
    assert after == before


def test_new_and_changed_files(lab):
    layout, arz, store, target = lab
    sync_sessions(target, APPLIANCE, layout)
    write(str(arz / "2026/1127/d.arz"), b"D" * 10)  # new
    write(str(arz / "2026/1126/a.arz"), b"a" * 1500)  # other size
    counted = CountingTarget(target)
    progress = []
    result = sync_sessions(counted, APPLIANCE, layout, progress=progress.append)
    assert (result.uploaded_count, result.uploaded_bytes, result.skipped_count) == (2, 1510, 2)
    assert counted.calls["rename"] == 1  # d.arz: no replace
    assert counted.calls["rename_replace"] == 2  # a.arz updated, and the index
    assert (store / "seg-01/sessions/2026/1126/a.arz").read_bytes() == b"a" * 1500
    assert [(p["action"], p["path"]) for p in progress] == [
        ("uploaded", "2026/1126/a.arz"), ("skipped", "2026/1127/b.arz"),
        ("skipped", "2026/1127/c.arz"), ("uploaded", "2026/1127/d.arz")]
    assert {"path": "seg-01/sessions/2026/1126/a.arz", "size": 1500, "sha256": sha(b"a" * 1500)} in result.referenced


def test_same_size_change_is_caught_through_the_index(lab):
    layout, arz, store, target = lab
    sync_sessions(target, APPLIANCE, layout)
    path = arz / "2026/1127/b.arz"
    write(str(path), b"b" * 2000)
    os.utime(path, ns=(1, 1))  # a different mtime makes the sync re-hash the file
    result = sync_sessions(target, APPLIANCE, layout)
    assert (result.uploaded_count, result.hashed_count) == (1, 1)
    assert (store / "seg-01/sessions/2026/1127/b.arz").read_bytes() == b"b" * 2000


def test_missing_index_rehashes_but_uploads_nothing(lab):
    layout, _arz, store, target = lab
    first = sync_sessions(target, APPLIANCE, layout)
    os.unlink(store / "seg-01/sessions/index.json")
    counted = CountingTarget(target)
    result = sync_sessions(counted, APPLIANCE, layout)
    assert (result.uploaded_count, result.hashed_count, result.skipped_count) == (0, 3, 3)
    assert result.referenced == first.referenced
    assert counted.calls["open_write"] == 1  # only the rebuilt index
    assert load_index(target, APPLIANCE).keys() == {"2026/1126/a.arz", "2026/1127/b.arz", "2026/1127/c.arz"}


def test_damaged_index_is_only_a_cache(lab):
    layout, _arz, store, target = lab
    sync_sessions(target, APPLIANCE, layout)
    (store / "seg-01/sessions/index.json").write_bytes(b"{not json")
    result = sync_sessions(target, APPLIANCE, layout)
    assert (result.uploaded_count, result.hashed_count, result.problems) == (0, 3, [])


def test_sha256_mode_compares_contents_without_index(lab):
    layout, _arz, store, target = lab
    sync_sessions(target, APPLIANCE, layout)
    os.unlink(store / "seg-01/sessions/index.json")
    (store / "seg-01/sessions/2026/1127/c.arz").write_bytes(b"X" * 3000)  # same size, other content
    size_mode = sync_sessions(target, APPLIANCE, layout)
    assert size_mode.uploaded_count == 0  # documented trust: same size, immutable recording
    os.unlink(store / "seg-01/sessions/index.json")
    counted = CountingTarget(target)
    content_mode = sync_sessions(counted, APPLIANCE, layout, compare="sha256")
    assert content_mode.uploaded_count == 1 and counted.calls["open_read"] >= 3
    assert (store / "seg-01/sessions/2026/1127/c.arz").read_bytes() == b"C" * 3000


def test_streams_in_blocks_of_at_most_4_mib(lab):
    layout, arz, store, target = lab
    big = os.urandom(1024 * 1024) * 9  # 9 MiB
    write(str(arz / "2026/1128/big.arz"), big)
    counted = CountingTarget(target)
    result = sync_sessions(counted, APPLIANCE, layout)
    assert BLOCK_SIZE == 4 * 1024 * 1024
    big_blocks = [size for size in counted.write_sizes if size > 3000]
    assert big_blocks == [BLOCK_SIZE, BLOCK_SIZE, 1024 * 1024]
    assert {"path": "seg-01/sessions/2026/1128/big.arz", "size": len(big), "sha256": sha(big)} in result.referenced
    assert (store / "seg-01/sessions/2026/1128/big.arz").read_bytes() == big


def test_file_changing_while_read_is_reported_and_not_published(lab):
    layout, arz, store, target = lab
    growing = arz / "2026/1127/live.arz"
    write(str(growing), b"L" * (SMALL_FILE + 256 * 1024))  # large: streamed, so the hook runs while it is read

    def append_to_live(relpath, _count):
        if relpath.endswith("live.arz.partial"):
            with open(growing, "ab") as handle:
                handle.write(b"more")

    result = sync_sessions(CountingTarget(target, on_write=append_to_live), APPLIANCE, layout, block_size=64 * 1024)
    assert [(p.path, p.reason) for p in result.problems] == [(str(growing), "changed while being read")]
    assert result.uploaded_count == 3
    assert not any(r["path"].endswith("live.arz") for r in result.referenced)
    assert not (store / "seg-01/sessions/2026/1127/live.arz").exists()
    assert not (store / "seg-01/sessions/2026/1127/live.arz.partial").exists()
    assert "2026/1127/live.arz" not in load_index(target, APPLIANCE)


def test_file_vanishing_before_read_is_reported(lab):
    layout, arz, _store, target = lab

    def remove_c(event):
        if event["path"] == "2026/1127/b.arz":
            os.unlink(arz / "2026/1127/c.arz")

    # one file at a time (the wrapper keeps Target's sequential put_files), so b is done before c is read
    result = sync_sessions(CountingTarget(target), APPLIANCE, layout, progress=remove_c)
    assert [(p.path, p.reason) for p in result.problems] == [
        (str(arz / "2026/1127/c.arz"), "vanished before it could be read")]
    assert result.uploaded_count == 2


def test_leftover_partial_is_replaced_and_other_nesting_is_mirrored(lab):
    layout, arz, store, target = lab
    write(str(store / "seg-01/sessions/2026/1126/a.arz.partial"), b"junk from an interrupted run")
    write(str(arz / "loose.arz"), b"top")
    write(str(arz / "x/y/z/deep.arz"), b"deep")
    result = sync_sessions(target, APPLIANCE, layout)
    assert result.uploaded_count == 5 and result.problems == []
    files = remote_files(store)
    assert "seg-01/sessions/2026/1126/a.arz.partial" not in files
    assert "seg-01/sessions/loose.arz" in files and "seg-01/sessions/x/y/z/deep.arz" in files


def test_special_files_are_reported_and_the_rest_is_taken(lab):
    layout, arz, store, target = lab
    os.mkfifo(arz / "2026/1127/pipe")
    os.mknod(arz / "2026/1127/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(arz / "2026/1127/sock"))
        result = sync_sessions(target, APPLIANCE, layout)
    assert [(p.path, p.reason) for p in result.problems] == [
        (str(arz / "2026/1127/null"), "is a character device, not a recording"),
        (str(arz / "2026/1127/pipe"), "is a FIFO (named pipe), not a recording"),
        (str(arz / "2026/1127/sock"), "is a socket, not a recording")]
    assert result.status == "partial" and result.uploaded_count == 3
    assert sorted(remote_files(store)) == ["seg-01/sessions/2026/1126/a.arz", "seg-01/sessions/2026/1127/b.arz",
                                           "seg-01/sessions/2026/1127/c.arz", "seg-01/sessions/index.json"]


def test_symbolic_links_are_referenced_as_links_never_followed(lab):
    layout, arz, store, target = lab
    links = {"2026/1127/inside.arz": "b.arz", "2026/1127/escaping.arz": "../../../../../../etc/shadow",
             "2026/1127/absolute.arz": "/etc/passwd", "2026/1127/dangling.arz": "gone.arz",
             "2026/1128": "1127"}  # a link to a folder is a link too: never walked into
    for relpath, text in links.items():
        os.symlink(text, arz / relpath)
    result = sync_sessions(target, APPLIANCE, layout)
    assert result.problems == [] and result.status == "complete"
    assert result.uploaded_count == 3 and result.symlinks == 5
    referenced = {item["path"]: item for item in result.referenced}
    for relpath, text in links.items():
        assert referenced["seg-01/sessions/" + relpath] == {
            "path": "seg-01/sessions/" + relpath, "type": "symlink", "target": text,
            "size": len(text.encode()), "sha256": sha(text.encode())}
    assert not any(name.endswith(("inside.arz", "escaping.arz", "dangling.arz", "1128")) for name in remote_files(store))
    index = load_index(target, APPLIANCE)
    assert index["2026/1127/escaping.arz"] == ("symlink", links["2026/1127/escaping.arz"])
    # a second run finds the same, reads nothing again, uploads nothing
    counted = CountingTarget(target)
    again = sync_sessions(counted, APPLIANCE, layout)
    assert again.referenced == result.referenced and again.uploaded_count == 0 and counted.calls["open_write"] == 0


def test_a_link_replaced_by_a_file_is_uploaded(lab):
    layout, arz, store, target = lab
    os.symlink("b.arz", arz / "2026/1127/x.arz")
    sync_sessions(target, APPLIANCE, layout)
    os.unlink(arz / "2026/1127/x.arz")
    write(str(arz / "2026/1127/x.arz"), b"X" * 10)
    result = sync_sessions(target, APPLIANCE, layout)
    assert {"path": "seg-01/sessions/2026/1127/x.arz", "size": 10, "sha256": sha(b"X" * 10)} in result.referenced
    assert (store / "seg-01/sessions/2026/1127/x.arz").read_bytes() == b"X" * 10


def test_hard_links_are_stored_once(lab):
    layout, arz, store, target = lab
    os.link(arz / "2026/1127/b.arz", arz / "2026/1127/b-copy.arz")  # sorts first: the name that is stored
    result = sync_sessions(target, APPLIANCE, layout)
    assert result.uploaded_count == 3 and result.hardlinks == 1 and result.problems == []
    assert {"path": "seg-01/sessions/2026/1127/b-copy.arz", "size": 2000, "sha256": sha(b"B" * 2000)} in result.referenced
    assert {"path": "seg-01/sessions/2026/1127/b.arz", "type": "hardlink", "link": "seg-01/sessions/2026/1127/b-copy.arz",
            "size": 2000, "sha256": sha(b"B" * 2000)} in result.referenced
    files = remote_files(store)
    assert "seg-01/sessions/2026/1127/b-copy.arz" in files and "seg-01/sessions/2026/1127/b.arz" not in files
    # the stored name goes away: the other name is stored at the next run
    os.unlink(arz / "2026/1127/b-copy.arz")
    again = sync_sessions(target, APPLIANCE, layout)
    assert {"path": "seg-01/sessions/2026/1127/b.arz", "size": 2000, "sha256": sha(b"B" * 2000)} in again.referenced
    assert (store / "seg-01/sessions/2026/1127/b.arz").read_bytes() == b"B" * 2000


def test_bad_arguments(lab, tmp_path):
    layout, _arz, _store, target = lab
    for name in ("", "..", "a/b", "."):
        with pytest.raises(ConfigError):
            sync_sessions(target, name, layout)
    with pytest.raises(ConfigError, match="compare"):
        sync_sessions(target, APPLIANCE, layout, compare="mtime")
    empty_root = tmp_path / "bare"
    empty_root.mkdir()
    with pytest.raises(ApplianceError, match="var/senhasegura/arz"):
        sync_sessions(target, APPLIANCE, ApplianceLayout(root=str(empty_root)))
