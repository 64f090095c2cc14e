"""The appliance side fails while a snapshot streams: the dump is killed or refuses, a config file
vanishes or changes while it is read, the whole run is SIGKILLed.

Targets are local folders here (the servers are not what is broken). After every fault: the run
ended in ApplianceError (or died), nothing new looks complete, the earlier snapshot deep-verifies
byte for byte, the next run succeeds and prune (partial_grace 0) leaves no `.partial` behind.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.faults.conftest import (
    child_pids,
    HookedTarget,
    LabTarget,
    Trigger,
    deep_check_all,
    is_object_partial,
    prune_partials,
    sha256_file,
    snapshot_dir_files,
    snapshot_request,
)
from tests.lab import core


class LocalCase:
    """A local target folder with a good snapshot on it."""

    def __init__(self, folder, appliance, age_identity, **request_args):
        os.makedirs(folder, exist_ok=True)
        self.target = LabTarget("path", {"type": "path", "path": folder}, folder)
        self.identity_file = age_identity["identity_file"]
        self.request = snapshot_request(appliance, age_identity["recipient"], **request_args)
        with open_target(self.target.options) as client:
            self.good = take_snapshot(client, self.request)
        self.good_sha256 = sha256_file(os.path.join(folder, self.good["object"]))

    def broken_run(self, when, action, error=ApplianceError):
        trigger = Trigger(when, action)
        with open_target(self.target.options) as client:
            with pytest.raises(error) as failure:
                take_snapshot(HookedTarget(client, trigger), self.request)
        assert trigger.fired
        print("failed with: %s" % failure.value)
        return str(failure.value)

    def assert_nothing_lost(self, partial_left=False):
        listing = deep_check_all(self.target.options, self.identity_file)
        assert [r.id for r in listing.snapshots if r.complete] == [self.good["id"]]
        assert sha256_file(os.path.join(self.target.server_dir, self.good["object"])) == self.good_sha256
        leftovers = [n for n in snapshot_dir_files(self.target.server_dir) if self.good["id"] not in n]
        assert bool(leftovers) == partial_left, leftovers
        if not partial_left:  # the run failed cleanly: it released its lock
            assert not os.path.exists(os.path.join(self.target.appliance_dir(), "lock"))
        with open_target(self.target.options) as client:
            following = take_snapshot(client, self.request)
        prune_partials(self.target.options)
        left = snapshot_dir_files(self.target.server_dir)
        assert not [n for n in left if n.endswith(".partial")], left
        listing = deep_check_all(self.target.options, self.identity_file)
        assert sorted(r.id for r in listing.snapshots if r.complete) == sorted([self.good["id"], following["id"]])
        return following


def _after_bytes(count):
    return lambda event, relpath, written: event == "write" and is_object_partial(relpath) and written >= count


# ------------------------------------------------------------------------------------ the dump


def _dump_output_bytes(pid):
    try:
        with open("/proc/%d/io" % pid, encoding="utf-8") as handle:
            return int(dict(line.split(": ") for line in handle.read().splitlines())["wchar"])
    except (OSError, KeyError, ValueError):
        return 0


def test_dump_killed_mid_dump(fault_appliance, age_identity, tmp_path):
    """A watcher kills this run's mariadb-dump (found in /proc) once it has written 1 MiB."""
    case = LocalCase(str(tmp_path / "target"), fault_appliance, age_identity)
    killed = []
    stop = threading.Event()

    def watch():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for pid in child_pids(os.getpid(), "mariadb-dump") + child_pids(os.getpid(), "mysqldump"):
                if _dump_output_bytes(pid) >= 1024 * 1024:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with open_target(case.target.options) as client, pytest.raises(ApplianceError) as failure:
            take_snapshot(client, case.request)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert killed, "no running mariadb-dump was found to kill"
    message = str(failure.value)
    print("failed with: %s" % message)
    assert "dump" in message
    case.assert_nothing_lost()


def test_dump_of_a_missing_database_fails(fault_appliance, age_identity, tmp_path):
    case = LocalCase(str(tmp_path / "target"), fault_appliance, age_identity)
    bad = snapshot_request(fault_appliance, age_identity["recipient"])
    bad.layout.databases = ("mt4", "no_such_db")
    with open_target(case.target.options) as client, pytest.raises(ApplianceError) as failure:
        take_snapshot(client, bad)
    assert "no_such_db" in str(failure.value)
    case.assert_nothing_lost()


# ------------------------------------------------------------------------------------ config files


def _two_files(appliance):
    """a-big.bin (6 MiB, read first) and b-victim.conf, both config paths."""
    root = appliance["root"]
    with open(os.path.join(root, "a-big.bin"), "wb") as handle:
        handle.write(os.urandom(6 * 1024 * 1024))
    with open(os.path.join(root, "b-victim.conf"), "w", encoding="utf-8") as handle:
        handle.write("victim=1\n")
    return {"components": ("config",), "config_paths": ["a-big.bin", "b-victim.conf"]}


