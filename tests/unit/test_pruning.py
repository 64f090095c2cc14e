"""Pruning engine against a real directory target: retention per appliance, stale partials,
unreferenced session recordings, the lock, refusals, and how little it reads."""

import hashlib
import os
import random
import socket
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, retention
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import TargetError
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import ApplianceLock
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import (
    list_session_files,
    plan_appliance,
    prune,
    referenced_sessions,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget
from tests.unit.test_catalog import make_sidecar

UTC = timezone.utc
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


class ReadCountingTarget(PathTarget):
    """A real PathTarget that counts listings and file reads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.listed = []
        self.read = []

    def listdir(self, relpath):
        self.listed.append(relpath)
        return super().listdir(relpath)

    def open_read(self, relpath):
        self.read.append(relpath)
        return super().open_read(relpath)


@pytest.fixture
def target(tmp_path):
    with ReadCountingTarget(str(tmp_path)) as opened:
        yield opened


def put(target, created, appliance="pam1", sessions=None, snap_id=None, payload=b"object bytes"):
    """A complete snapshot with a tiny fake object (prune never opens objects).

    ``sessions``: names of recordings below sessions/2026/<MMDD of created>/ it references; they
    are created on the target when missing. None means the snapshot did not take sessions.
    """
    name = catalog.object_name(created, snap_id or catalog.new_snapshot_id(), True)
    with catalog.AtomicUpload(target, catalog.object_path(appliance, name)) as upload:
        upload.write(payload)
    components = ["database", "config", "secrets"] + (["sessions"] if sessions is not None else [])
    referenced = []
    for session in sessions or []:
        path = "%s/%s" % (catalog.sessions_dir(appliance), session)
        if not target.exists(path):
            target.write_bytes(path, session.encode())
        referenced.append({"path": path, "size": len(session.encode()),
                           "sha256": hashlib.sha256(session.encode()).hexdigest()})
    if sessions is not None:
        catalog.write_sessions_list(target, appliance, name, referenced)
    sidecar = make_sidecar(name, payload, appliance, created=created, components=components,
                           sessions={"count": len(referenced), "bytes": sum(r["size"] for r in referenced)})
    catalog.publish_sidecar(target, sidecar)
    return sidecar.id


def snapshot_ids(target, appliance="pam1"):
    return [r.id for r in catalog.list_snapshots(target, appliance).snapshots]


def daily(target, days, appliance="pam1", **kwargs):
    """One snapshot a day at 05:00 for ``days`` days up to NOW; ids newest first."""
    return [put(target, NOW.replace(hour=5) - timedelta(days=day), appliance, **kwargs) for day in range(days)]


def test_policy_per_appliance_removes_exactly_what_retention_drops(target, tmp_path):
    pam1 = daily(target, 10)
    pam2 = daily(target, 3, appliance="pam2")
    policy = retention.Policy(keep_daily=3)
    outcomes = prune(target, policy, now=NOW)
    by_name = {o.appliance: o.to_dict() for o in outcomes}
    assert set(by_name) == {"pam1", "pam2"} and all(o.error is None for o in outcomes)
    assert [k["id"] for k in by_name["pam1"]["kept"]] == pam1[:3]
    assert by_name["pam1"]["kept"][0]["reasons"] == ["newest complete", "daily snapshot"]
    assert [r["id"] for r in by_name["pam1"]["removed"]] == pam1[3:]
    assert by_name["pam2"]["removed"] == [] and by_name["pam2"]["applied"] is False
    assert snapshot_ids(target) == pam1[:3] and snapshot_ids(target, "pam2") == pam2
    assert by_name["pam1"]["bytes_freed"] == sum(r["bytes"] for r in by_name["pam1"]["removed"]) > 0
    assert by_name["pam1"]["files_removed"] == 7 * 2  # object + sidecar each
    assert by_name["pam1"]["before"] == pam1 and by_name["pam1"]["after"] == pam1[:3]
    assert not os.path.exists(tmp_path / "pam1" / "lock")  # released


def test_two_snapshots_of_the_same_second_keep_the_later_one(target):
    # Found by the scheduled job's tests: ordered by whole seconds and then by the random id, keep_last=1
    # could remove the snapshot just taken. Sidecars now keep microseconds.
    earlier = put(target, NOW.replace(microsecond=100000), snap_id="ffffffff")
    later = put(target, NOW.replace(microsecond=900000), snap_id="00000000")
    assert [r.created.microsecond for r in catalog.list_snapshots(target, "pam1").snapshots] == [900000, 100000]
    outcome = prune(target, retention.Policy(keep_last=1), now=NOW + timedelta(seconds=1))[0].to_dict()
    assert [k["id"] for k in outcome["kept"]] == [later]
    assert [r["id"] for r in outcome["removed"]] == [earlier]
    assert snapshot_ids(target) == [later]


def test_dry_run_removes_nothing_and_predicts_the_real_run(target, tmp_path):
    daily(target, 6, sessions=["2026/1101/a.arz"])
    target.write_bytes("pam1/sessions/2026/1101/unreferenced.arz", b"zz")
    before = sorted(os.walk(tmp_path))
    policy = retention.Policy(keep_last=2)
    planned = [o.to_dict() for o in prune(target, policy, now=NOW, dry_run=True)]
    assert sorted(os.walk(tmp_path)) == before
    assert len(planned[0]["removed"]) == 4 and planned[0]["sessions_removed"] == ["pam1/sessions/2026/1101/unreferenced.arz"]
    done = [o.to_dict() for o in prune(target, policy, now=NOW)]
    for key in ("kept", "removed", "sessions_removed", "bytes_freed", "after"):
        assert planned[0][key] == done[0][key], key
    assert done[0]["applied"] is True and planned[0]["applied"] is False


def test_only_kept_sidecars_are_read(target):
    for appliance in ("pam1", "pam2"):
        daily(target, 40, appliance=appliance)
    target.listed.clear()
    target.read.clear()
    outcomes = prune(target, retention.Policy(keep_daily=7, keep_weekly=3), now=NOW, dry_run=True,
                     prune_sessions=False)
    kept = sum(len(o.plan.kept) for o in outcomes)
    assert kept == 2 * 8  # 7 days, and 2 older weeks of which one is within those 7 days
    assert len(target.read) == kept and all(p.endswith(".json") for p in target.read)
    assert sorted(target.listed) == ["", "pam1/snapshots", "pam2/snapshots"]


def test_a_damaged_kept_snapshot_is_replaced_and_left_alone(target, tmp_path):
    ids = daily(target, 5)
    garbled = tmp_path / "pam1" / "snapshots" / ("%s.json" % catalog.list_snapshots(target).snapshots[0].stem)
    garbled.write_text("{not json")  # the newest: complete by presence, damaged when read
    outcome = prune(target, retention.Policy(keep_last=2), now=NOW)[0].to_dict()
    kept = {k["id"]: k for k in outcome["kept"]}
    assert list(kept) == ids[:3]
    assert kept[ids[0]]["status"] == "damaged" and "not JSON" in kept[ids[0]]["problem"]
    assert kept[ids[1]]["reasons"] == ["newest complete", "last snapshot"]
    assert snapshot_ids(target) == ids[:3]


@pytest.mark.parametrize("seed", range(12))
def test_plan_by_presence_equals_plan_from_a_fully_read_listing(tmp_path, seed):
    rng = random.Random(seed)
    with PathTarget(str(tmp_path)) as target:
        for index in range(30):
            put(target, NOW - timedelta(hours=rng.randint(0, 24 * 60)))
        directory = tmp_path / "pam1" / "snapshots"
        sidecars = sorted(p for p in os.listdir(directory) if p.endswith(".json"))
        for name in rng.sample(sidecars, 6):  # damage some sidecars / objects in different ways
            if rng.random() < 0.5:
                (directory / name).write_text("[]")
            else:
                with open(directory / name.replace(".json", ".tar.zst.age"), "ab") as handle:
                    handle.write(b"grown")
        policy = retention.Policy(keep_last=rng.randint(0, 3), keep_daily=rng.randint(0, 5),
                                  keep_weekly=rng.randint(0, 3), keep_within=timedelta(hours=rng.randint(0, 72)))
        if not (policy.keep_last or policy.keep_daily or policy.keep_weekly or policy.keep_within):
            policy = retention.Policy(keep_last=1)
        full = catalog.list_snapshots(target, "pam1")
        status = {r.id: r.status for r in full.snapshots}
        decisions = retention.plan([r.ref() for r in full.snapshots], policy, NOW)
        expected = {d.id for d in decisions if d.keep and status[d.id] == "complete"}
        plan = plan_appliance(target, "pam1", policy, NOW, prune_sessions=False)
        # The same complete snapshots survive; the damaged ones a full listing would leave alone are
        # kept when the policy wants them and removed otherwise (their sidecars are never read).
        assert {k["id"] for k in plan.kept if k["status"] == "complete"} == expected
        assert all(status[k["id"]] == k["status"] for k in plan.kept)
        assert {r.id for r in plan.remove} == set(status) - {k["id"] for k in plan.kept}


def test_stale_partials_go_after_the_grace_period_only(target, tmp_path):
    daily(target, 2)
    directory = tmp_path / "pam1" / "snapshots"
    stale = catalog.object_name(NOW - timedelta(hours=30), "0000000a", True) + ".partial"
    fresh = catalog.object_name(NOW - timedelta(hours=30), "0000000b", True) + ".partial"
    unsealed = catalog.object_name(NOW - timedelta(hours=40), "0000000c", True)  # object, no sidecar
    for name in (stale, fresh, unsealed):
        target.write_bytes("pam1/snapshots/" + name, b"part")
    for name, age in ((stale, 25), (fresh, 23), (unsealed, 48)):
        moment = (NOW - timedelta(hours=age)).timestamp()
        os.utime(directory / name, (moment, moment))
    outcome = prune(target, retention.Policy(keep_last=5), now=NOW)[0].to_dict()
    assert sorted(p["id"] for p in outcome["partials_removed"]) == ["0000000a", "0000000c"]
    assert outcome["removed"] == []
    assert "0000000b" in snapshot_ids(target) and "0000000a" not in snapshot_ids(target)
    fresh_kept = [k for k in outcome["kept"] if k["id"] == "0000000b"][0]
    assert fresh_kept["reasons"] == ["incomplete: not subject to retention"]


def test_unreferenced_sessions_go_and_referenced_stay(target, tmp_path):
    old = put(target, NOW - timedelta(days=3), sessions=["2026/1124/a.arz", "2026/1124/b.arz"])
    mid = put(target, NOW - timedelta(days=2), sessions=["2026/1124/b.arz", "2026/1125/c.arz"])
    new = put(target, NOW - timedelta(days=1), sessions=["2026/1125/c.arz", "2026/1126/d.arz"])
    stale_upload = "pam1/sessions/2026/1126/e.arz.partial"
    target.write_bytes(stale_upload, b"half")
    moment = (NOW - timedelta(days=2)).timestamp()
    os.utime(tmp_path / stale_upload, (moment, moment))
    outcome = prune(target, retention.Policy(keep_last=2), now=NOW)[0].to_dict()
    assert [r["id"] for r in outcome["removed"]] == [old]
    assert outcome["sessions_removed"] == ["pam1/sessions/2026/1124/a.arz", stale_upload]
    assert outcome["sessions_bytes_freed"] == len("2026/1124/a.arz") + 4
    files, partials = list_session_files(target, "pam1")
    assert [f.path for f in files] == ["pam1/sessions/2026/1124/b.arz", "pam1/sessions/2026/1125/c.arz",
                                       "pam1/sessions/2026/1126/d.arz"] and partials == []
    assert snapshot_ids(target) == [new, mid]
    # the last reference to 2026/1124 goes: its folder goes too, the year folder stays
    prune(target, retention.Policy(keep_last=1), now=NOW)
    assert sorted(os.listdir(tmp_path / "pam1/sessions/2026")) == ["1125", "1126"]


def test_sessions_index_is_not_a_recording(target, tmp_path):
    put(target, NOW - timedelta(days=1), sessions=["2026/1126/a.arz"])
    target.write_bytes("pam1/sessions/index.json", b"{}")
    outcome = prune(target, retention.Policy(keep_last=1), now=NOW)[0].to_dict()
    assert outcome["sessions_removed"] == [] and os.path.exists(tmp_path / "pam1/sessions/index.json")


def test_kept_snapshot_without_session_list_blocks_session_removal(target, tmp_path):
    put(target, NOW - timedelta(days=2), sessions=["2026/1125/a.arz"])
    newest = put(target, NOW - timedelta(days=1), sessions=["2026/1126/b.arz"])
    target.write_bytes("pam1/sessions/2026/1120/old.arz", b"old")
    name = [r for r in catalog.list_snapshots(target).snapshots if r.id == newest][0].object
    os.remove(tmp_path / "pam1" / "snapshots" / catalog.sessions_list_name(name))  # as an older version left it
    outcome = prune(target, retention.Policy(keep_last=1), now=NOW)[0].to_dict()
    assert len(outcome["removed"]) == 1  # snapshots still follow the policy
    assert outcome["sessions_removed"] == []
    assert "took session recordings but has no" in outcome["warnings"][0] and newest in outcome["warnings"][0]
    assert os.path.exists(tmp_path / "pam1/sessions/2026/1120/old.arz")


def test_unreadable_session_list_blocks_session_removal(target, tmp_path):
    sid = put(target, NOW - timedelta(days=1), sessions=["2026/1126/b.arz"])
    target.write_bytes("pam1/sessions/2026/1120/old.arz", b"old")
    name = catalog.list_snapshots(target).find(sid)[0].object
    (tmp_path / "pam1" / "snapshots" / catalog.sessions_list_name(name)).write_text('{"format": "x"}')
    referenced, warnings = referenced_sessions(target, catalog.list_snapshots(target).snapshots)
    assert referenced is None and "cannot be read" in warnings[0]
    assert prune(target, retention.Policy(keep_last=1), now=NOW)[0].to_dict()["sessions_removed"] == []


def test_incomplete_listing_refuses_that_appliance(target, tmp_path):
    daily(target, 4)
    daily(target, 4, appliance="pam2")
    (tmp_path / "pam3").mkdir()
    (tmp_path / "pam3" / "snapshots").write_text("a file where a directory should be")
    outcomes = {o.appliance: o for o in prune(target, retention.Policy(keep_last=1), now=NOW)}
    assert "listing is incomplete" in outcomes["pam3"].error
    assert outcomes["pam1"].error is None and len(snapshot_ids(target)) == 1


class DenyingTarget(PathTarget):
    """A real PathTarget whose server refuses to open some files, as a share does for a file whose
    ACL denies the backup account (root cannot be refused by a local directory)."""

    denied = ()

    def open_read(self, relpath):
        if relpath in self.denied:
            raise TargetError("permission denied on %s" % self.describe_path(relpath))
        return super().open_read(relpath)

    def listdir(self, relpath):
        if relpath in self.denied:
            raise TargetError("permission denied on %s" % self.describe_path(relpath))
        return super().listdir(relpath)


def test_unreadable_kept_sidecar_refuses(tmp_path):
    with DenyingTarget(str(tmp_path)) as target:
        ids = daily(target, 3)
        newest = catalog.list_snapshots(target).snapshots[0]
        target.denied = ("pam1/snapshots/%s.json" % newest.stem,)
        outcome = prune(target, retention.Policy(keep_last=1), now=NOW)[0]
        assert "sidecar could not be read" not in outcome.error and "permission denied" in outcome.error
        assert snapshot_ids(target) == ids  # nothing removed
        listing = catalog.list_snapshots(target)
        assert not listing.complete and "permission denied" in listing.errors[0]


def test_root_that_cannot_be_listed_refuses_everything(tmp_path):
    with DenyingTarget(str(tmp_path)) as target:
        ids = daily(target, 3)
        target.denied = ("",)
        with pytest.raises(TargetError, match="refusing to prune: the snapshot listing is incomplete: permission"):
            prune(target, retention.Policy(keep_last=1), now=NOW)
        target.denied = ()
        assert snapshot_ids(target) == ids


def test_held_lock_stops_that_appliance_only(target, tmp_path):
    pam1 = daily(target, 3)
    daily(target, 3, appliance="pam2")
    with ApplianceLock(target, "pam1", owner={"host": "other-host"}):
        outcomes = {o.appliance: o for o in prune(target, retention.Policy(keep_last=1), now=NOW)}
    assert "locked by host other-host" in outcomes["pam1"].error
    assert snapshot_ids(target) == pam1 and len(snapshot_ids(target, "pam2")) == 1
    assert outcomes["pam1"].to_dict()["bytes_freed"] == 0


def test_dead_run_leftovers_go_at_once_and_nothing_else(tmp_path):
    """After taking over a dead run's lock: its partial object and half-written session file are removed,
    whatever their age; finished recordings stay."""
    from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import remove_dead_run_leftovers

    with PathTarget(str(tmp_path)) as target:
        now = datetime.now(timezone.utc)
        partial = catalog.partial_name(catalog.snapshots_dir("pam1") + "/" + catalog.object_name(now, "0badc0de", True))
        target.write_bytes(partial, b"half an upload")
        recording = catalog.sessions_dir("pam1") + "/2026/12/03/finished.mp4"
        half = catalog.sessions_dir("pam1") + "/2026/12/03/cut.mp4.partial"
        target.write_bytes(recording, b"a finished recording")
        target.write_bytes(half, b"half a recording")
        removed = remove_dead_run_leftovers(target, "pam1")
        assert sorted(removed.files) == sorted([partial, half])
        assert not target.exists(partial) and target.read_bytes(recording) == b"a finished recording"


def test_prune_that_takes_over_a_dead_runs_lock_removes_its_fresh_partials_at_once(target, tmp_path):
    """A prune, like a snapshot, heals after a crash: the killed run's partial goes now, not after the
    grace period; a lock from another host that merely expired does not count as a dead run's."""
    from tests.unit.test_locking import _hold_lock

    keep = daily(target, 2)
    partial = catalog.partial_name("%s/%s" % (catalog.snapshots_dir("pam1"),
                                              catalog.object_name(NOW, "0badc0de", True)))
    target.write_bytes(partial, b"half an upload")  # written now: far inside the 24 h grace
    holder = _hold_lock(tmp_path, "die")
    holder.wait(timeout=30)
    holder.stdout.close()
    outcome = prune(target, retention.Policy(keep_last=5), now=NOW)[0].to_dict()
    assert outcome["error"] is None and outcome["partials_removed"] == []
    assert "(host %s, pid %d, since " % (socket.gethostname(), holder.pid) in outcome["lock_takeover"]
    assert outcome["lock_takeover"].endswith(": its process is gone")
    assert outcome["leftovers_removed"] == [partial] and not target.exists(partial)
    assert snapshot_ids(target) == keep

    target.write_bytes(partial, b"half an upload")
    stale = ApplianceLock(target, "pam1", owner={"host": "other-host"}, ttl=timedelta(seconds=1),
                          clock=lambda: NOW - timedelta(hours=1)).acquire()
    stale.held = False  # it "died" on another host and expired long ago
    outcome = prune(target, retention.Policy(keep_last=5), now=NOW)[0].to_dict()
    assert outcome["lock_takeover"].endswith(": it expired") and outcome["leftovers_removed"] == []
    assert target.exists(partial), "a partial within the grace of a run that may still be alive stays"


# --- one appliance's prune never touches another appliance's files -----------------------------------


def test_a_name_that_differs_only_in_case_from_an_appliance_on_the_target_is_refused(target, tmp_path):
    """SMB ignores case, so 'seg01' would read and remove the files of 'Seg01'. Refused on every target,
    before anything is written (no folder, no lock), with both names in the message."""
    from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError

    seg = daily(target, 3, appliance="Seg01")
    (outcome,) = prune(target, retention.Policy(keep_last=1), appliance="seg01", now=NOW)
    assert "'seg01'" in outcome.error and "'Seg01'" in outcome.error and "case" in outcome.error
    assert snapshot_ids(target, "Seg01") == seg and not (tmp_path / "seg01").exists()
    with pytest.raises(ConfigError, match="'seg01'.*'Seg01'"):
        ApplianceLock(target, "seg01").acquire()
    assert not (tmp_path / "seg01").exists()
    (dry,) = prune(target, retention.Policy(keep_last=1), appliance="seg01", now=NOW, dry_run=True)
    assert "'Seg01'" in dry.error
    # A case-sensitive target may already hold both (made before this check): neither is pruned.
    daily(target, 3, appliance="seg01")
    outcomes = {o.appliance: o for o in prune(target, retention.Policy(keep_last=1), now=NOW)}
    assert "'Seg01'" in outcomes["seg01"].error and "'seg01'" in outcomes["Seg01"].error
    assert snapshot_ids(target, "Seg01") == seg and len(snapshot_ids(target, "seg01")) == 3


@pytest.mark.parametrize("claimed", ["pam2", "PAM1"])
def test_prune_never_removes_a_snapshot_whose_sidecar_names_another_appliance(target, tmp_path, claimed):
    """A sidecar in pam1's folder that says it belongs to another appliance (or to a case variant of
    pam1: on SMB that is another appliance's folder) is not pam1's to remove: the prune of pam1 stops
    before removing anything and names both; pam2 and its files are untouched."""
    keep = daily(target, 3)
    created = NOW.replace(hour=5) - timedelta(days=30)
    name = catalog.object_name(created, "0badc0de", True)
    with catalog.AtomicUpload(target, catalog.object_path("pam1", name)) as upload:
        upload.write(b"object bytes")
    hostile = make_sidecar(name, b"object bytes", claimed, created=created)
    target.write_bytes("pam1/snapshots/" + catalog.sidecar_name(name), hostile.to_json())
    other = daily(target, 2, appliance="pam2")
    before = sorted(os.listdir(tmp_path / "pam1" / "snapshots"))
    (outcome,) = prune(target, retention.Policy(keep_last=1), appliance="pam1", now=NOW)
    assert outcome.error is not None and "0badc0de" in outcome.error
    assert "'%s'" % claimed in outcome.error and "'pam1'" in outcome.error
    assert sorted(os.listdir(tmp_path / "pam1" / "snapshots")) == before
    assert outcome.removed.files == [] and snapshot_ids(target, "pam2") == other
    assert snapshot_ids(target)[:3] == keep


def test_apply_plan_removes_only_paths_inside_its_own_appliance_folder(target, tmp_path):
    """Belt and braces below the planner: a plan whose record or recording points outside
    <appliance>/ (another appliance, a case variant, a parent folder) removes nothing."""
    from ansible_collections.segura.backup.plugins.module_utils._engine.errors import IntegrityError
    from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import (
        AppliancePlan, SessionFile, apply_plan)

    daily(target, 2)
    pam2 = daily(target, 2, appliance="pam2")
    victim = catalog.list_snapshots(target, "pam2").snapshots[-1]
    before = sorted(os.listdir(tmp_path / "pam2" / "snapshots"))
    with pytest.raises(IntegrityError, match="pam2"):
        apply_plan(target, AppliancePlan("pam1", remove=[victim]))
    forged = catalog.list_snapshots(target, "pam1").snapshots[-1]
    forged.files = [path.replace("pam1/", "PAM1/") for path in forged.files]
    with pytest.raises(IntegrityError, match="PAM1"):
        apply_plan(target, AppliancePlan("pam1", remove=[forged]))
    (tmp_path / "pam2" / "sessions").mkdir()
    (tmp_path / "pam2" / "sessions" / "rec.mp4").write_bytes(b"recording")
    for path in ("pam2/sessions/rec.mp4", "pam1/sessions/../../pam2/sessions/rec.mp4", "pam1/sessions"):
        with pytest.raises(IntegrityError):
            apply_plan(target, AppliancePlan("pam1", sessions=[SessionFile(path, 9, 0.0)]))
    assert sorted(os.listdir(tmp_path / "pam2" / "snapshots")) == before and snapshot_ids(target, "pam2") == pam2
    assert (tmp_path / "pam2" / "sessions" / "rec.mp4").exists()
