"""The appliance lock can be trusted, on the shared lab's real servers (nothing is broken here).

- SMB readers of the lock (another run judging it, a person's client) never make the holder fail: our
  readers share read, write and delete; a reader that refuses delete sharing delays the holder's
  refresh (retried) and turns a failed release into a warning, never into a failed run.
- The holder refreshes its lock on a timer thread: a run stalled in its source or its writes keeps its
  lock, and the second run is refused.
- A run whose lock was taken over anyway (stalled past the ttl as a whole, e.g. a paused VM) publishes
  nothing: snapshot and prune check that the lock is still theirs right before they act, and fail with
  LockLost naming who took it. Earlier snapshots stay untouched.
- Appliance names that differ only in case are refused on one target (SMB would mix their files).

A run is "stalled" or "taken over" at a precise moment through HookedTarget (the hook only picks the
moment; every run and lock is real, each with its own connection). The taker's clock is set past the
stalled run's ttl instead of sleeping through it.
"""

import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, retention
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, LockBusy, LockLost
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import ApplianceLock
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import prune
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.faults.conftest import (
    APPLIANCE_NAME,
    HookedTarget,
    Trigger,
    deep_check_all,
    snapshot_dir_files,
    snapshot_request,
)
from tests.unit.test_pruning import put

UTC = timezone.utc
KINDS = ["smb_signed", "nfs_v41", "path"]


def _sidecars(target, appliance=APPLIANCE_NAME):
    return [n for n in snapshot_dir_files(target.server_dir, appliance)
            if n.endswith(".json") and not n.endswith((".sessions.json", ".verify.json"))]


def _lock_file(target, appliance=APPLIANCE_NAME):
    return os.path.join(target.server_dir, appliance, "lock")


def _at_object_rename(action):
    """A Trigger for the moment the object got its final name, right before the run publishes."""
    return Trigger(lambda event, relpath, count: event == "renamed" and relpath.endswith(".tar.zst.age"), action)


def _quick_request(appliance, recipient, name=APPLIANCE_NAME, **extra):
    return snapshot_request(appliance, recipient, components=("config", "secrets"), name=name, **extra)


def _wait_for(condition, what, deadline=60.0):
    import time

    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "timed out waiting for %s" % what
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# SMB readers of the lock


def test_smb_reader_holding_the_lock_open_blocks_neither_publishing_nor_release(
        lab_target_factory, reference_appliance, age_identity):
    """Another run reads our lock (as its acquire() does) and keeps it open while we publish and release."""
    target = lab_target_factory("smb_signed")
    request = _quick_request(reference_appliance, age_identity["recipient"])
    held = {}

    with open_target(target.options) as reader_client:
        def open_the_lock():
            held["handle"] = reader_client.open_read(catalog.lock_path(APPLIANCE_NAME))

        trigger = _at_object_rename(open_the_lock)
        with open_target(target.options) as client:
            result = take_snapshot(HookedTarget(client, trigger), request)
        assert trigger.fired
        try:
            assert json.loads(held["handle"].read(65536))["appliance"] == APPLIANCE_NAME  # read whole, meanwhile
        finally:
            held["handle"].close()
    assert not [w for w in result["warnings"] if "lock" in w], result["warnings"]
    assert _sidecars(target) == [os.path.basename(result["sidecar"])]
    assert not os.path.exists(_lock_file(target)), "the release left the lock behind"


