"""The catalog index (catalog/index.py) against a real local directory target: a listing judged from
the index equals one that reads every file, whatever state the index is in."""

import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import index as index_module
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import list_snapshots, record_verification, refresh_index
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget
from tests.unit.test_catalog import CREATED, put_snapshot


class CountingTarget(PathTarget):
    """A real PathTarget that counts the files read whole (sidecars, verification records, the index)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = []

    def read_bytes(self, relpath, *args, **kwargs):
        self.reads.append(relpath)
        return super().read_bytes(relpath, *args, **kwargs)


@pytest.fixture
def target(tmp_path):
    with CountingTarget(str(tmp_path)) as opened:
        yield opened


def fill(target, count=6, appliance="pam1"):
    names = [put_snapshot(target, CREATED - timedelta(days=day), appliance=appliance)[0] for day in range(count)]
    record_verification(target, catalog.list_snapshots(target, appliance).snapshots[0], {"mode": "quick", "ok": True})
    return names


def as_shown(listing):
    return json.dumps(listing.to_dict(datetime(2026, 12, 1, tzinfo=timezone.utc)), sort_keys=True, default=str)


def index_file(tmp_path, appliance="pam1"):
    return os.path.join(str(tmp_path), appliance, "catalog.json")


def test_the_index_replaces_every_read_and_the_listing_is_the_same(target, tmp_path):
    fill(target)
    fill(target, 3, appliance="pam2")
    assert refresh_index(target, "pam1") == {"files": 7, "read": 7, "written": True}
    assert refresh_index(target, "pam2")["written"]
    assert refresh_index(target, "pam1") == {"files": 7, "read": 0, "written": False}  # up to date: not rewritten
    target.reads.clear()
    indexed = list_snapshots(target, use_index=True)
    assert sorted(target.reads) == ["pam1/catalog.json", "pam2/catalog.json"]  # one read per appliance, no sidecar
    assert {name: copies.summary() for name, copies in indexed.indexes.items()} == {
        "pam1": {"state": "used", "from_index": 7, "read": 0}, "pam2": {"state": "used", "from_index": 4, "read": 0}}
    assert as_shown(indexed) == as_shown(list_snapshots(target))
    assert indexed.snapshots[0].verification["ok"] is True


def test_changed_and_new_files_are_read_from_the_target(target, tmp_path):
    names = fill(target)
    refresh_index(target, "pam1")
    put_snapshot(target, CREATED + timedelta(hours=1))  # new since the index
    record_verification(target, list_snapshots(target, "pam1").snapshots[-1], {"mode": "deep", "ok": False})
    # a sidecar damaged in place, one byte, same size: its time changes, so its copy is not used
    path = os.path.join(str(tmp_path), "pam1", "snapshots", catalog.sidecar_name(names[2]))
    with open(path, "r+b") as handle:
        handle.seek(5)
        handle.write(b"#")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1000))
    indexed = list_snapshots(target, use_index=True)
    assert indexed.indexes["pam1"].summary() == {"state": "used", "from_index": 6, "read": 3}
    assert as_shown(indexed) == as_shown(list_snapshots(target))
    assert [r.status for r in indexed.snapshots].count("damaged") == 1


def test_an_index_copy_of_another_length_is_never_used(target, tmp_path):
    fill(target, 2)
    refresh_index(target, "pam1")
    with open(index_file(tmp_path)) as handle:
        doc = json.load(handle)
    for copy in doc["files"].values():  # same size and time recorded, text of another length
        copy[2] = copy[2] + " "
    with open(index_file(tmp_path), "w") as handle:
        json.dump(doc, handle)
    indexed = list_snapshots(target, use_index=True)
    assert indexed.indexes["pam1"].summary() == {"state": "used", "from_index": 0, "read": 3}
    assert as_shown(indexed) == as_shown(list_snapshots(target))


@pytest.mark.parametrize("content, state", [
    (b"", "ignored: damaged"),
    (b"\xff\xfe not utf-8", "ignored: damaged"),
    (b"[1, 2]", "ignored: damaged"),
    (b'{"format": "segura.backup/index/0", "appliance": "pam1", "files": {}}', "ignored: damaged"),
    (b'{"format": "segura.backup/index/1", "appliance": "pam2", "files": {}}', "ignored: damaged (it is the index of 'pam2')"),
    (b'{"format": "segura.backup/index/1", "appliance": "pam1", "files": []}', "ignored: damaged"),
    (b'{"format": "segura.backup/index/1", "appliance": "pam1", "files": {"x.json": [1, 2]}}', "ignored: damaged"),
    (b'{"format": "segura.backup/index/1", "appliance": "pam1", "files": {"x.json": ["1", 2, "t"]}}', "ignored: damaged"),
    (b"[" * 5000 + b"]" * 5000, "ignored: damaged"),  # nested deeper than json parses
    (b"[" * 100000 + b"]" * 100000, "ignored: cannot be read"),  # larger than copies of the listed files can be
])
def test_a_damaged_index_is_ignored_and_the_next_refresh_repairs_it(target, tmp_path, content, state):
    fill(target, 3)
    with open(index_file(tmp_path), "wb") as handle:
        handle.write(content)
    indexed = list_snapshots(target, use_index=True)
    assert indexed.indexes["pam1"].state.startswith(state), indexed.indexes["pam1"].state
    assert indexed.indexes["pam1"].read == 4 and indexed.complete
    assert as_shown(indexed) == as_shown(list_snapshots(target))
    assert refresh_index(target, "pam1")["written"]
    assert list_snapshots(target, use_index=True).indexes["pam1"].summary() == {"state": "used", "from_index": 4, "read": 0}


def test_an_index_larger_than_its_limit_is_not_read(target, tmp_path, monkeypatch):
    fill(target, 2)
    refresh_index(target, "pam1")
    monkeypatch.setattr(index_module, "INDEX_LIMIT", os.path.getsize(index_file(tmp_path)) - 1)
    indexed = list_snapshots(target, use_index=True)
    assert indexed.indexes["pam1"].state.startswith("ignored: cannot be read"), indexed.indexes["pam1"].state
    assert as_shown(indexed) == as_shown(list_snapshots(target))


def test_a_missing_index_reads_every_file(target):
    fill(target, 2)
    indexed = list_snapshots(target, use_index=True)
    assert indexed.indexes["pam1"].summary() == {"state": "missing", "from_index": 0, "read": 3}


def test_removed_snapshots_leave_the_index_at_the_next_refresh(target):
    names = fill(target, 4)
    refresh_index(target, "pam1")
    record = [r for r in list_snapshots(target, "pam1").snapshots if r.object == names[3]][0]
    catalog.remove_snapshot(target, record)
    assert refresh_index(target, "pam1") == {"files": 4, "read": 0, "written": True}
    with open(os.path.join(target.root, "pam1", "catalog.json")) as handle:
        assert catalog.sidecar_name(names[3]) not in json.load(handle)["files"]


def test_a_refresh_that_cannot_write_says_why_and_raises_nothing(target, tmp_path):
    fill(target, 2)
    os.makedirs(os.path.join(index_file(tmp_path), "in-the-way"))  # a folder where the index goes
    outcome = refresh_index(target, "pam1")
    assert outcome["written"] is False and "catalog.json" in outcome["error"], outcome
    assert list_snapshots(target, use_index=True).indexes["pam1"].state.startswith("ignored: cannot be read")


def test_true_and_false_are_not_sizes_or_times(target, tmp_path):
    fill(target, 1)
    with open(index_file(tmp_path), "w") as handle:
        json.dump({"format": "segura.backup/index/1", "appliance": "pam1", "files": {"x.json": [True, 1.5, "t"]}}, handle)
    assert list_snapshots(target, use_index=True).indexes["pam1"].state.startswith("ignored: damaged")


@pytest.mark.parametrize("text, why", [
    ('"\\ud800"', "not UTF-8"),  # a lone surrogate: valid JSON, no UTF-8 bytes
    ("1" + "0" * 30, "digits"),  # a number json would parse in quadratic time on Pythons without a limit
])
def test_hostile_texts_and_numbers_make_the_index_damaged_not_the_run(target, tmp_path, text, why):
    fill(target, 1)
    refresh_index(target, "pam1")
    with open(index_file(tmp_path)) as handle:
        raw = handle.read()
    name = next(iter(json.loads(raw)["files"]))
    doc = raw.replace('"files":{"%s":[' % name, '"files":{"x.json":[1,1,%s],"%s":[' % (text, name), 1)
    assert doc != raw
    with open(index_file(tmp_path), "w") as handle:
        handle.write(doc)
    indexed = list_snapshots(target, use_index=True)
    assert indexed.indexes["pam1"].state.startswith("ignored: damaged") and why in indexed.indexes["pam1"].state
    assert as_shown(indexed) == as_shown(list_snapshots(target))
    assert refresh_index(target, "pam1")["written"]  # and the next refresh repairs it


def test_an_index_larger_than_copies_of_the_listed_files_can_be_is_not_read(target, tmp_path):
    fill(target, 2)
    refresh_index(target, "pam1")
    with open(index_file(tmp_path)) as handle:
        doc = json.load(handle)
    doc["padding"] = " " * (200 * 1024)  # far beyond what copies of three small files can weigh
    with open(index_file(tmp_path), "w") as handle:
        json.dump(doc, handle)
    indexed = list_snapshots(target, use_index=True)
    assert indexed.indexes["pam1"].state.startswith("ignored: cannot be read"), indexed.indexes["pam1"].state
    assert as_shown(indexed) == as_shown(list_snapshots(target))


def test_a_sidecar_over_the_limit_is_read_and_damaged_even_with_a_copy(target, tmp_path, monkeypatch):
    fill(target, 1)
    refresh_index(target, "pam1")
    record = list_snapshots(target, "pam1").snapshots[0]
    monkeypatch.setattr(index_module, "SIDECAR_LIMIT", record._entries[".json"].size - 1)
    from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import names, store
    monkeypatch.setattr(names, "SIDECAR_LIMIT", record._entries[".json"].size - 1)
    monkeypatch.setattr(store, "SIDECAR_LIMIT", record._entries[".json"].size - 1)
    indexed = list_snapshots(target, use_index=True)
    assert indexed.indexes["pam1"].used == 1  # the verification record only
    assert as_shown(indexed) == as_shown(list_snapshots(target))


def test_a_sidecar_that_cannot_be_read_does_not_stop_the_others_being_indexed(target, tmp_path):
    names = fill(target, 3)
    unreadable = os.path.join(str(tmp_path), "pam1", "snapshots", catalog.sidecar_name(names[1]))
    os.chmod(unreadable, 0)
    try:
        if os.access(unreadable, os.R_OK):  # root reads anything: make it a folder instead
            os.chmod(unreadable, 0o644)
            os.remove(unreadable)
            os.makedirs(unreadable)
        outcome = refresh_index(target, "pam1")
    finally:
        if os.path.isdir(unreadable):
            os.rmdir(unreadable)
    assert outcome["written"] and outcome["files"] == 3, outcome  # two sidecars and the verification record


def test_a_stop_while_the_index_is_refreshed_ends_the_refresh_not_the_run(target, tmp_path, monkeypatch):
    from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import Cancelled

    fill(target, 1)

    def stopped(*args, **kwargs):
        raise Cancelled("SIGTERM")

    monkeypatch.setattr(index_module, "write_replacing", stopped)
    outcome = refresh_index(target, "pam1")
    assert outcome["written"] is False and "stopped (SIGTERM)" in outcome["error"]


def test_runs_that_changed_the_folder_warn_when_the_index_cannot_be_written(target, tmp_path):
    from ansible_collections.segura.backup.plugins.module_utils._engine import pruning, retention, verification

    fill(target, 3)
    os.makedirs(os.path.join(index_file(tmp_path), "in-the-way"))
    results = verification.verify_snapshots(target, list_snapshots(target, "pam1").snapshots[:1], "quick")
    assert results[0].recorded
    assert results[0].index_error.startswith("the catalog index of pam1 was not updated (")
    outcomes = pruning.prune(target, retention.Policy(keep_last=1), appliance="pam1", now=CREATED + timedelta(days=1))
    assert outcomes[0].removed and outcomes[0].error is None  # pruned all the same
    assert [w for w in outcomes[0].plan.warnings if w.startswith("the catalog index of pam1 was not updated")]