@pytest.mark.parametrize("change,words", [
    ("unlink-next", ("b-victim.conf", "vanished")),
    ("append", ("a-big.bin",)),
    ("truncate", ("a-big.bin", "shrank")),
])
def test_config_file_changes_while_read(fault_appliance, age_identity, tmp_path, change, words):
    files = _two_files(fault_appliance)
    case = LocalCase(str(tmp_path / "target"), fault_appliance, age_identity, **files)
    root = fault_appliance["root"]
    big, victim = os.path.join(root, "a-big.bin"), os.path.join(root, "b-victim.conf")

    def act():
        if change == "unlink-next":
            os.unlink(victim)
        elif change == "append":
            with open(big, "ab") as handle:
                handle.write(b"more")
        elif change == "truncate":
            os.truncate(big, 1024)

    message = case.broken_run(_after_bytes(1024 * 1024), act)
    for word in words:
        assert word in message, message
    if change == "unlink-next":  # put it back for the next run
        with open(victim, "w", encoding="utf-8") as handle:
            handle.write("victim=1\n")
    case.assert_nothing_lost()


def test_config_file_replaced_while_read_gives_the_old_copy(fault_appliance, age_identity, tmp_path):
    """A new file renamed over the one being read (how editors save): the open file is the old one,
    so the snapshot succeeds with the old content, consistently (no error is the right answer)."""
    files = _two_files(fault_appliance)
    case = LocalCase(str(tmp_path / "target"), fault_appliance, age_identity, **files)
    big = os.path.join(fault_appliance["root"], "a-big.bin")
    old_sha256 = sha256_file(big)

    def replace():
        with open(big + ".new", "wb") as handle:
            handle.write(os.urandom(1024))
        os.rename(big + ".new", big)

    trigger = Trigger(_after_bytes(1024 * 1024), replace)
    with open_target(case.target.options) as client:
        result = take_snapshot(HookedTarget(client, trigger), case.request)
    assert trigger.fired
    from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption
    from ansible_collections.segura.backup.plugins.module_utils._engine.archive.reader import ArchiveReader

    with open(os.path.join(case.target.server_dir, result["object"]), "rb") as handle:
        reader = ArchiveReader(handle, Decryption.identity_file(case.identity_file))
        stored = {info.name: content.read() for info, content in reader if info.type == "file"}
    import hashlib

    assert hashlib.sha256(stored["files/a-big.bin"]).hexdigest() == old_sha256
    deep_check_all(case.target.options, case.identity_file)


# ------------------------------------------------------------------------------------ SIGKILL


_DRIVER = r"""
import json, sys
from datetime import timedelta
args = json.load(sys.stdin)
sys.path[:0] = args["paths"]
from tests.faults.conftest import snapshot_request
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
request = snapshot_request(args["appliance"], args["recipient"])
with open_target(args["target"]) as target:
    take_snapshot(target, request)
print("finished")
"""


def test_snapshot_process_killed_leaves_a_lock_the_next_run_takes_over_at_once(fault_appliance, age_identity, tmp_path):
    case = LocalCase(str(tmp_path / "target"), fault_appliance, age_identity)
    snapshots = os.path.join(case.target.server_dir, case.good["appliance"], "snapshots")
    from tests.conftest import COLLECTIONS, ROOT

    process = subprocess.Popen([sys.executable, "-c", _DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        process.stdin.write(json.dumps({"paths": [COLLECTIONS, ROOT], "appliance": fault_appliance,
                                        "recipient": age_identity["recipient"], "target": case.target.options}))
        process.stdin.close()

        def partial_is_growing():
            names = [n for n in os.listdir(snapshots) if n.endswith(".partial")]
            return bool(names) and os.path.getsize(os.path.join(snapshots, names[0])) > 256 * 1024

        assert core.wait_for(lambda: partial_is_growing() or process.poll() is not None, 60, 0.01)
        assert process.poll() is None, "the run finished before it could be killed"
        dumps = child_pids(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()
    # The dump (if it still ran) dies with its parent (PR_SET_PDEATHSIG): no orphan keeps reading the DB.
    assert core.wait_for(lambda: not any(core.pid_alive(pid) for pid in dumps), 10)
    lock = os.path.join(case.target.appliance_dir(), "lock")
    assert os.path.exists(lock), "a SIGKILLed run cannot release its lock"
    with open(lock, encoding="utf-8") as handle:
        stale = json.load(handle)
    assert stale["pid"] == process.pid

    # The killed run's pid is gone from this host: the very next run takes the lock over, without
    # waiting for it to expire, and says whose lock it took.
    listing = deep_check_all(case.target.options, case.identity_file)
    assert [r.id for r in listing.snapshots if r.complete] == [case.good["id"]]
    with open_target(case.target.options) as client:
        following = take_snapshot(client, case.request)
    assert following["lock_taken_over"] is True
    assert following["lock_takeover"].endswith("pid %d, since %s): its process is gone"
                                               % (process.pid, stale["started"])), following["lock_takeover"]
    # ...and removed the killed run's partial object at once, not at the next prune
    assert [name for name in following["leftovers_removed"] if name.endswith(".partial")], following
    outcome = prune_partials(case.target.options)
    assert not outcome.plan.partials, "prune still found a partial the takeover should have removed"
    left = snapshot_dir_files(case.target.server_dir)
    assert not [n for n in left if n.endswith(".partial")], left
    listing = deep_check_all(case.target.options, case.identity_file)
    assert sorted(r.id for r in listing.snapshots if r.complete) == sorted([case.good["id"], following["id"]])
    assert not os.path.exists(lock)
