"""One run of one phase (snapshot, sessions, verify, prune, restore) through the engine, in a process of
its own, that SIGKILLs its victim the moment its traffic with the target crosses a byte offset.

Run by tests/faults/test_kill_matrix.py as `python -m tests.faults.kill_driver` with a JSON request on
stdin; prints one JSON line (what it counted, whether and what it killed, how the run ended) unless it
killed itself. The victim is this very process (as an OOM kill or a crash would end the module), a child
of it by name (`mariadb-dump` during a snapshot, the `mariadb` client loading a restore), or the
server's processes by the PIDs the test gives. The traffic counted is bytes written to the target
(snapshot, sessions: only files below sessions/), bytes read from it (verify, restore: both passes), or
files removed from it (prune). With ``window`` the driver also reports, per child name, the first and
last count at which such a child was alive: the test uses it to aim at that child.
"""

import json
import os
import posixpath
import signal
import sys
import traceback
from datetime import timedelta

# Long, so that a next run that goes ahead proves the dead run's lock was judged gone, not expired.
LOCK_TTL = timedelta(minutes=30)


class Meter:
    """Counts the traffic and fires the kill once, when the count reaches ``offset``."""

    def __init__(self, request):
        self.offset = request.get("offset")
        self.victim = request.get("victim")
        self.server_pids = request.get("server_pids") or []
        self.watch = request.get("window") or []
        self.count = 0
        self.fired = False
        self.killed = []
        self.windows = {}
        # imported here: the fault suite's conftest needs the collection on sys.path (main() puts it there)
        from tests.faults.conftest import child_pids
        self._child_pids = child_pids

    def add(self, amount):
        self.count += amount
        for name in self.watch:
            if self._child_pids(os.getpid(), name):
                low, high = self.windows.get(name, (self.count, self.count))
                self.windows[name] = (min(low, self.count), max(high, self.count))
        if self.offset is not None and not self.fired and self.count >= self.offset:
            self.fired = True
            self.kill()
        elif self.fired and not self.killed and self.victim not in ("module", "server"):
            # The target's writes run on a thread behind the stream (WriteBehind), so the byte at the
            # window's first offset may go out a moment before the child has exec'd under its name:
            # the kill then lands at the next write at which the child is alive.
            self.kill()

    def kill(self):
        if self.victim == "module":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.victim == "server":
            pids = self.server_pids
        else:
            pids = self._child_pids(os.getpid(), self.victim)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
            except ProcessLookupError:
                pass


class _Handle:
    def __init__(self, inner, on_bytes):
        self._inner = inner
        self._on_bytes = on_bytes

    def write(self, data):
        written = self._inner.write(data)
        self._on_bytes(len(data) if written is None else written)
        return written

    def read(self, *args):
        data = self._inner.read(*args)
        self._on_bytes(len(data))
        return data

    def readinto(self, buffer):
        count = self._inner.readinto(buffer)
        self._on_bytes(count or 0)
        return count

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)


class MeteredTarget:
    """A real target whose traffic of one kind ('written', 'read', 'removed') goes to a Meter."""

    def __init__(self, inner, meter, measure, only_below=None):
        self._inner = inner
        self._meter = meter
        self._measure = measure
        self._only_below = only_below

    def _counts(self, relpath, kind):
        # The lock's release is not the run's traffic (a kill there comes after the run ended); its
        # creation is (a kill there once left an empty lock that blocked for the whole ttl).
        if kind == "removed" and posixpath.basename(relpath).startswith("lock"):
            return False
        # The catalog index is refreshed after the run published (a cache; a kill there is healed by the
        # next refresh): counting it would move the last offsets off the sidecar's publication.
        if posixpath.basename(relpath).startswith("catalog.json"):
            return False
        return kind == self._measure and (self._only_below is None or ("/%s/" % self._only_below) in relpath)

    def open_write(self, relpath, exclusive=False):
        handle = self._inner.open_write(relpath, exclusive=exclusive)
        return _Handle(handle, self._meter.add if self._counts(relpath, "written") else lambda n: None)

    def write_bytes(self, relpath, data, exclusive=False):
        with self.open_write(relpath, exclusive=exclusive) as handle:
            handle.write(data)

    def open_read(self, relpath):
        handle = self._inner.open_read(relpath)
        return _Handle(handle, self._meter.add if self._counts(relpath, "read") else lambda n: None)

    def remove(self, relpath):
        result = self._inner.remove(relpath)
        if self._counts(relpath, "removed"):
            self._meter.add(1)
        return result

    def __getattr__(self, name):
        return getattr(self._inner, name)


