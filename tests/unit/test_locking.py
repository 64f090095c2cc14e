"""The appliance lock on a real local directory target: exclusion, heartbeat, stale takeover, release."""

import hashlib
import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, LockBusy
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import AppliancesLock, ApplianceLock
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget

UTC = timezone.utc


class Clock:
    """A clock the test moves by hand (the lock takes ``clock=``; no sleeping in tests)."""

    def __init__(self, start=None):
        self.now = start or datetime.now(UTC)

    def __call__(self):
        return self.now


@pytest.fixture
def target(tmp_path):
    with PathTarget(str(tmp_path)) as opened:
        yield opened


def read_lock(tmp_path, appliance="pam1"):
    return json.loads((tmp_path / appliance / "lock").read_text())


def write_foreign_lock(tmp_path, expires, host="old-host", pid=4242, appliance="pam1", started="2026-01-01T00:00:00Z"):
    (tmp_path / appliance).mkdir(exist_ok=True)
    doc = {"run_id": "r-old", "host": host, "pid": pid, "started": started,
           "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ"), "token": "f" * 32}
    (tmp_path / appliance / "lock").write_text(json.dumps(doc))
    return doc


def test_acquire_writes_owner_and_expiry(target, tmp_path):
    clock = Clock(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
    lock = ApplianceLock(target, "pam1", {"run_id": "job-17", "host": "ctl1", "pid": 99}, ttl=timedelta(minutes=10), clock=clock)
    lock.acquire()
    doc = read_lock(tmp_path)
    assert doc["run_id"] == "job-17" and doc["host"] == "ctl1" and doc["pid"] == 99
    assert doc["started"] == "2026-11-27T10:00:00Z" and doc["expires"] == "2026-11-27T10:10:00Z"
    assert doc["token"] == lock.token
    assert lock.release() is True
    assert not (tmp_path / "pam1" / "lock").exists()


def test_defaults_for_owner(target, tmp_path):
    with ApplianceLock(target, "pam1") as lock:
        doc = read_lock(tmp_path)
        assert doc["pid"] == os.getpid() and doc["host"] and len(doc["run_id"]) == 32
        assert lock.held
    assert AppliancesLock is ApplianceLock


def test_second_lock_is_busy_and_names_the_holder(target, tmp_path):
    first = ApplianceLock(target, "pam1", {"host": "node-a", "pid": 1111})
    second = ApplianceLock(PathTarget(str(tmp_path)), "pam1", {"host": "node-b", "pid": 2222})
    first.acquire()
    with pytest.raises(LockBusy) as caught:
        second.acquire()
    message = str(caught.value)
    assert "node-a" in message and "1111" in message and "since " + read_lock(tmp_path)["started"] in message
    assert read_lock(tmp_path)["host"] == "node-a"
    assert not second.held and second.release() is False
    first.release()
    second.acquire()
    assert read_lock(tmp_path)["host"] == "node-b"


def test_locks_of_different_appliances_are_independent(target, tmp_path):
    with ApplianceLock(target, "pam1") as first, ApplianceLock(target, "pam2") as second:
        assert first.held and second.held
        assert read_lock(tmp_path, "pam1")["token"] == first.token
        assert read_lock(tmp_path, "pam2")["token"] == second.token
        with pytest.raises(LockBusy):
            ApplianceLock(target, "pam1").acquire()  # ...while each still excludes its own appliance's runs
    assert not (tmp_path / "pam1" / "lock").exists() and not (tmp_path / "pam2" / "lock").exists()


def test_expired_lock_is_taken_over(target, tmp_path):
    old = write_foreign_lock(tmp_path, datetime.now(UTC) - timedelta(minutes=1))
    lock = ApplianceLock(target, "pam1", {"host": "new-host"})
    lock.acquire()
    assert lock.took_over["host"] == "old-host" and lock.took_over["token"] == old["token"]
    assert read_lock(tmp_path)["host"] == "new-host"
    assert sorted(os.listdir(tmp_path / "pam1")) == ["lock"]  # the stale lock moved aside was removed


def test_lock_not_yet_expired_is_busy(target, tmp_path):
    write_foreign_lock(tmp_path, datetime.now(UTC) + timedelta(minutes=5))
    with pytest.raises(LockBusy, match="old-host"):
        ApplianceLock(target, "pam1").acquire()
    assert read_lock(tmp_path)["host"] == "old-host"


def test_takeover_after_holder_stalled_then_holder_finds_out(target, tmp_path):
    clock = Clock()
    stalled = ApplianceLock(target, "pam1", {"host": "slow"}, ttl=timedelta(minutes=1), clock=clock)
    stalled.acquire()
    clock.now += timedelta(minutes=2)  # the holder stopped refreshing for longer than its ttl
    taker = ApplianceLock(PathTarget(str(tmp_path)), "pam1", {"host": "fast"}, ttl=timedelta(minutes=1), clock=clock)
    taker.acquire()
    with pytest.raises(LockBusy, match="taken over.*fast"):
        stalled.refresh(force=True)
    assert stalled.release() is False  # someone else's lock is never removed
    assert read_lock(tmp_path)["host"] == "fast"
    assert taker.release() is True


def test_release_never_removes_a_lock_that_is_not_ours(target, tmp_path):
    lock = ApplianceLock(target, "pam1")
    lock.acquire()
    write_foreign_lock(tmp_path, datetime.now(UTC) + timedelta(hours=1), host="intruder")
    assert lock.release() is False
    assert read_lock(tmp_path)["host"] == "intruder"


def test_late_taker_of_an_already_replaced_lock_does_nothing(target, tmp_path):
    """B and C both judged the same lock stale; B took over first. C, continuing from its stale view,
    must neither replace B's fresh lock nor leave markers behind."""
    write_foreign_lock(tmp_path, datetime.now(UTC) - timedelta(minutes=1))
    stale_raw = (tmp_path / "pam1" / "lock").read_bytes()
    b = ApplianceLock(target, "pam1", {"host": "taker-b"})
    c = ApplianceLock(PathTarget(str(tmp_path)), "pam1", {"host": "taker-c"})
    b.acquire()
    assert c._take_over(stale_raw, json.loads(stale_raw)) is False  # C continues from where it judged
    assert read_lock(tmp_path)["token"] == b.token
    assert sorted(os.listdir(tmp_path / "pam1")) == ["lock"]
    with pytest.raises(LockBusy, match="taker-b"):
        c.acquire()
    assert b.refresh(force=True) is True


def _marker(tmp_path, number, expires, host="taker-x"):
    digest = hashlib.sha256((tmp_path / "pam1" / "lock").read_bytes()).hexdigest()[:32]
    path = tmp_path / "pam1" / ("lock.takeover-%s-%d" % (digest, number))
    path.write_text(json.dumps({"host": host, "pid": 7, "token": "e" * 32,
                                "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}))
    return path


def test_takeover_in_progress_elsewhere_is_busy(target, tmp_path):
    write_foreign_lock(tmp_path, datetime.now(UTC) - timedelta(minutes=1))
    _marker(tmp_path, 0, datetime.now(UTC) + timedelta(minutes=5), host="taker-x")
    with pytest.raises(LockBusy, match="taker-x is taking over"):
        ApplianceLock(target, "pam1").acquire()
    assert read_lock(tmp_path)["host"] == "old-host"


def test_takeover_whose_taker_died_is_finished_by_the_next(target, tmp_path):
    write_foreign_lock(tmp_path, datetime.now(UTC) - timedelta(minutes=10))
    _marker(tmp_path, 0, datetime.now(UTC) - timedelta(minutes=1))
    _marker(tmp_path, 1, datetime.now(UTC) - timedelta(minutes=1))
    lock = ApplianceLock(target, "pam1", {"host": "survivor"})
    lock.acquire()
    assert read_lock(tmp_path)["host"] == "survivor" and lock.took_over["host"] == "old-host"
    assert sorted(os.listdir(tmp_path / "pam1")) == ["lock"]


def test_expired_holder_neither_refreshes_nor_releases(target, tmp_path):
    clock = Clock()
    lock = ApplianceLock(target, "pam1", ttl=timedelta(minutes=1), clock=clock)
    lock.acquire()
    clock.now += timedelta(minutes=2)
    with pytest.raises(LockBusy, match="expired"):
        lock.refresh(force=True)
    late = ApplianceLock(target, "pam1", ttl=timedelta(minutes=1), clock=clock)
    late.acquire()
    clock.now += timedelta(minutes=2)
    assert late.release() is False  # expired: somebody may be taking it over; leave it
    assert (tmp_path / "pam1" / "lock").exists()


def test_many_takers_at_once_exactly_one_wins(tmp_path):
    rounds, takers = 15, 8
    for round_number in range(rounds):
        appliance = "pam%d" % round_number
        write_foreign_lock(tmp_path, datetime.now(UTC) - timedelta(minutes=1), appliance=appliance)
        barrier = threading.Barrier(takers, timeout=20)
        outcomes = []

        def take(number):
            lock = ApplianceLock(PathTarget(str(tmp_path)), appliance, {"host": "taker-%d" % number})
            barrier.wait()
            try:
                lock.acquire()
                outcomes.append(("won", lock.token))
            except LockBusy:
                outcomes.append(("busy", None))

        threads = [threading.Thread(target=take, args=(n,)) for n in range(takers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        winners = [token for outcome, token in outcomes if outcome == "won"]
        assert len(outcomes) == takers and len(winners) == 1, outcomes
        assert read_lock(tmp_path, appliance)["token"] == winners[0]
        assert sorted(os.listdir(tmp_path / appliance)) == ["lock"]


def test_refresh_is_rate_limited_and_extends_expiry(target, tmp_path):
    clock = Clock(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
    lock = ApplianceLock(target, "pam1", ttl=timedelta(minutes=30), clock=clock)
    lock.acquire()
    clock.now += timedelta(minutes=20)
    assert lock.refresh() is False  # just written (monotonic time): nothing to do
    assert read_lock(tmp_path)["expires"] == "2026-11-27T10:30:00Z"
    assert lock.refresh(force=True) is True
    doc = read_lock(tmp_path)
    assert doc["expires"] == "2026-11-27T10:50:00Z" and doc["started"] == "2026-11-27T10:00:00Z"
    assert sorted(os.listdir(tmp_path / "pam1")) == ["lock"]
    eager = ApplianceLock(target, "pam2", refresh_interval=timedelta(0))
    eager.acquire()
    assert eager.refresh() is True


def test_refresh_after_lock_removed_raises(target, tmp_path):
    lock = ApplianceLock(target, "pam1")
    lock.acquire()
    os.remove(tmp_path / "pam1" / "lock")
    with pytest.raises(LockBusy, match="removed"):
        lock.refresh(force=True)
    with pytest.raises(LockBusy, match="not held"):
        lock.refresh(force=True)


def test_unreadable_lock_is_busy_until_older_than_ttl(target, tmp_path):
    (tmp_path / "pam1").mkdir()
    (tmp_path / "pam1" / "lock").write_bytes(b"")  # a lock being written right now looks like this
    with pytest.raises(LockBusy, match="cannot be read"):
        ApplianceLock(target, "pam1", ttl=timedelta(minutes=5)).acquire()
    old = (datetime.now(UTC) - timedelta(minutes=10)).timestamp()
    os.utime(tmp_path / "pam1" / "lock", (old, old))
    lock = ApplianceLock(target, "pam1", ttl=timedelta(minutes=5))
    lock.acquire()
    assert lock.took_over == {"unreadable": True, "reason": "it expired"}


def test_context_manager_releases_on_error_and_keeps_the_error(target, tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ApplianceLock(target, "pam1"):
            assert (tmp_path / "pam1" / "lock").exists()
            raise RuntimeError("boom")
    assert not (tmp_path / "pam1" / "lock").exists()


def test_bad_arguments(target):
    with pytest.raises(ConfigError, match="ttl"):
        ApplianceLock(target, "pam1", ttl=timedelta(0))
    with pytest.raises(ConfigError, match="appliance name"):
        ApplianceLock(target, "../pam1")


# --- a holder on this host that is gone: taken over at once (crash-only) ----------------------------

_HOLD = r"""
import os, sys, time
sys.path[:0] = sys.argv[1:3]
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import ApplianceLock
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget
from datetime import timedelta
ApplianceLock(PathTarget(sys.argv[3]), "pam1", ttl=timedelta(hours=1)).acquire()
print("locked", flush=True)
if sys.argv[4] == "die":
    os._exit(0)  # like a kill -9: no release, no cleanup
time.sleep(60)
"""


def _hold_lock(tmp_path, how):
    """A real process that takes the lock for an hour, then dies at once or keeps running."""
    import subprocess
    import sys

    from tests.conftest import COLLECTIONS, ROOT

    process = subprocess.Popen([sys.executable, "-c", _HOLD, COLLECTIONS, ROOT, str(tmp_path), how],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_lock_of_a_dead_local_process_is_taken_over_at_once(target, tmp_path):
    holder = _hold_lock(tmp_path, "die")
    holder.wait(timeout=30)
    holder.stdout.close()
    stale = read_lock(tmp_path)
    assert stale["pid"] == holder.pid and stale["process"]["start"]
    lock = ApplianceLock(target, "pam1", ttl=timedelta(hours=1)).acquire()  # no waiting for the hour
    assert lock.took_over["run_id"] == stale["run_id"] and lock.took_over["reason"] == "its process is gone"
    lock.release()


def test_lock_of_a_killed_but_unreaped_process_is_taken_over(target, tmp_path):
    """A zombie (dead, its parent - here this test - has not waited for it yet) holds nothing."""
    holder = _hold_lock(tmp_path, "die")
    try:
        def state():
            with open("/proc/%d/stat" % holder.pid, encoding="ascii") as handle:
                return handle.read().rsplit(")", 1)[1].split()[0]

        deadline = time.monotonic() + 30
        while state() != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state() == "Z"
        lock = ApplianceLock(target, "pam1", ttl=timedelta(hours=1)).acquire()
        assert lock.took_over["reason"] == "its process is gone"
        lock.release()
    finally:
        holder.wait(timeout=30)
        holder.stdout.close()


def test_lock_of_a_live_local_process_is_respected(target, tmp_path):
    holder = _hold_lock(tmp_path, "live")
    try:
        with pytest.raises(LockBusy, match="pid %d" % holder.pid):
            ApplianceLock(target, "pam1", ttl=timedelta(hours=1)).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()


def test_reused_pid_does_not_keep_a_dead_run_locked(target, tmp_path):
    """The recorded pid now runs another process (ours, started at another time): the holder is gone."""
    mine = ApplianceLock(target, "other", ttl=timedelta(hours=1))
    doc = write_foreign_lock(tmp_path, datetime.now(UTC) + timedelta(hours=1), host="this-host", pid=os.getpid())
    doc["process"] = dict(mine.process, start=str(int(mine.process["start"]) - 1))
    (tmp_path / "pam1" / "lock").write_text(json.dumps(doc))
    lock = ApplianceLock(target, "pam1", ttl=timedelta(hours=1)).acquire()
    assert lock.took_over["reason"] == "its process is gone"
    lock.release()
    # and with the right start time, the same pid is a live holder
    doc["process"] = dict(mine.process)
    (tmp_path / "pam1" / "lock").write_text(json.dumps(doc))
    with pytest.raises(LockBusy):
        ApplianceLock(target, "pam1", ttl=timedelta(hours=1)).acquire()


@pytest.mark.parametrize("field", ["boot_id", "pid_namespace"])
def test_lock_from_another_kernel_or_namespace_keeps_the_ttl_rule(target, tmp_path, field):
    """A dead-looking pid means nothing elsewhere (another host, a container): only the ttl decides."""
    mine = ApplianceLock(target, "other", ttl=timedelta(hours=1))
    doc = write_foreign_lock(tmp_path, datetime.now(UTC) + timedelta(hours=1), pid=2 ** 22 + 7)  # no such pid
    doc["process"] = dict(mine.process, **{field: "elsewhere"})
    (tmp_path / "pam1" / "lock").write_text(json.dumps(doc))
    with pytest.raises(LockBusy, match="old-host"):
        ApplianceLock(target, "pam1", ttl=timedelta(hours=1)).acquire()
    doc["process"][field] = mine.process[field]  # same kernel and namespace: that pid is provably gone
    (tmp_path / "pam1" / "lock").write_text(json.dumps(doc))
    assert ApplianceLock(target, "pam1", ttl=timedelta(hours=1)).acquire().took_over["reason"] == "its process is gone"


def test_lock_that_cannot_be_read_while_written_is_busy(target, tmp_path, monkeypatch):
    """An SMB server refuses to open a file its writer holds (STATUS_SHARING_VIOLATION): a live lock."""
    from ansible_collections.segura.backup.plugins.module_utils._engine.errors import TargetInUse

    write_foreign_lock(tmp_path, datetime.now(UTC) - timedelta(hours=1))  # expired, yet being written

    def sharing_violation(relpath, limit=None):
        raise TargetInUse("smb://server/share/%s is open by another client (STATUS_SHARING_VIOLATION)" % relpath)

    monkeypatch.setattr(target, "read_bytes", sharing_violation)
    with pytest.raises(LockBusy, match="is being written: .*STATUS_SHARING_VIOLATION"):
        ApplianceLock(target, "pam1").acquire()
    assert read_lock(tmp_path)["run_id"] == "r-old"  # untouched


# --- the lock is created whole (found by the kill matrix) --------------------------------------------


class _DiesAtRename:
    """A real target on which the process 'dies' (an exception nothing catches) at the first rename."""

    def __init__(self, inner):
        self._inner = inner

    def rename(self, src, dst, replace=False):
        raise SystemExit("killed between writing the lock beside and renaming it")

    def remove(self, relpath):
        raise SystemExit("dead processes remove nothing")

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_a_run_killed_while_creating_the_lock_leaves_no_lock_and_the_next_run_clears_its_stray(target, tmp_path):
    (tmp_path / "pam1").mkdir()
    with pytest.raises(SystemExit):
        ApplianceLock(_DiesAtRename(target), "pam1").acquire()
    names = sorted(p.name for p in (tmp_path / "pam1").iterdir())
    assert len(names) == 1 and names[0].startswith("lock.") and names[0].endswith(".creating"), names
    # no lock (so nothing to wait for), and the stray goes with the next run that takes it
    lock = ApplianceLock(target, "pam1").acquire()
    assert lock.took_over is None
    assert sorted(p.name for p in (tmp_path / "pam1").iterdir()) == ["lock"]
    lock.release()


def test_a_lock_is_never_seen_half_written(target, tmp_path):
    """Readers see no lock or a whole one: the lock file appears only by its rename."""
    seen = []

    class Watching:
        def __init__(self, inner):
            self._inner = inner

        def write_bytes(self, relpath, data, exclusive=False):
            seen.append(os.path.exists(tmp_path / "pam1" / "lock"))
            return self._inner.write_bytes(relpath, data, exclusive=exclusive)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    (tmp_path / "pam1").mkdir()
    ApplianceLock(Watching(target), "pam1").acquire()
    assert seen == [False] and read_lock(tmp_path)["run_id"]


# --- the holder's timer, and the check right before publishing --------------------------------------


def _wait_for(condition, what, deadline=30.0):
    """Poll ``condition`` every 20 ms until it holds; fail after ``deadline`` seconds (bounded)."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "timed out waiting for %s" % what
        time.sleep(0.02)


def test_the_timer_keeps_the_lock_alive_while_the_holder_does_nothing(target, tmp_path):
    """A holder stalled in its source (no write for longer than the ttl) keeps its lock: the refresh runs
    on a timer thread, not on the write path. The clock is moved by hand; only the timer writes."""
    clock = Clock(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
    with ApplianceLock(target, "pam1", ttl=timedelta(minutes=10), refresh_interval=timedelta(seconds=0.05),
                       clock=clock) as lock:
        assert read_lock(tmp_path)["expires"] == "2026-11-27T10:10:00Z"
        clock.now += timedelta(minutes=8)  # the holder "stalls": it calls nothing at all
        _wait_for(lambda: read_lock(tmp_path)["expires"] == "2026-11-27T10:18:00Z", "the timer's refresh")
        clock.now += timedelta(minutes=8)  # past the first expiry: still held, refreshed again
        _wait_for(lambda: read_lock(tmp_path)["expires"] == "2026-11-27T10:26:00Z", "a second refresh")
        with pytest.raises(LockBusy, match="is locked by host"):
            ApplianceLock(PathTarget(str(tmp_path)), "pam1", clock=clock).acquire()
        lock.check()  # nothing lost
        keeper = lock._keeper
        assert keeper is not None and keeper.is_alive()
    assert not keeper.is_alive(), "the timer thread outlived the lock"
    assert not (tmp_path / "pam1" / "lock").exists()


def test_the_timer_finds_out_when_the_lock_was_taken_over_and_the_holder_stops(target, tmp_path):
    from ansible_collections.segura.backup.plugins.module_utils._engine.errors import LockLost

    clock = Clock()
    with ApplianceLock(target, "pam1", {"host": "slow"}, ttl=timedelta(minutes=1),
                       refresh_interval=timedelta(hours=1), clock=clock) as lock:
        later = Clock(clock.now + timedelta(minutes=2))  # the taker's view: the holder's ttl has passed
        taker = ApplianceLock(PathTarget(str(tmp_path)), "pam1", {"host": "fast"}, clock=later).acquire()
        lock.refresh_interval = timedelta(seconds=0.05)
        lock._wake()  # the timer's next tick, now
        _wait_for(lambda: lock.lost is not None, "the timer to find the lock lost")
        with pytest.raises(LockLost, match="taken over.*fast"):
            lock.check()
        assert not lock._keeper.is_alive()
    assert read_lock(tmp_path)["token"] == taker.token  # never removed by the run that lost it
    taker.release()


def test_confirm_before_publishing_refuses_a_lost_lock_and_names_who_took_it(target, tmp_path):
    from ansible_collections.segura.backup.plugins.module_utils._engine.errors import LockLost

    clock = Clock()
    lock = ApplianceLock(target, "pam1", {"host": "stalled"}, ttl=timedelta(minutes=1), clock=clock).acquire()
    clock.now += timedelta(minutes=2)
    taker = ApplianceLock(PathTarget(str(tmp_path)), "pam1", {"host": "pruner", "run_id": "prune-7"},
                          clock=clock).acquire()
    with pytest.raises(LockLost) as raised:
        lock.confirm()
    message = str(raised.value)
    assert "pam1" in message and "taken over" in message and "pruner" in message and "prune-7" in message
    assert "nothing was published" in message
    assert read_lock(tmp_path)["token"] == taker.token
    removed = ApplianceLock(target, "pam2").acquire()
    os.remove(tmp_path / "pam2" / "lock")
    with pytest.raises(LockLost, match="removed"):
        removed.confirm()


def test_confirm_refreshes_a_lock_that_still_holds(target, tmp_path):
    clock = Clock(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
    lock = ApplianceLock(target, "pam1", ttl=timedelta(minutes=10), clock=clock).acquire()
    clock.now += timedelta(minutes=5)
    lock.confirm()
    assert read_lock(tmp_path)["expires"] == "2026-11-27T10:15:00Z"
    assert lock.release() is True


class _RemoveFails(PathTarget):
    """A real path target whose removal of the lock fails (a share that turned read-only, a reader
    that holds the file open without delete sharing)."""

    def remove(self, relpath):
        if relpath.endswith("/lock"):
            from ansible_collections.segura.backup.plugins.module_utils._engine.errors import TargetError

            raise TargetError("%s: STATUS_SHARING_VIOLATION" % relpath)
        return super().remove(relpath)


def test_a_release_that_fails_after_the_work_is_done_is_a_warning(tmp_path):
    with _RemoveFails(str(tmp_path)) as failing:
        with ApplianceLock(failing, "pam1") as lock:
            lock._in_use_delays = (0.0,)
        assert lock.release_warning is not None
        assert "pam1/lock" in lock.release_warning and "STATUS_SHARING_VIOLATION" in lock.release_warning
        assert "expires" in lock.release_warning
        assert not lock._keeper.is_alive()
        with pytest.raises(RuntimeError, match="boom"):  # an error of the work is never masked
            with ApplianceLock(failing, "pam2"):
                raise RuntimeError("boom")
