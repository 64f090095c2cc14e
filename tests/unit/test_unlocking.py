"""Breaking an appliance's lock by hand (unlocking.break_lock, the break_lock module's engine)."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import LockBusy
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import ApplianceLock
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget
from ansible_collections.segura.backup.plugins.module_utils._engine import unlocking
from ansible_collections.segura.backup.plugins.module_utils._engine.unlocking import judge_holder


def break_lock(*args, **kwargs):
    kwargs.setdefault("settle", 0)  # no real holder refreshes in these tests: no need to wait for one
    return unlocking.break_lock(*args, **kwargs)


UTC = timezone.utc
NOW = datetime(2026, 12, 4, 3, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def _stamp(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _foreign_lock(tmp_path, refreshed_ago, ttl=timedelta(minutes=15), run_id="r-dead", appliance="pam1"):
    """A lock written by a run on another host (no `process` we could judge), last refreshed ``refreshed_ago``."""
    refreshed = NOW - refreshed_ago
    doc = {"appliance": appliance, "run_id": run_id, "host": "awx-node-2", "pid": 4242,
           "started": _stamp(refreshed - timedelta(minutes=1)), "refreshed": _stamp(refreshed),
           "expires": _stamp(refreshed + ttl), "token": "f" * 32}
    (tmp_path / appliance).mkdir(exist_ok=True)
    (tmp_path / appliance / "lock").write_text(json.dumps(doc))
    return doc


@pytest.fixture
def target(tmp_path):
    with PathTarget(str(tmp_path)) as opened:
        yield opened


def test_no_lock_means_nothing_to_break(target, tmp_path):
    (tmp_path / "pam1").mkdir()
    expected = {"holder": None, "would_break": False, "broken": False, "leftovers_removed": []}
    assert break_lock(target, "pam1", clock=Clock(NOW)) == expected


def test_a_lock_still_being_refreshed_is_refused_and_untouched_even_with_force(target, tmp_path):
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=4))  # a third of 15 min is 5 min
    before = (tmp_path / "pam1" / "lock").read_bytes()
    with pytest.raises(LockBusy, match=r"refusing to break .* run r-dead \(host awx-node-2, pid 4242\).*"
                                       r"refreshed 240.0s ago.*wait until 2026-12-04T03:11:00Z") as refused:
        break_lock(target, "pam1", force=True, clock=Clock(NOW))
    assert refused.value.holder["run_id"] == "r-dead"
    assert (tmp_path / "pam1" / "lock").read_bytes() == before


def test_a_silent_lock_that_is_not_stale_needs_force(target, tmp_path):
    """Silence is no proof of death (a dump waiting on a table lock refreshes nothing)."""
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=6))
    with pytest.raises(LockBusy, match="silence is no proof .* set force"):
        break_lock(target, "pam1", clock=Clock(NOW))
    assert (tmp_path / "pam1" / "lock").exists()


def test_a_holder_that_runs_on_this_host_is_never_broken(target, tmp_path):
    from tests.unit.test_locking import _hold_lock

    holder = _hold_lock(tmp_path, "live")
    try:
        before = (tmp_path / "pam1" / "lock").read_bytes()
        later = Clock(datetime.now(UTC) + timedelta(minutes=50))  # silent for 50 of its 60 minutes
        shown = break_lock(target, "pam1", force=True, dry_run=True, clock=later)
        assert shown["would_break"] is False and "still runs on this host" in shown["refusal"]
        with pytest.raises(LockBusy, match="its process %d still runs on this host" % holder.pid):
            break_lock(target, "pam1", force=True, clock=later)
        assert (tmp_path / "pam1" / "lock").read_bytes() == before
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()


def test_a_stale_lock_is_broken_without_force(target, tmp_path):
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=20))  # expired 5 minutes ago
    assert break_lock(target, "pam1", clock=Clock(NOW))["broken"] is True


def test_check_mode_shows_the_holder_and_changes_nothing(target, tmp_path):
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=6))
    before = (tmp_path / "pam1" / "lock").read_bytes()
    result = break_lock(target, "pam1", force=True, dry_run=True, clock=Clock(NOW))
    holder = result["holder"]
    assert result["broken"] is False and result["would_break"] is True and result["refusal"] is None
    assert (holder["run_id"], holder["host"], holder["pid"], holder["breakable"]) == ("r-dead", "awx-node-2", 4242, True)
    assert holder["silent"] == 360.0 and "token" not in holder
    # without force, and for another run id: a check-mode run says why it would refuse, and does not fail
    assert "set force" in break_lock(target, "pam1", dry_run=True, clock=Clock(NOW))["refusal"]
    other = break_lock(target, "pam1", run_id="r-x", force=True, dry_run=True, clock=Clock(NOW))
    assert other["would_break"] is False and "not to run r-x" in other["refusal"]
    assert (tmp_path / "pam1" / "lock").read_bytes() == before


def test_a_silent_lock_is_broken_and_its_partials_go_with_it(target, tmp_path):
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=6))
    snapshots = tmp_path / "pam1" / "snapshots"
    snapshots.mkdir()
    (snapshots / "20261204T025000Z-deadbeef.tar.zst.age.partial").write_bytes(b"half")
    day = tmp_path / "pam1" / "sessions" / "2026" / "1204"
    day.mkdir(parents=True)
    (day / "rec-1.arz.partial").write_bytes(b"half a recording")
    (day / "rec-0.arz").write_bytes(b"a whole recording")  # published: not the dead run's to lose
    result = break_lock(target, "pam1", run_id="r-dead", force=True, clock=Clock(NOW))
    assert result["broken"] is True
    assert sorted(result["leftovers_removed"]) == ["pam1/sessions/2026/1204/rec-1.arz.partial",
                                                   "pam1/snapshots/20261204T025000Z-deadbeef.tar.zst.age.partial"]
    assert not (tmp_path / "pam1" / "lock").exists()
    assert sorted(p.name for p in day.iterdir()) == ["rec-0.arz"]
    # and a run can take the lock right away
    ApplianceLock(target, "pam1", clock=Clock(NOW)).acquire().release()


def test_run_id_must_match_the_holder(target, tmp_path):
    _foreign_lock(tmp_path, refreshed_ago=timedelta(hours=1), run_id="r-new")
    with pytest.raises(LockBusy, match="belongs to run r-new, not to run r-dead"):
        break_lock(target, "pam1", run_id="r-dead", force=True, clock=Clock(NOW))
    assert (tmp_path / "pam1" / "lock").exists()


def test_a_live_holder_whose_lock_is_broken_stops_at_its_next_refresh(target, tmp_path):
    clock = Clock(NOW - timedelta(minutes=6))
    holder = ApplianceLock(target, "pam1", ttl=timedelta(minutes=15), clock=clock).acquire()
    clock.now = NOW  # it stalled for 6 minutes: two heartbeats missed
    holder.process = None  # as if it ran on another host (a holder here that runs is never broken)
    holder.refresh(force=True)
    clock.now = NOW + timedelta(minutes=6)
    assert break_lock(target, "pam1", force=True, clock=clock)["broken"] is True
    with pytest.raises(LockBusy, match="removed by someone else"):
        holder.refresh(force=True)
    assert holder.held is False


def test_a_lock_refreshed_while_being_broken_is_not_broken(target, tmp_path, monkeypatch):
    """Judged again when the takeover starts: a refresh that lands between the look and the break wins."""
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=6))
    real_peek = ApplianceLock.peek

    def peek_then_refresh(self):
        doc = real_peek(self)
        _foreign_lock(tmp_path, refreshed_ago=timedelta(seconds=1))  # the holder's heartbeat
        return doc

    monkeypatch.setattr(ApplianceLock, "peek", peek_then_refresh)
    with pytest.raises(LockBusy, match="awx-node-2"):
        break_lock(target, "pam1", force=True, clock=Clock(NOW))
    assert json.loads((tmp_path / "pam1" / "lock").read_text())["refreshed"] == _stamp(NOW - timedelta(seconds=1))


def test_a_refresh_in_flight_at_the_break_wins_and_nothing_is_removed(target, tmp_path, monkeypatch):
    """The holder's refresh (read, check, rename over) can land just after the takeover and replace it:
    the breaker looks again after settling and, the lock not being its own, removes nothing."""
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=6))
    partial = tmp_path / "pam1" / "snapshots" / "20261204T025000Z-deadbeef.tar.zst.age.partial"
    partial.parent.mkdir()
    partial.write_bytes(b"still being written")
    monkeypatch.setattr(unlocking.time, "sleep",
                        lambda seconds: _foreign_lock(tmp_path, refreshed_ago=timedelta(seconds=0)))
    with pytest.raises(LockBusy, match="refreshed by its holder while being broken: its run is alive"):
        unlocking.break_lock(target, "pam1", force=True, clock=Clock(NOW), settle=0.1)
    assert partial.exists() and json.loads((tmp_path / "pam1" / "lock").read_text())["run_id"] == "r-dead"


def test_judging_expired_and_unreadable_locks():
    expired = {"run_id": "r", "started": "2026-12-04T01:00:00Z", "refreshed": "2026-12-04T01:00:00Z",
               "expires": "2026-12-04T01:15:00Z"}
    assert judge_holder(expired, NOW)["why"] == "it expired"
    assert judge_holder(None, NOW)["breakable"] is False
