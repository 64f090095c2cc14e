"""Breaking an appliance's lock by hand (unlocking.break_lock, the break_lock module's engine)."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import LockBusy
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import ApplianceLock
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget
from ansible_collections.segura.backup.plugins.module_utils._engine.unlocking import break_lock, judge_holder

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
    assert break_lock(target, "pam1", clock=Clock(NOW)) == {"holder": None, "broken": False, "leftovers_removed": []}


def test_a_lock_still_being_refreshed_is_refused_and_untouched(target, tmp_path):
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=4))  # a third of 15 min is 5 min
    before = (tmp_path / "pam1" / "lock").read_bytes()
    with pytest.raises(LockBusy, match=r"refusing to break .* run r-dead \(host awx-node-2, pid 4242\).*"
                                       r"refreshed 240.0s ago.*from 2026-12-04T03:01:00Z"):
        break_lock(target, "pam1", clock=Clock(NOW))
    assert (tmp_path / "pam1" / "lock").read_bytes() == before


def test_check_mode_shows_the_holder_and_changes_nothing(target, tmp_path):
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=6))
    before = (tmp_path / "pam1" / "lock").read_bytes()
    result = break_lock(target, "pam1", dry_run=True, clock=Clock(NOW))
    holder = result["holder"]
    assert result["broken"] is False
    assert (holder["run_id"], holder["host"], holder["pid"], holder["breakable"]) == ("r-dead", "awx-node-2", 4242, True)
    assert holder["silent"] == 360.0 and "token" not in holder
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
    result = break_lock(target, "pam1", run_id="r-dead", clock=Clock(NOW))
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
        break_lock(target, "pam1", run_id="r-dead", clock=Clock(NOW))
    assert (tmp_path / "pam1" / "lock").exists()


def test_a_live_holder_whose_lock_is_broken_stops_at_its_next_refresh(target, tmp_path):
    clock = Clock(NOW - timedelta(minutes=6))
    holder = ApplianceLock(target, "pam1", ttl=timedelta(minutes=15), clock=clock).acquire()
    clock.now = NOW  # it stalled for 6 minutes: two heartbeats missed
    assert break_lock(target, "pam1", clock=clock)["broken"] is True
    with pytest.raises(LockBusy, match="removed by someone else"):
        holder.refresh(force=True)
    assert holder.held is False


def test_a_lock_refreshed_while_being_broken_is_not_broken(target, tmp_path, monkeypatch):
    """Judged again under the takeover marker: a refresh that lands between the look and the break wins."""
    _foreign_lock(tmp_path, refreshed_ago=timedelta(minutes=6))
    real_peek = ApplianceLock.peek

    def peek_then_refresh(self):
        doc = real_peek(self)
        _foreign_lock(tmp_path, refreshed_ago=timedelta(seconds=1))  # the holder's heartbeat
        return doc

    monkeypatch.setattr(ApplianceLock, "peek", peek_then_refresh)
    with pytest.raises(LockBusy, match="awx-node-2"):
        break_lock(target, "pam1", clock=Clock(NOW))
    assert json.loads((tmp_path / "pam1" / "lock").read_text())["refreshed"] == _stamp(NOW - timedelta(seconds=1))


def test_judging_expired_and_unreadable_locks():
    expired = {"run_id": "r", "started": "2026-12-04T01:00:00Z", "refreshed": "2026-12-04T01:00:00Z",
               "expires": "2026-12-04T01:15:00Z"}
    assert judge_holder(expired, NOW)["why"] == "it expired"
    assert judge_holder(None, NOW)["breakable"] is False
