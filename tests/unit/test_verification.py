"""Verification engine (quick and deep) against real snapshot objects on a real directory target.

Snapshots are built the way the snapshot engine builds them (archive.ArchiveWriter into a
catalog.AtomicUpload, session list, sidecar last), only with the database dump and files given
as bytes, so no MariaDB is needed here. The damage is done to the files behind the target.
"""

import hashlib
import io
import json
import os
import random
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import age, catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.writer import ArchiveWriter
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import SigningKey
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget
from ansible_collections.segura.backup.plugins.module_utils._engine.verification import (
    select_snapshots,
    summary,
    verify_snapshot,
    verify_snapshots,
)
from tests.secret_checks import assert_no_secret

UTC = timezone.utc
CREATED = datetime(2026, 11, 27, 5, 0, 0, tzinfo=UTC)
SECRET, RECIPIENT = age.generate_identity()
_DUMP = os.urandom(150 * 1024).hex().encode()  # ~300 KB that compresses to ~150 KB: several age chunks
#: Made-up snapshots are signed with this key, as an appliance would (tests/unit/test_signing.py tries the rest).
SIGNER = SigningKey.generate()


def signers_for(*appliances, key=SIGNER):
    """An allowed-signers text pinning ``key`` for each appliance."""
    return "".join('%s namespaces="segura-backup" %s\n' % (name, key.public_line) for name in appliances)


def make_snapshot(target, created, appliance="pam1", encryption=None, sessions=None, db=b"", snap_id=None,
                  components=None):
    """Publish one complete snapshot like snapshot.take_snapshot does; returns its Sidecar.

    ``sessions``: {path below <appliance>/sessions/: bytes}; files already on the target are reused.
    """
    encryption = encryption or Encryption.recipients_of([RECIPIENT])
    snap_id = snap_id or catalog.new_snapshot_id()
    components = components or (["database", "config", "secrets"] + (["sessions"] if sessions is not None else []))
    referenced = []
    for relpath, data in sorted((sessions or {}).items()):
        path = "%s/%s" % (catalog.sessions_dir(appliance), relpath)
        if not target.exists(path):
            target.write_bytes(path, data)
        referenced.append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    name = catalog.object_name(created, snap_id, encryption.encrypted)
    with catalog.AtomicUpload(target, catalog.object_path(appliance, name)) as upload:
        writer = ArchiveWriter(upload, encryption, chunk_size=64 * 1024)
        writer.add_json("snapshot.json", {"format": catalog.FORMAT, "id": snap_id, "appliance": appliance,
                                          "created": catalog.format_utc(created), "components": components})
        db_info = writer.add_stream("db/dump.sql", io.BytesIO(db or _DUMP)).as_dict()
        result = writer.finish({"components": components, "sessions": referenced, "facts": {}})
    sidecar = catalog.Sidecar(
        id=snap_id, appliance=appliance, created=created, object=name, size=upload.size, sha256=upload.sha256,
        components=components, counts={"files": 0, "dirs": 0, "symlinks": 0, "db_chunks": db_info["chunks"],
                                       "members": result.members},
        bytes_in=result.bytes_in, versions={"appliance": "3.32.0.12", "tool": "0.1.0"},
        encryption={"mode": "x25519" if encryption.encrypted else "none",
                    "recipients": encryption.recipient_strings()},
        db=db_info, sessions={"count": len(referenced), "bytes": sum(s["size"] for s in referenced)}, duration=0.1,
    )
    if sessions is not None:
        catalog.write_sessions_list(target, appliance, name, referenced)
    catalog.publish_sidecar(target, sidecar, SIGNER)
    return sidecar


@pytest.fixture
def target(tmp_path):
    with PathTarget(str(tmp_path)) as opened:
        yield opened


def snapdir(tmp_path, appliance="pam1"):
    return tmp_path / appliance / "snapshots"


def only_record(target, appliance="pam1"):
    listing = catalog.list_snapshots(target, appliance)
    assert len(listing.snapshots) == 1
    return listing.snapshots[0]


def deep(target, record, **kwargs):
    kwargs.setdefault("decryption", Decryption.identities_of([SECRET]))
    return verify_snapshot(target, record, "deep", **kwargs)