def test_smb_reader_refusing_delete_sharing_costs_a_warning_not_the_run(
        lab_target_factory, reference_appliance, age_identity):
    """A client that opens the lock sharing read only (smbprotocol's Open with limited share access, as
    tools do) holds it through our publish and release: the snapshot is published, the release that
    cannot remove the lock is a warning, and the lock left behind is ours (it expires by itself)."""
    import smbclient

    target = lab_target_factory("smb_signed")
    request = _quick_request(reference_appliance, age_identity["recipient"])
    held = {}

    with open_target(target.options) as reader_client:
        def open_the_lock_sharing_read_only():
            unc = reader_client._unc(catalog.lock_path(APPLIANCE_NAME))  # pylint: disable=protected-access
            held["handle"] = smbclient.open_file(unc, mode="rb", share_access="r",
                                                 **reader_client._kwargs())  # pylint: disable=protected-access

        trigger = _at_object_rename(open_the_lock_sharing_read_only)
        with open_target(target.options) as client:
            result = take_snapshot(HookedTarget(client, trigger), request)
        held["handle"].close()
    assert trigger.fired
    lock_warnings = [w for w in result["warnings"] if "lock" in w]
    assert len(lock_warnings) == 1 and "STATUS_SHARING_VIOLATION" in lock_warnings[0], result["warnings"]
    assert "expires by itself" in lock_warnings[0]
    assert _sidecars(target) == [os.path.basename(result["sidecar"])]
    with open(_lock_file(target), encoding="utf-8") as handle:
        left = json.load(handle)
    assert left["pid"] == os.getpid() and left["appliance"] == APPLIANCE_NAME
    listing = deep_check_all(target.options, age_identity["identity_file"])
    assert [r.id for r in listing.snapshots] == [result["id"]]


def test_smb_refresh_waits_for_a_reader_to_close_the_lock(lab_target_factory):
    """Samba refuses to rename over a file that is open (any sharing): the refresh retries, bounded, and
    succeeds once the reader closed. The retry's pause is where the reader closes (no timing race)."""
    target = lab_target_factory("smb_signed")
    with open_target(target.options) as client, open_target(target.options) as reader_client:
        lock = ApplianceLock(client, APPLIANCE_NAME, ttl=timedelta(minutes=30)).acquire()
        reader = reader_client.open_read(catalog.lock_path(APPLIANCE_NAME))
        pauses = []

        def pause(seconds):
            pauses.append(seconds)
            reader.close()

        lock._sleep = pause  # pylint: disable=protected-access
        before = json.loads(client.read_bytes(catalog.lock_path(APPLIANCE_NAME)))
        assert lock.refresh(force=True) is True
        after = json.loads(client.read_bytes(catalog.lock_path(APPLIANCE_NAME)))
        assert len(pauses) == 1 and after["token"] == before["token"] and after["refreshed"] >= before["refreshed"]
        assert lock.release() is True
    assert not os.path.exists(_lock_file(target))


@pytest.mark.parametrize("share_access", ["rwd", "r"])
def test_smb_prune_of_a_snapshot_a_reader_holds_open(lab_target_factory, share_access):
    """A restore or a person's client reads an old snapshot while prune removes it. A reader sharing delete (ours
    do): the removal succeeds, the reader reads to the end, the object is gone once it closes. A reader refusing
    delete sharing: the prune fails for this appliance naming the sharing violation; the sidecar went first, so
    what is left is an object without its sidecar (never a sidecar promising a missing object), which the next
    prune removes as a stale partial (it is as old as the snapshot)."""
    import smbclient

    target = lab_target_factory("smb_signed")
    now = datetime.now(UTC)
    payload = os.urandom(256 * 1024)
    with open_target(target.options) as client:
        ids = [put(client, now - timedelta(days=day), appliance=APPLIANCE_NAME, payload=payload) for day in range(3)]
        records = catalog.list_snapshots(client, APPLIANCE_NAME).snapshots
    for record in records:  # files as old as their snapshots, as on a real share
        for relpath in record.files:
            stamp = record.created.timestamp()
            os.utime(os.path.join(target.server_dir, relpath), (stamp, stamp))
    oldest = records[-1]
    assert oldest.id == ids[-1]
    with open_target(target.options) as reader_client:
        unc = reader_client._unc(catalog.object_path(APPLIANCE_NAME, oldest.object))  # pylint: disable=protected-access
        reader = smbclient.open_file(unc, mode="rb", share_access=share_access,
                                     **reader_client._kwargs())  # pylint: disable=protected-access
        try:
            first = reader.read(1000)
            with open_target(target.options) as client:
                (outcome,) = prune(client, retention.Policy(keep_last=1), appliance=APPLIANCE_NAME, now=now)
            rest = reader.read()
        finally:
            reader.close()
    with open_target(target.options) as client:
        left = catalog.list_snapshots(client, APPLIANCE_NAME).snapshots
        if share_access == "rwd":
            assert outcome.error is None and first + rest == payload
            assert [r.id for r in left] == [ids[0]]
        else:
            assert outcome.error is not None and "STATUS_SHARING_VIOLATION" in outcome.error, outcome.error
            assert {r.id: r.status for r in left} == {ids[0]: catalog.STATUS_COMPLETE, oldest.id: catalog.STATUS_PARTIAL}
            (again,) = prune(client, retention.Policy(keep_last=1), appliance=APPLIANCE_NAME, now=now)
            assert again.error is None, again.error
            assert [r.id for r in catalog.list_snapshots(client, APPLIANCE_NAME).snapshots] == [ids[0]]
    assert not os.path.exists(_lock_file(target))


