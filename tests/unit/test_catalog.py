"""Catalog: names, sidecars, atomic uploads and listing, against a real local directory target."""

import hashlib
import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import (
    AtomicUpload,
    Sidecar,
    list_snapshots,
    new_snapshot_id,
    object_name,
    parse_object_name,
    publish_sidecar,
    record_verification,
    remove_snapshot,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    ConfigError,
    IntegrityError,
    TargetError,
    TargetExists,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.retention import stale_partials
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget

UTC = timezone.utc
CREATED = datetime(2026, 11, 27, 10, 15, 0, tzinfo=UTC)
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


@pytest.fixture
def target(tmp_path):
    with PathTarget(str(tmp_path)) as opened:
        yield opened


class CountingTarget(PathTarget):
    """A real PathTarget that counts the directory listings and stats it is asked for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def listdir(self, relpath):
        self.calls.append(("listdir", relpath))
        return super().listdir(relpath)

    def stat(self, relpath):
        self.calls.append(("stat", relpath))
        return super().stat(relpath)


def make_sidecar(name, payload, appliance="pam1", **changes):
    created, snap_id, encrypted = parse_object_name(name)
    fields = dict(
        id=snap_id, appliance=appliance, created=created, object=name, size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(), components=["db", "files"], counts={"files": 3},
        bytes_in=1000, versions={"appliance": "3.32.0.12", "tool": "0.1.0"},
        encryption={"mode": "x25519" if encrypted else "none", "recipients": [RECIPIENT] if encrypted else []},
        db={"chunks": 1, "bytes": 900, "sha256": "a" * 64}, sessions={"count": 0, "bytes": 0}, duration=1.5,
    )
    fields.update(changes)
    return Sidecar(**fields)


def put_snapshot(target, created, payload=b"snapshot bytes", appliance="pam1", encrypted=True, snap_id=None):
    """Upload an object and publish its sidecar: a complete snapshot, as the snapshot module makes it."""
    name = object_name(created, snap_id or new_snapshot_id(), encrypted)
    with AtomicUpload(target, catalog.object_path(appliance, name)) as upload:
        upload.write(payload)
    sidecar = make_sidecar(name, payload, appliance)
    publish_sidecar(target, sidecar)
    return name, sidecar


# -- names ---------------------------------------------------------------------------------------


def test_object_name_round_trip():
    name = object_name(CREATED, "1a2b3c4d", encrypted=True)
    assert name == "20261127T101500Z-1a2b3c4d.tar.zst.age"
    assert parse_object_name(name) == (CREATED, "1a2b3c4d", True)
    plain = object_name(CREATED.astimezone(timezone(timedelta(hours=-3))).replace(microsecond=999), "1a2b3c4d", False)
    assert plain == "20261127T101500Z-1a2b3c4d.tar.zst"
    assert parse_object_name(plain) == (CREATED, "1a2b3c4d", False)


@pytest.mark.parametrize(
    "name",
    ["20261127T101500Z-1a2b3c4d.tar.zst.age.partial", "20261127T101500Z-1A2B3C4D.tar.zst", "20261399T101500Z-1a2b3c4d.tar.zst",
     "20261127T101500Z-1a2b3c4.tar.zst", "20261127T101500Z-1a2b3c4d.json", "x20261127T101500Z-1a2b3c4d.tar.zst", "", None],
)
def test_parse_object_name_refuses_other_names(name):
    assert parse_object_name(name) is None


def test_object_name_refuses_bad_input():
    with pytest.raises(ConfigError, match="timezone"):
        object_name(datetime(2026, 1, 1), "1a2b3c4d", True)
    with pytest.raises(ConfigError, match="snapshot id"):
        object_name(CREATED, "../../x", True)


def test_new_snapshot_id():
    ids = {new_snapshot_id() for dummy in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 8 and int(i, 16) >= 0 and i == i.lower() for i in ids)


@pytest.mark.parametrize("name", ["pam1", "pam-01.site_a", "A" * 100, "..x"])
def test_valid_appliance_names(name):
    assert catalog.validate_appliance(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "a\x00b", "A" * 101, "pam 1", "pám", None, 7])
def test_invalid_appliance_names(name):
    with pytest.raises(ConfigError, match="appliance name"):
        catalog.validate_appliance(name)


def test_paths():
    name = "20261127T101500Z-1a2b3c4d.tar.zst.age"
    assert catalog.snapshots_dir("pam1") == "pam1/snapshots"
    assert catalog.sessions_dir("pam1") == "pam1/sessions"
    assert catalog.lock_path("pam1") == "pam1/lock"
    assert catalog.sidecar_name(name) == "20261127T101500Z-1a2b3c4d.json"
    assert catalog.verification_name(name) == "20261127T101500Z-1a2b3c4d.verify.json"
    assert catalog.partial_name(name) == name + ".partial"
    assert catalog.object_path("pam1", name) == "pam1/snapshots/" + name
    with pytest.raises(ConfigError):
        catalog.lock_path("../etc")


# -- sidecar -------------------------------------------------------------------------------------


def test_sidecar_round_trip():
    sidecar = make_sidecar("20261127T101500Z-1a2b3c4d.tar.zst.age", b"payload")
    data = sidecar.to_json()
    doc = json.loads(data)
    assert doc["format"] == "segura.backup/1" and doc["created"] == "2026-11-27T10:15:00.000000Z"
    assert doc["encryption"] == {"mode": "x25519", "recipients": [RECIPIENT]}
    assert Sidecar.from_json(data, "x.json") == sidecar


def _sidecar_doc():
    return json.loads(make_sidecar("20261127T101500Z-1a2b3c4d.tar.zst.age", b"payload").to_json())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="segura.backup/2"), "format 'segura.backup/2'"),
        (lambda d: d.pop("format"), "format None"),
        (lambda d: d.update(size="7"), "'size' must be a whole number"),
        (lambda d: d.update(size=True), "'size' must be a whole number"),
        (lambda d: d.update(size=-1), "must not be negative"),
        (lambda d: d.pop("sha256"), "'sha256' is missing"),
        (lambda d: d.update(sha256="ABC"), "sha256"),
        (lambda d: d.update(id="1a2b3c4e"), "does not match"),
        (lambda d: d.update(created="2026-11-27T10:15:01Z"), "does not match"),
        (lambda d: d.update(created="2026-11-27 10:15:00"), "UTC time"),
        (lambda d: d["encryption"].update(mode="none"), "does not match object name"),
        (lambda d: d["encryption"].update(mode="rot13"), "encryption.mode"),
        (lambda d: d["db"].update(chunks=None), "db.'chunks'"),
        (lambda d: d.update(components=["db", 3]), "components"),
        (lambda d: d.update(appliance="../x"), "appliance name"),
        (lambda d: d["versions"].pop("tool"), "versions.'tool'"),
        (lambda d: d.update(duration="1s"), "duration"),
        (lambda d: d["encryption"].update(prelude_sha256="ABC"), "encryption.'prelude_sha256'"),
        (lambda d: d["encryption"].update(prelude_sha256=None), "encryption.'prelude_sha256'"),
    ],
)
def test_sidecar_validation_names_the_file(change, message):
    doc = _sidecar_doc()
    change(doc)
    with pytest.raises(IntegrityError) as caught:
        Sidecar.from_json(json.dumps(doc).encode(), "smb://nas/backups/pam1/snapshots/s.json")
    assert "smb://nas/backups/pam1/snapshots/s.json" in str(caught.value)
    assert message in str(caught.value)


def test_sidecar_keeps_the_age_prelude_of_an_encrypted_object_only():
    pinned = make_sidecar("20261127T101500Z-1a2b3c4d.tar.zst.age", b"payload",
                          encryption={"mode": "x25519", "recipients": [RECIPIENT], "prelude_sha256": "c" * 64})
    doc = json.loads(pinned.to_json())
    assert doc["encryption"]["prelude_sha256"] == "c" * 64
    assert Sidecar.from_json(pinned.to_json(), "s.json").prelude_sha256 == "c" * 64
    assert make_sidecar("20261127T101500Z-1a2b3c4d.tar.zst.age", b"payload").prelude_sha256 is None  # before 0.3
    plain = json.loads(make_sidecar("20261127T101500Z-1a2b3c4d.tar.zst", b"payload").to_json())
    plain["encryption"]["prelude_sha256"] = "c" * 64
    with pytest.raises(IntegrityError, match="prelude_sha256 is set for an unencrypted object"):
        Sidecar.from_json(json.dumps(plain).encode(), "s.json")


def test_sidecar_without_db_and_unknown_extra_fields():
    doc = _sidecar_doc()
    doc["db"] = None
    doc["later_field"] = {"ignored": True}
    assert Sidecar.from_json(json.dumps(doc).encode(), "s.json").db is None


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b"\xff\xfe"])
def test_sidecar_garbage(data):
    with pytest.raises(IntegrityError, match="s.json"):
        Sidecar.from_json(data, "s.json")


def test_to_json_refuses_invalid_sidecar():
    with pytest.raises(IntegrityError):
        make_sidecar("20261127T101500Z-1a2b3c4d.tar.zst.age", b"x", sha256="nope").to_json()


# -- atomic upload -------------------------------------------------------------------------------


def test_atomic_upload_publishes_with_size_and_sha256(target, tmp_path):
    payload = os.urandom(3 * 1024 * 1024 + 5)
    final = "pam1/snapshots/" + object_name(CREATED, "1a2b3c4d", True)
    with AtomicUpload(target, final) as upload:
        upload.write(payload[:1000])
        upload.write(memoryview(payload)[1000:])
        assert (tmp_path / (final + ".partial")).exists() and not (tmp_path / final).exists()
    assert upload.size == len(payload)
    assert upload.sha256 == hashlib.sha256(payload).hexdigest()
    assert (tmp_path / final).read_bytes() == payload
    assert not (tmp_path / (final + ".partial")).exists()


def test_atomic_upload_failure_removes_partial_and_keeps_the_error(target, tmp_path):
    final = "pam1/snapshots/" + object_name(CREATED, "1a2b3c4d", True)
    with pytest.raises(RuntimeError, match="dump failed"):
        with AtomicUpload(target, final) as upload:
            upload.write(b"half a snapshot")
            raise RuntimeError("dump failed")
    assert sorted(os.listdir(tmp_path / "pam1" / "snapshots")) == []
    assert upload.size is None and upload.sha256 is None


def test_atomic_upload_cleanup_failure_never_masks_the_error(target, tmp_path):
    final = "pam1/snapshots/" + object_name(CREATED, "1a2b3c4d", True)
    with pytest.raises(RuntimeError, match="original"):
        with AtomicUpload(target, final) as upload:
            upload.write(b"x")
            os.remove(tmp_path / (final + ".partial"))  # so that removing it fails
            raise RuntimeError("original")


def test_atomic_upload_never_overwrites(target, tmp_path):
    name = put_snapshot(target, CREATED, b"the good one", snap_id="1a2b3c4d")[0]
    final = "pam1/snapshots/" + name
    with pytest.raises(TargetExists, match="never overwritten"):
        with AtomicUpload(target, final) as upload:
            upload.write(b"evil twin")
    assert (tmp_path / final).read_bytes() == b"the good one"
    assert not (tmp_path / (final + ".partial")).exists()


def test_atomic_upload_loses_the_race_to_a_final_created_meanwhile(target, tmp_path):
    final = "pam1/snapshots/" + object_name(CREATED, "1a2b3c4d", True)
    with pytest.raises(TargetExists):
        with AtomicUpload(target, final) as upload:
            upload.write(b"mine")
            (tmp_path / final).write_bytes(b"theirs")
    assert (tmp_path / final).read_bytes() == b"theirs"
    assert not (tmp_path / (final + ".partial")).exists()


def test_atomic_upload_detects_size_mismatch(target, tmp_path):
    final = "pam1/snapshots/" + object_name(CREATED, "1a2b3c4d", True)
    with pytest.raises(IntegrityError, match="holds 9 bytes but 4 were written"):
        with AtomicUpload(target, final) as upload:
            upload.write(b"four")
            with open(tmp_path / (final + ".partial"), "ab") as intruder:
                intruder.write(b"extra")
    assert not (tmp_path / final).exists() and not (tmp_path / (final + ".partial")).exists()


def test_atomic_upload_refuses_a_partial_of_another_writer(target, tmp_path):
    final = "pam1/snapshots/" + object_name(CREATED, "1a2b3c4d", True)
    target.write_bytes(final + ".partial", b"someone else's upload")
    with pytest.raises(TargetExists):
        with AtomicUpload(target, final):
            pass
    assert (tmp_path / (final + ".partial")).read_bytes() == b"someone else's upload"


# -- sidecar publishing --------------------------------------------------------------------------


def test_publish_sidecar_checks_object_and_never_overwrites(target, tmp_path):
    name = object_name(CREATED, "1a2b3c4d", True)
    sidecar = make_sidecar(name, b"payload")
    with pytest.raises(IntegrityError, match="does not exist"):
        publish_sidecar(target, sidecar)
    target.write_bytes("pam1/snapshots/" + name, b"payload!")
    with pytest.raises(IntegrityError, match="holds 8 bytes, the sidecar says 7"):
        publish_sidecar(target, sidecar)
    target.write_bytes("pam1/snapshots/" + name, b"payload")
    assert publish_sidecar(target, sidecar) == "pam1/snapshots/20261127T101500Z-1a2b3c4d.json"
    with pytest.raises(TargetExists):
        publish_sidecar(target, make_sidecar(name, b"payload", duration=99.0))
    stored = Sidecar.from_json((tmp_path / "pam1/snapshots/20261127T101500Z-1a2b3c4d.json").read_bytes(), "s")
    assert stored.duration == 1.5
    assert sorted(os.listdir(tmp_path / "pam1" / "snapshots")) == [name.replace(".tar.zst.age", ".json"), name]


# -- listing -------------------------------------------------------------------------------------


def test_listing_statuses_order_and_calls(tmp_path):
    target = CountingTarget(str(tmp_path))
    directory = tmp_path / "pam1" / "snapshots"
    old_name = put_snapshot(target, CREATED - timedelta(days=2), b"old", snap_id="00000001")[0]
    new_name, sidecar = put_snapshot(target, CREATED, b"newest", snap_id="00000005", encrypted=False)
    # a partial upload, an object without sidecar, an orphaned sidecar, two damaged snapshots
    target.write_bytes("pam1/snapshots/" + object_name(CREATED - timedelta(hours=1), "00000004", True) + ".partial", b"par")
    target.write_bytes("pam1/snapshots/" + object_name(CREATED - timedelta(hours=2), "00000003", True), b"unsealed")
    orphan_name = put_snapshot(target, CREATED - timedelta(hours=3), b"orphan", snap_id="00000002")[0]
    os.remove(directory / orphan_name)
    garbled_name = put_snapshot(target, CREATED - timedelta(days=3), b"garbled", snap_id="0000000a")[0]
    (directory / garbled_name.replace(".tar.zst.age", ".json")).write_bytes(b"{not json")
    grown_name = put_snapshot(target, CREATED - timedelta(days=4), b"grown", snap_id="0000000b")[0]
    with open(directory / grown_name, "ab") as handle:
        handle.write(b"!")
    # noise that is not ours
    (directory / "README.txt").write_text("hello")
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "not an appliance").mkdir()
    put_snapshot(target, CREATED, b"other appliance", appliance="pam2", snap_id="000000ff")
    record_verification(target, sidecar, {"mode": "quick", "ok": True})

    target.calls.clear()
    listing = list_snapshots(target)
    assert listing.complete and listing.errors == []
    assert listing.appliances == ["pam1", "pam2"]
    assert sorted(target.calls) == [("listdir", ""), ("listdir", "pam1/snapshots"), ("listdir", "pam2/snapshots")]

    records = listing.for_appliance("pam1")
    assert [(r.id, r.status) for r in records] == [
        ("00000005", "complete"),
        ("00000004", "partial"),
        ("00000003", "partial"),
        ("00000002", "orphaned"),
        ("00000001", "complete"),
        ("0000000a", "damaged"),
        ("0000000b", "damaged"),
    ]
    newest = records[0]
    assert newest.object == new_name and newest.encrypted is False and newest.size == len(b"newest")
    assert newest.sha256 == hashlib.sha256(b"newest").hexdigest()
    assert newest.verification["ok"] is True and newest.verification["id"] == "00000005"
    assert records[1].object.endswith(".tar.zst.age") and records[1].size == 3
    assert "does not exist" in records[3].problem
    assert "not JSON" in records[5].problem
    assert "6 bytes on the target, the sidecar says 5" in records[6].problem
    assert records[4].object == old_name and records[4].ref().complete and not records[1].ref().complete
    document = json.loads(json.dumps(listing.to_dict()))
    assert [s["id"] for s in document["snapshots"][:2]] == ["000000ff", "00000005"]  # same time: by id
    pam1 = [s for s in document["snapshots"] if s["appliance"] == "pam1"][0]
    assert pam1["db"]["chunks"] == 1 and pam1["status"] == "complete" and pam1["created"] == "2026-11-27T10:15:00Z"


def test_listing_one_appliance_lists_only_its_directory(tmp_path):
    target = CountingTarget(str(tmp_path))
    put_snapshot(target, CREATED, appliance="pam1")
    put_snapshot(target, CREATED, appliance="pam2")
    target.calls.clear()
    listing = list_snapshots(target, "pam2")
    assert target.calls == [("listdir", "pam2/snapshots")]
    assert [r.appliance for r in listing.snapshots] == ["pam2"]
    assert list_snapshots(target, "pam3").snapshots == []  # nothing there yet is not an error
    with pytest.raises(ConfigError):
        list_snapshots(target, "../pam1")


def test_listing_is_incomplete_when_a_directory_cannot_be_listed(target, tmp_path):
    put_snapshot(target, CREATED, appliance="pam1")
    (tmp_path / "pam2").mkdir()
    (tmp_path / "pam2" / "snapshots").write_text("a file where a directory should be")
    listing = list_snapshots(target)
    assert not listing.complete
    assert "pam2/snapshots" in listing.errors[0]
    assert [r.appliance for r in listing.snapshots] == ["pam1"]
    with pytest.raises(TargetError, match="incomplete"):
        listing.require_complete()
    list_snapshots(target, "pam1").require_complete()


def test_record_verification_replaces_previous(target, tmp_path):
    name, sidecar = put_snapshot(target, CREATED, snap_id="1a2b3c4d")
    record_verification(target, sidecar, {"mode": "quick", "ok": False, "error": "sha256 mismatch"})
    record = list_snapshots(target, "pam1").snapshots[0]
    assert record.verification["ok"] is False
    record_verification(target, record, {"mode": "deep", "ok": True, "recorded": "2026-11-28T00:00:00Z"})
    again = list_snapshots(target, "pam1").snapshots[0]
    assert again.verification == {"mode": "deep", "ok": True, "recorded": "2026-11-28T00:00:00Z",
                                  "id": "1a2b3c4d", "object": name}
    assert sorted(os.listdir(tmp_path / "pam1" / "snapshots")) == sorted(
        [name, "20261127T101500Z-1a2b3c4d.json", "20261127T101500Z-1a2b3c4d.verify.json"]
    )
    (tmp_path / "pam1/snapshots/20261127T101500Z-1a2b3c4d.verify.json").write_bytes(b"garbage")
    assert list_snapshots(target, "pam1").snapshots[0].verification["status"] == "unreadable"


def test_remove_snapshot_removes_sidecar_first_and_everything(target, tmp_path):
    name, sidecar = put_snapshot(target, CREATED, snap_id="1a2b3c4d")
    record_verification(target, sidecar, {"ok": True})
    record = list_snapshots(target, "pam1").snapshots[0]
    removed = remove_snapshot(target, record)
    assert removed[0].endswith("20261127T101500Z-1a2b3c4d.json")
    assert set(removed) == set(record.files) and len(removed) == 3
    assert os.listdir(tmp_path / "pam1" / "snapshots") == []
    assert remove_snapshot(target, record) == []  # already gone: nothing to do, no error


def test_stale_partials_from_a_real_listing(target, tmp_path):
    now = datetime.now(UTC)
    old = object_name(now - timedelta(days=2), "00000001", True) + ".partial"
    fresh = object_name(now - timedelta(days=3), "00000002", True) + ".partial"  # created long ago, still written
    target.write_bytes("pam1/snapshots/" + old, b"x")
    target.write_bytes("pam1/snapshots/" + fresh, b"y")
    two_days_ago = (now - timedelta(days=2)).timestamp()
    os.utime(tmp_path / "pam1" / "snapshots" / old, (two_days_ago, two_days_ago))
    put_snapshot(target, now - timedelta(days=5))
    stale = stale_partials(list_snapshots(target), timedelta(hours=24), now)
    assert [r.id for r in stale] == ["00000001"]
    assert remove_snapshot(target, stale[0]) == ["pam1/snapshots/" + old]


# -- session lists, listing by presence, retried reads, verified removals --------------------------


def test_sessions_list_round_trip_and_listing(target, tmp_path):
    name, sidecar = put_snapshot(target, CREATED, snap_id="1a2b3c4d")
    sessions = [{"path": "pam1/sessions/2026/1127/a.arz", "size": 3, "sha256": "b" * 64}]
    relpath = catalog.write_sessions_list(target, "pam1", name, sessions)
    assert relpath == "pam1/snapshots/20261127T101500Z-1a2b3c4d.sessions.json"
    with pytest.raises(TargetExists):
        catalog.write_sessions_list(target, "pam1", name, sessions)  # never replaced
    record = list_snapshots(target).snapshots[0]
    assert record.status == "complete" and record.has_sessions_list and relpath in record.files
    assert catalog.read_sessions_list(target, record) == sessions
    removed = remove_snapshot(target, record)
    assert removed[0].endswith("1a2b3c4d.json") and relpath in removed  # sidecar first, list removed too


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(id="00000000"), "describes"),
    (lambda d: d["sessions"].append({"path": "pam2/sessions/x", "size": 1, "sha256": "c" * 64}), "not below"),
    (lambda d: d["sessions"].append({"path": "pam1/sessions/../../x", "size": 1, "sha256": "c" * 64}), "'..'"),
    (lambda d: d["sessions"].append({"path": "pam1/sessions/x", "size": -1, "sha256": "c" * 64}), "negative"),
    (lambda d: d.update(format="other"), "not a segura.backup/1"),
])
def test_sessions_list_validation(target, tmp_path, change, message):
    name, dummy = put_snapshot(target, CREATED, snap_id="1a2b3c4d")
    catalog.write_sessions_list(target, "pam1", name, [])
    path = tmp_path / "pam1/snapshots/20261127T101500Z-1a2b3c4d.sessions.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match=message):
        catalog.read_sessions_list(target, list_snapshots(target).snapshots[0])


def test_listing_by_presence_reads_no_file_and_load_sidecar_checks(tmp_path):
    target = CountingTarget(str(tmp_path))
    good, dummy = put_snapshot(target, CREATED, b"good", snap_id="00000001")
    grown, dummy = put_snapshot(target, CREATED - timedelta(days=1), b"grown", snap_id="00000002")
    with open(tmp_path / "pam1/snapshots" / grown, "ab") as handle:
        handle.write(b"!")
    reads = []
    original = target.open_read
    target.open_read = lambda relpath: reads.append(relpath) or original(relpath)
    listing = list_snapshots(target, read_sidecars=False)
    assert reads == [] and not listing.sidecars_read
    assert [(r.id, r.status, r.checked, r.sidecar) for r in listing.snapshots] == [
        ("00000001", "complete", False, None), ("00000002", "complete", False, None)]
    catalog.load_sidecar(target, listing.snapshots[1])
    assert listing.snapshots[1].status == "damaged" and listing.snapshots[1].checked
    assert catalog.load_sidecar(target, listing.snapshots[0]).sidecar.sha256 == hashlib.sha256(b"good").hexdigest()
    assert len(reads) == 2


class FlakyTarget(PathTarget):
    """A real PathTarget whose first ``failures`` removes/reads fail after (or instead of) acting,
    as nfs-rs reports some NFSv4.1 operations as 'uncertain'."""

    def __init__(self, root, failures, act_first):
        super().__init__(root)
        self.failures = failures
        self.act_first = act_first

    def _maybe_fail(self):
        if self.failures:
            self.failures -= 1
            raise TargetError("Uncertain NFS operation ReplaySensitive")

    def remove(self, relpath):
        if self.act_first:
            super().remove(relpath)
            self._maybe_fail()
        else:
            self._maybe_fail()
            super().remove(relpath)

    def open_read(self, relpath):
        self._maybe_fail()
        return super().open_read(relpath)


@pytest.mark.parametrize("act_first", [True, False])
def test_remove_file_resolves_uncertain_removes(tmp_path, act_first):
    target = FlakyTarget(str(tmp_path), failures=1, act_first=act_first)
    target.write_bytes("a/file", b"x")
    assert catalog.remove_file(target, "a/file") is True
    assert not (tmp_path / "a/file").exists()
    assert catalog.remove_file(target, "a/file") is False  # already gone
    target.write_bytes("a/file", b"x")
    target.failures, target.act_first = 5, False
    with pytest.raises(TargetError):
        catalog.remove_file(target, "a/file")
    assert (tmp_path / "a/file").exists()


def test_small_reads_are_retried_but_not_forever(tmp_path):
    target = FlakyTarget(str(tmp_path), failures=2, act_first=False)
    target.write_bytes("f", b"data")
    assert catalog.read_small(target, "f") == b"data"
    target.failures = 3
    with pytest.raises(TargetError):
        catalog.read_small(target, "f")
    with pytest.raises(TargetNotFound):
        catalog.read_small(target, "missing")


def test_appliance_summaries_and_age(target):
    put_snapshot(target, CREATED - timedelta(days=2), snap_id="00000001")
    put_snapshot(target, CREATED - timedelta(days=1), snap_id="00000002")
    target.write_bytes("pam1/snapshots/" + object_name(CREATED, "00000003", True) + ".partial", b"x")
    now = CREATED + timedelta(hours=1)
    summary = catalog.appliance_summaries(list_snapshots(target), now)[0]
    assert (summary["name"], summary["snapshots"], summary["complete"], summary["partial"]) == ("pam1", 3, 2, 1)
    assert summary["latest"]["id"] == "00000003" and summary["latest_complete"]["id"] == "00000002"
    assert summary["latest_complete"]["age_seconds"] == 25 * 3600