# -- good snapshots ------------------------------------------------------------------------------


def test_good_snapshot_passes_quick_and_deep(target):
    sidecar = make_snapshot(target, CREATED, sessions={"2026/1127/a.arz": b"A" * 1000, "2026/1127/b.arz": b"B"})
    record = only_record(target)
    quick = verify_snapshot(target, record, "quick")
    assert quick.ok, quick.problems
    assert (quick.size, quick.sha256) == (sidecar.size, sidecar.sha256)
    full = deep(target, record, check_session_hashes=True)
    assert full.ok, full.problems
    assert full.checks["archive"]["ok"] and full.checks["sessions"] == {
        "referenced": 2, "missing": 0, "wrong_size": 0, "hashed": 2, "wrong_sha256": 0, "symlinks": 0, "hardlinks": 0}
    assert full.checks["object"]["ok"]


def test_unencrypted_snapshot_deep_without_decryption(target):
    make_snapshot(target, CREATED, encryption=Encryption.none())
    result = verify_snapshot(target, only_record(target), "deep")
    assert result.ok, result.problems


def test_passphrase_snapshot_deep(target):
    make_snapshot(target, CREATED, encryption=Encryption.passphrase("correct horse", work_factor=10))
    good = verify_snapshot(target, only_record(target), "deep", decryption=Decryption.passphrase("correct horse"))
    assert good.ok, good.problems
    bad = verify_snapshot(target, only_record(target), "deep", decryption=Decryption.passphrase("wrong horse"))
    assert not bad.ok and "wrong passphrase" in bad.problems[0]
    assert "correct horse" not in json.dumps(bad.to_dict()) and "wrong horse" not in json.dumps(bad.to_dict())


# -- damage, each caught -------------------------------------------------------------------------


def _flip_byte(path, offset_from_end=100):
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught_by_quick_and_deep(target, tmp_path):
    sidecar = make_snapshot(target, CREATED)
    _flip_byte(snapdir(tmp_path) / sidecar.object)
    record = only_record(target)
    assert record.status == "complete"  # same size: the listing cannot tell
    quick = verify_snapshot(target, record, "quick")
    assert not quick.ok and "sha256" in quick.problems[0]
    full = deep(target, record)
    assert not full.ok
    assert any("corrupt" in p or "tamper" in p or "sha256" in p for p in full.problems), full.problems


def test_truncated_object_is_caught(target, tmp_path):
    sidecar = make_snapshot(target, CREATED)
    path = snapdir(tmp_path) / sidecar.object
    path.write_bytes(path.read_bytes()[:-5000])
    record = only_record(target)
    assert record.status == "damaged"
    for result in (verify_snapshot(target, record, "quick"), deep(target, record)):
        assert not result.ok
        assert any("sidecar says %d" % sidecar.size in p for p in result.problems), result.problems
    assert any("truncated" in p or "corrupt" in p for p in deep(target, record).problems)


def test_missing_session_file_is_caught_by_deep_only(target, tmp_path):
    make_snapshot(target, CREATED, sessions={"2026/1127/a.arz": b"A" * 10, "2026/1127/b.arz": b"B" * 20})
    os.remove(tmp_path / "pam1/sessions/2026/1127/b.arz")
    record = only_record(target)
    assert verify_snapshot(target, record, "quick").ok  # quick looks at the object only
    full = deep(target, record)
    assert not full.ok
    assert full.problems == ["1 referenced session file(s) missing: pam1/sessions/2026/1127/b.arz"]
    assert full.checks["sessions"]["missing"] == 1


def test_session_file_with_other_content_needs_hashes(target, tmp_path):
    make_snapshot(target, CREATED, sessions={"2026/1127/a.arz": b"A" * 10})
    (tmp_path / "pam1/sessions/2026/1127/a.arz").write_bytes(b"X" * 10)
    record = only_record(target)
    assert deep(target, record).ok  # same size: only a hash can tell
    hashed = deep(target, record, check_session_hashes=True)
    assert hashed.problems == ["1 session file(s) with the wrong sha256: pam1/sessions/2026/1127/a.arz"]
    (tmp_path / "pam1/sessions/2026/1127/a.arz").write_bytes(b"X" * 11)
    assert "wrong size" in deep(target, record).problems[0]