# --------------------------------------------------------------------------------------------------
# the timer: a stalled run keeps its lock


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_stalled_past_its_ttl_keeps_its_lock_and_the_second_run_is_refused(
        lab_target_factory, reference_appliance, age_identity, kind):
    """The first run stalls inside its first write (a slow source or a slow target) for longer than its
    6 s ttl. Its timer keeps the lock (refreshed every second), so a second run is refused, and the
    first one then completes."""
    target = lab_target_factory(kind)
    request = _quick_request(reference_appliance, age_identity["recipient"], lock_ttl=timedelta(seconds=6))
    refusals = []

    def lock_doc():
        with open(_lock_file(target), encoding="utf-8") as handle:
            return json.load(handle)

    def stall_past_the_ttl_then_start_a_second_run():
        first_expiry = catalog.parse_utc(lock_doc()["expires"])
        _wait_for(lambda: datetime.now(UTC) > first_expiry + timedelta(seconds=1)
                  and catalog.parse_utc(lock_doc()["expires"]) > datetime.now(UTC), "the stall to outlast the first expiry")
        with open_target(target.options) as other:
            try:
                take_snapshot(other, request)
            except LockBusy as exc:
                refusals.append(str(exc))

    trigger = Trigger(lambda event, relpath, count: event == "write" and relpath.endswith(".tar.zst.age.partial"),
                      stall_past_the_ttl_then_start_a_second_run)
    with open_target(target.options) as client:
        first = take_snapshot(HookedTarget(client, trigger), request)
    assert trigger.fired
    assert len(refusals) == 1 and "is locked by host" in refusals[0], refusals
    assert first["lock_taken_over"] is False
    assert _sidecars(target) == [os.path.basename(first["sidecar"])]
    assert not os.path.exists(_lock_file(target))


# --------------------------------------------------------------------------------------------------
# a run whose lock was taken over acts on nothing


def _taker(client, ttl, host="taker-host"):
    """Another run, whose clock says the stalled run's ttl has passed: it takes the lock over."""
    later = datetime.now(UTC) + ttl + timedelta(minutes=1)
    return ApplianceLock(client, APPLIANCE_NAME, {"host": host, "run_id": "run-of-%s" % host},
                         clock=lambda: later)