def run_phase(request, target):
    """The phase's engine call, as the modules make it."""
    from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, retention
    from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
    from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection
    from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption
    from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import prune
    from ansible_collections.segura.backup.plugins.module_utils._engine.restore.apply import restore
    from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
    from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import take_snapshot
    from ansible_collections.segura.backup.plugins.module_utils._engine.verification import verify_snapshot
    from tests.faults.conftest import snapshot_request
    from tests.integration.conftest import appliance_trust

    phase, appliance = request["phase"], request["appliance"]
    if phase in ("snapshot", "sessions"):
        components = ("database", "config", "secrets") if phase == "snapshot" else ("config", "sessions")
        snapshot = request["source"]
        return take_snapshot(target, snapshot_request(snapshot, request["recipient"], components=components,
                                                      name=appliance, lock_ttl=LOCK_TTL))["id"]
    if phase == "verify":
        record = [r for r in catalog.list_snapshots(target, appliance).snapshots if r.id == request["snapshot_id"]][0]
        decryption = Decryption.identity_file(request["identity_file"])
        result = verify_snapshot(target, record, mode="deep", decryption=decryption, check_session_hashes=True)
        if not result.ok:  # verify reports problems instead of raising: a failed verify is a failed run
            raise RuntimeError("verify failed: %s" % "; ".join(result.problems))
        return {"ok": result.ok, "problems": result.problems}
    if phase == "prune":
        (outcome,) = prune(target, retention.Policy(keep_last=1), appliance=appliance, lock_ttl=LOCK_TTL)
        if outcome.error:
            raise RuntimeError(outcome.error)
        return outcome.to_dict()["after"]
    if phase == "restore":
        destination = request["destination"]
        restored = restore(target, RestoreRequest(
            appliance=appliance, layout=ApplianceLayout(root=destination["root"]),
            decryption=Decryption.identity_file(request["identity_file"]),
            db=DatabaseConnection(defaults_file=destination["defaults_file"], exclusive_defaults=True),
            components=("database", "config"),
            trust=appliance_trust(request["source"], appliance)))
        return restored["verification"]
    raise ValueError("unknown phase %r" % phase)


class WritesInline:
    """WriteBehind's interface, its writes made in the caller's thread.

    For a child victim only. The calibration maps the child's lifetime (mariadb-dump's) to bytes
    written to the target; behind WriteBehind's queue (64 writes of 64 KiB) those bytes trail the
    child's output by a varying amount, so an offset inside the calibrated window could come after
    the child had ended (CI failed so twice). Inline, the offset is inside the child's lifetime and
    the kill lands mid-dump, which is what the case is for. The module and server cases keep the thread.
    """

    def __init__(self, sink, **kwargs):
        self._sink = sink

    def write(self, data):
        return self._sink.write(bytes(data))

    def flush(self):
        pass

    def close(self):
        pass

    def abort(self):
        pass


def main():
    request = json.load(sys.stdin)
    sys.path[:0] = request["paths"]
    from ansible_collections.segura.backup.plugins.module_utils._engine import snapshot
    from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target

    if request.get("window") or request.get("victim") not in (None, "module", "server"):  # a child's calibration or kill
        snapshot.WriteBehind = WritesInline

    meter = Meter(request)
    report = {"ok": False}
    try:
        with open_target(request["target"]) as inner:
            target = MeteredTarget(inner, meter, request["measure"], request.get("only_below"))
            report["result"] = run_phase(request, target)
            report["ok"] = True
    except Exception as exc:  # the run's own failure is the point: report it, one line
        report["error"] = "%s: %s" % (type(exc).__name__, exc)
        report["traceback"] = traceback.format_exc()[-4000:]
    report.update(count=meter.count, fired=meter.fired, killed=meter.killed, windows=meter.windows)
    print(json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    main()