def test_wrong_key_is_reported_not_raised(target):
    make_snapshot(target, CREATED)
    other_secret, dummy = age.generate_identity()
    result = deep(target, only_record(target), decryption=Decryption.identities_of([other_secret]))
    assert not result.ok and result.problems == [
        "the object cannot be opened: no identity matches this archive's recipients"]
    assert_no_secret(json.dumps(result.to_dict()), other_secret, "the verify result")
    missing_key = verify_snapshot(target, only_record(target), "deep")
    assert "give identities or a passphrase" in missing_key.problems[0]


@pytest.mark.parametrize("field, value, expected", [
    ("sha256", "0" * 64, "sha256 is"),  # quick and deep both see it
    ("bytes_in", 12345, "content bytes"),  # only deep can see it
    ("db", {"chunks": 9, "bytes": 1, "sha256": "1" * 64}, "database dump"),
])
def test_tampered_sidecar_is_caught(target, tmp_path, field, value, expected):
    sidecar = make_snapshot(target, CREATED)
    path = snapdir(tmp_path) / catalog.sidecar_name(sidecar.object)
    doc = json.loads(path.read_text())
    doc[field] = value
    path.write_text(json.dumps(doc))
    record = only_record(target)
    assert record.status == "complete"  # a valid sidecar of the right size: only reading tells
    full = deep(target, record)
    assert not full.ok and any(expected in p for p in full.problems), full.problems
    assert verify_snapshot(target, record, "quick").ok == (field != "sha256")


def test_sessions_list_must_equal_the_manifest(target, tmp_path):
    sidecar = make_snapshot(target, CREATED, sessions={"2026/1127/a.arz": b"A" * 10, "2026/1127/b.arz": b"B"})
    path = snapdir(tmp_path) / catalog.sessions_list_name(sidecar.object)
    doc = json.loads(path.read_text())
    doc["sessions"] = doc["sessions"][:1]  # prune would now think b.arz unreferenced
    path.write_text(json.dumps(doc))
    full = deep(target, only_record(target))
    assert full.problems == ["%s differs from the manifest's session list (1 entries vs 2)"
                             % catalog.sessions_list_name(sidecar.object)]
    path.unlink()
    assert "is missing (prune relies on it)" in deep(target, only_record(target)).problems[0]


def test_partial_and_orphaned_snapshots_fail_without_reading(target, tmp_path):
    sidecar = make_snapshot(target, CREATED)
    os.remove(snapdir(tmp_path) / sidecar.object)
    orphan = only_record(target)
    assert orphan.status == "orphaned"
    assert "does not exist" in verify_snapshot(target, orphan, "quick").problems[0]
    target.write_bytes("pam1/snapshots/" + catalog.object_name(CREATED, "0000000f", True) + ".partial", b"x")
    partial = catalog.list_snapshots(target).find("0000000f")[0]
    assert "not complete" in verify_snapshot(target, partial, "deep").problems[0]


def test_listing_by_presence_is_checked_before_verifying(target, tmp_path):
    sidecar = make_snapshot(target, CREATED)
    path = snapdir(tmp_path) / catalog.sidecar_name(sidecar.object)
    path.write_text("{broken")
    record = catalog.list_snapshots(target, read_sidecars=False).snapshots[0]
    assert record.status == "complete" and not record.checked
    result = verify_snapshot(target, record, "quick")
    assert record.status == "damaged" and "not JSON" in result.problems[0]


# -- selection, recording, a run ----------------------------------------------------------------


def _history(target):
    ids = {}
    for appliance in ("pam1", "pam2"):
        for days in range(4):
            sidecar = make_snapshot(target, CREATED - timedelta(days=days), appliance=appliance)
            ids[(appliance, days)] = sidecar.id
    return ids