@pytest.mark.parametrize("kind", KINDS)
def test_a_snapshot_whose_lock_was_taken_over_publishes_nothing(
        lab_target_factory, reference_appliance, age_identity, kind):
    target = lab_target_factory(kind)
    request = _quick_request(reference_appliance, age_identity["recipient"])
    with open_target(target.options) as client:
        earlier = take_snapshot(client, request)
    earlier_files = {k: v for k, v in target.listing().items() if v is not None and "/snapshots/" in k}
    takers = []

    with open_target(target.options) as taker_client:
        def taken_over_while_stalled():
            takers.append(_taker(taker_client, request.lock_ttl).acquire())

        trigger = _at_object_rename(taken_over_while_stalled)
        with open_target(target.options) as client:
            with pytest.raises(LockLost) as raised:
                take_snapshot(HookedTarget(client, trigger), request)
        assert trigger.fired and takers[0].took_over is not None
        message = str(raised.value)
        assert "taken over" in message and "taker-host" in message and "nothing was published" in message
        with open(_lock_file(target), encoding="utf-8") as handle:
            assert json.load(handle)["token"] == takers[0].token  # the loser never touched it
        takers[0].release()

    assert _sidecars(target) == [os.path.basename(earlier["sidecar"])]
    now_files = target.listing()
    assert all(now_files.get(path) == value for path, value in earlier_files.items()), "an earlier snapshot changed"
    listing = deep_check_all(target.options, age_identity["identity_file"])
    assert [r.id for r in listing.snapshots if r.complete] == [earlier["id"]]
    assert [r.status for r in listing.snapshots if r.id != earlier["id"]] == ["partial"]  # never looks complete


class _ListingHook:
    """A real target whose listdir announces itself (prune only lists and reads while it plans)."""

    def __init__(self, inner, hook):
        self._inner = inner
        self._hook = hook

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def listdir(self, relpath):
        self._hook(relpath)
        return self._inner.listdir(relpath)


@pytest.mark.parametrize("kind", KINDS)
def test_a_prune_whose_lock_was_taken_over_while_it_planned_removes_nothing(lab_target_factory, kind):
    """The prune stalls while planning (a slow share) past its ttl; a snapshot run takes the lock over.
    The prune must not remove anything it planned: that run now owns the appliance."""
    target = lab_target_factory(kind)
    now = datetime.now(UTC)
    with open_target(target.options) as client:
        ids = [put(client, now - timedelta(days=day), appliance=APPLIANCE_NAME) for day in range(4)]
        before = catalog.list_snapshots(client, APPLIANCE_NAME).snapshots
    assert [r.id for r in before] == ids
    takers = []
    ttl = timedelta(minutes=30)

    with open_target(target.options) as taker_client:
        def hook(relpath):
            if relpath == catalog.sessions_dir(APPLIANCE_NAME) and not takers:  # the last listing of the plan
                takers.append(_taker(taker_client, ttl, host="snapshot-run").acquire())

        with open_target(target.options) as client:
            (outcome,) = prune(_ListingHook(client, hook), retention.Policy(keep_last=1), appliance=APPLIANCE_NAME,
                               now=now, lock_ttl=ttl)
        assert takers, "the hook never fired"
        assert outcome.error is not None and "taken over" in outcome.error and "snapshot-run" in outcome.error
        assert outcome.removed.files == [] and outcome.applied is False
        takers[0].release()
    with open_target(target.options) as client:
        assert [r.id for r in catalog.list_snapshots(client, APPLIANCE_NAME).snapshots] == ids


# --------------------------------------------------------------------------------------------------
# names that differ only in case


def test_smb_appliance_names_that_differ_only_in_case_are_refused(lab_target_factory, reference_appliance, age_identity):
    """On SMB 'seg01/…' is 'Seg01/…': a snapshot or prune of 'seg01' would mix with, or remove, the files of
    'Seg01'. Both are refused, naming both names; Seg01's files stay as they were."""
    target = lab_target_factory("smb_signed")
    now = datetime.now(UTC)
    with open_target(target.options) as client:
        seg = [put(client, now - timedelta(days=day), appliance="Seg01") for day in range(3)]
    before = target.listing()
    with open_target(target.options) as client:
        (outcome,) = prune(client, retention.Policy(keep_last=1), appliance="seg01", now=now)
        assert outcome.error is not None and "'seg01'" in outcome.error and "'Seg01'" in outcome.error
        with pytest.raises(ConfigError, match="'seg01'.*'Seg01'"):
            take_snapshot(client, _quick_request(reference_appliance, age_identity["recipient"], name="seg01"))
        assert [r.id for r in catalog.list_snapshots(client, "Seg01").snapshots] == seg
    assert target.listing() == before
    assert sorted(os.listdir(target.server_dir)) == ["Seg01"]