def test_select_latest_all_ids_sample(target, tmp_path):
    ids = _history(target)
    listing = catalog.list_snapshots(target)
    latest, missing = select_snapshots(listing, "latest")
    assert sorted(r.id for r in latest) == sorted([ids[("pam1", 0)], ids[("pam2", 0)]]) and missing == []
    assert len(select_snapshots(listing, "all")[0]) == 8
    chosen, missing = select_snapshots(listing, "ids", ids=[ids[("pam2", 3)], "deadbeef"])
    assert [r.id for r in chosen] == [ids[("pam2", 3)]] and missing == ["deadbeef"]
    with pytest.raises(ConfigError):
        select_snapshots(listing, "ids")
    with pytest.raises(ConfigError):
        select_snapshots(listing, "newest")
    with pytest.raises(ConfigError):
        select_snapshots(listing, "sample", sample_size=0)


def test_latest_is_the_newest_published_even_when_damaged(target, tmp_path):
    make_snapshot(target, CREATED - timedelta(days=1))
    newest = make_snapshot(target, CREATED)
    path = snapdir(tmp_path) / newest.object
    path.write_bytes(path.read_bytes()[:-10])
    chosen = select_snapshots(catalog.list_snapshots(target), "latest")[0]
    assert [r.id for r in chosen] == [newest.id]  # an older good one must not hide it


def test_sample_rotates_through_history_least_recently_verified_first(target):
    _history(target)
    seen = set()
    rng = random.Random(7)
    for night in range(4):
        listing = catalog.list_snapshots(target)
        chosen, dummy = select_snapshots(listing, "sample", sample_size=1, rng=rng)
        assert len(chosen) == 2 and {r.appliance for r in chosen} == {"pam1", "pam2"}
        for record in chosen:
            catalog.record_verification(target, record, {"mode": "quick", "ok": True,
                                                         "recorded": "2026-12-0%dT00:00:00Z" % (night + 1)})
        seen.update(r.id for r in chosen)
    assert len(seen) == 8  # four nights, one per appliance each: every snapshot once


def test_verify_snapshots_records_results_and_summary(target, tmp_path):
    good = make_snapshot(target, CREATED - timedelta(days=1))
    bad = make_snapshot(target, CREATED)
    _flip_byte(snapdir(tmp_path) / bad.object)
    listing = catalog.list_snapshots(target)
    results = verify_snapshots(target, listing.snapshots, "quick")
    assert [(r.id, r.ok, r.recorded) for r in results] == [(bad.id, False, True), (good.id, True, True)]
    after = {r.id: r.verification for r in catalog.list_snapshots(target).snapshots}
    assert after[good.id]["ok"] is True and after[good.id]["mode"] == "quick"
    assert after[bad.id]["ok"] is False and "sha256" in after[bad.id]["problems"][0]
    assert summary(results).startswith("1 of 2 snapshot(s) failed verification: pam1/%s: " % bad.id)
    assert summary(results[1:]) == "1 snapshot(s) verified"


def test_verify_snapshots_without_recording_writes_nothing(target, tmp_path):
    make_snapshot(target, CREATED)
    before = sorted(os.listdir(snapdir(tmp_path)))
    results = verify_snapshots(target, catalog.list_snapshots(target).snapshots, "quick", record_results=False)
    assert results[0].ok and not results[0].recorded
    assert sorted(os.listdir(snapdir(tmp_path))) == before


def test_session_listing_is_shared_across_snapshots(target, tmp_path):
    from tests.unit.test_catalog import CountingTarget

    counting = CountingTarget(str(tmp_path))
    shared = {"2026/1127/a.arz": b"A", "2026/1128/b.arz": b"B"}
    make_snapshot(counting, CREATED - timedelta(days=1), sessions=shared)
    make_snapshot(counting, CREATED, sessions=shared)
    listing = catalog.list_snapshots(counting)
    counting.calls.clear()
    results = verify_snapshots(counting, listing.snapshots, "deep", decryption=Decryption.identities_of([SECRET]))
    assert all(r.ok for r in results), [r.problems for r in results]
    # each day folder once for both snapshots; the snapshots folder once, to refresh the catalog index
    assert sorted(c for c in counting.calls if c[0] == "listdir") == [
        ("listdir", "pam1/sessions/2026/1127"), ("listdir", "pam1/sessions/2026/1128"), ("listdir", "pam1/snapshots")]
