"""The kill matrix (#21 item 3): SIGKILL of the run's own process, of its `mariadb-dump` or `mariadb`
client, or of the server (smbd, nfs-ganesha) at five byte offsets each, during a snapshot, a sessions
sync, a deep verify, a prune and a restore.

Each run is tests/faults/kill_driver.py in a process of its own (so a killed run is really gone, as
a crashed module is). One calibration run per case measures the traffic (and, for a child victim,
the window in which that child is alive); the five offsets spread over it, first and last byte
included. After every kill:
- the very next run of the same phase succeeds at once (no waiting for a lock's ttl);
- nothing is left on the share: no partial object or recording, no lock, no takeover marker;
- no snapshot looks complete that is not: every snapshot listed is complete and deep-verifies,
  the earlier one included, and none was lost;
- a restore's next run leaves the databases equal to the source's (the fingerprint of the source
  server, not of a dump of the restore).
Servers killed are those of the private fault lab, by the PIDs it recorded, and restarted after.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import COLLECTIONS, ROOT
from tests.faults.conftest import deep_check_all
from tests.integration.test_restore import start_mariadb
from tests.lab import reference
from tests.unit.test_verification import make_snapshot

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
# The last offset aims at the last write or read: the totals of two runs differ by a few bytes (ids,
# times, compression), so it stays this far below the calibrated end (the sidecar alone is ~1.5 KiB).
END_MARGIN = 512
DRIVER_TIMEOUT = 240  # seconds for one run, killed or not
MEASURE = {"snapshot": "written", "sessions": "written", "verify": "read", "prune": "removed", "restore": "read"}
# (phase, victim, target kind): `module` = the run's own process, `server` = smbd or ganesha by kind
CASES = [
    ("snapshot", "module", "path"), ("snapshot", "mariadb-dump", "path"), ("snapshot", "server", "smb_signed"),
    ("snapshot", "server", "nfs_v3"),
    ("sessions", "module", "path"), ("sessions", "server", "smb_signed"), ("sessions", "server", "nfs_v3"),
    ("verify", "module", "path"), ("verify", "server", "nfs_v3"), ("verify", "server", "smb_signed"),
    ("prune", "module", "path"), ("prune", "server", "nfs_v3"),
    ("restore", "module", "path"), ("restore", "mariadb", "path"), ("restore", "server", "smb_signed"),
]


BIG_BYTES = 16 * 1024 * 1024  # incompressible: objects span many reads of the NFS reader's large blocks


@pytest.fixture(scope="module")
def kill_appliance(reference_appliance, tmp_path_factory):
    """The reference appliance (its databases) with one more config file of 16 MiB of random bytes."""
    root = str(tmp_path_factory.mktemp("kill-appliance") / "root")
    shutil.copytree(reference_appliance["root"], root, symlinks=True)
    with open(os.path.join(root, "etc", "senhasegura", "big.bin"), "wb") as handle:
        handle.write(os.urandom(BIG_BYTES))
    return dict(reference_appliance, root=root)


@pytest.fixture(scope="module")
def restore_destination(kill_appliance, tmp_path_factory):
    """Where restores go: a copy of the appliance's files and a MariaDB of its own."""
    base = tmp_path_factory.mktemp("kill-restore")
    server = start_mariadb(str(base / "db"))
    root = str(base / "appliance")
    shutil.copytree(kill_appliance["root"], root, symlinks=True)
    try:
        yield {"root": root, "defaults_file": server.defaults_file}
    finally:
        server.down()


class Matrix:
    def __init__(self, fault_lab, appliance, identity, destination, tmp_path):
        self.fault_lab = fault_lab
        self.appliance = appliance
        self.identity = identity
        self.destination = destination
        self.tmp_path = tmp_path

    def target(self, kind):
        if kind == "path":
            folder = str(self.tmp_path / "path-target")
            os.makedirs(folder, exist_ok=True)
            return {"type": "path", "path": folder}, folder
        made = self.fault_lab.target(kind)
        return made.options, made.server_dir

    def server_pids(self, kind):
        if kind.startswith("smb"):
            return self.fault_lab.smbd_pids()
        return [self.fault_lab.status()["ganesha"]["ganesha_pid"]]

    def drive(self, request):
        """One driver run; its JSON report, or {"killed_itself": True} when it SIGKILLed itself."""
        request = dict(request, paths=[COLLECTIONS, ROOT])
        process = subprocess.run([sys.executable, "-m", "tests.faults.kill_driver"], input=json.dumps(request),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                 timeout=DRIVER_TIMEOUT, check=False)
        lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
        if process.returncode == -9 and not lines:
            return {"killed_itself": True}
        assert lines, "driver exit %s: %s" % (process.returncode, process.stderr[-3000:])
        return json.loads(lines[-1])


@pytest.fixture(scope="module")
def matrix(fault_lab, kill_appliance, age_identity, restore_destination, tmp_path_factory):
    return Matrix(fault_lab, kill_appliance, age_identity, restore_destination, tmp_path_factory.mktemp("kill"))


def _leftovers(server_dir, appliance):
    """What a healed share must not hold below the appliance's folder."""
    found = []
    for folder, _dirs, files in os.walk(os.path.join(server_dir, appliance)):
        for name in files:
            if name.endswith((".partial", ".new")) or name == "lock" or name.startswith("lock."):
                found.append(os.path.relpath(os.path.join(folder, name), server_dir))
    return sorted(found)


def _complete_ids(options, appliance):
    with open_target(options) as client:
        listing = catalog.list_snapshots(client, appliance)
    return [r.id for r in listing.snapshots if r.complete]


def _plant_prunable(options, appliance, recipient, count=3):
    """Older snapshots for prune to remove, each with a recording only it references."""
    encryption = Encryption.recipients_of([recipient])
    now = datetime.now(timezone.utc)
    with open_target(options) as client:
        for days in range(1, count + 1):
            make_snapshot(client, now - timedelta(days=days), appliance=appliance, encryption=encryption,
                          sessions={"2025/0101/prunable-%d.arz" % days: os.urandom(2000 + days)})


@pytest.mark.parametrize("phase,victim,kind", CASES, ids=["-".join(case) for case in CASES])
def test_killed_at_five_offsets_the_next_run_heals(matrix, phase, victim, kind):
    options, server_dir = matrix.target(kind)
    identity_file = matrix.identity["identity_file"]
    base = {"phase": phase, "target": options, "recipient": matrix.identity["recipient"],
            "identity_file": identity_file, "measure": MEASURE[phase], "source": matrix.appliance,
            "destination": matrix.destination, "only_below": "sessions" if phase == "sessions" else None}
    appliance = "km-%s-%s" % (phase, victim.replace("-", ""))

    # the snapshot every later phase works on (and that must survive every kill)
    good = matrix.drive(dict(base, phase="snapshot", appliance=appliance, measure="written"))
    assert good["ok"], good
    base.update(appliance=appliance, snapshot_id=good["result"])
    if phase == "prune":
        _plant_prunable(options, appliance, matrix.identity["recipient"])

    child = victim if victim not in ("module", "server") else None
    calibration = matrix.drive(dict(base, window=[child] if child else [],
                                    appliance=appliance + "-0" if phase == "sessions" else appliance))
    assert calibration["ok"], calibration
    low, high = calibration["windows"][child] if child else (1, calibration["count"])
    assert high > low >= 1 if phase != "prune" else high >= low >= 1, calibration
    margin = 0 if phase == "prune" else min(END_MARGIN, (high - low) // 100)
    offsets = sorted({max(1, round(low + fraction * (high - margin - low))) for fraction in FRACTIONS})
    assert len(offsets) == 5 or phase == "prune", offsets

    bit = 0  # kills that ended the run (a kill after the last byte the run needed may let it finish)
    for number, offset in enumerate(offsets, 1):
        run = dict(base, offset=offset, victim="server" if victim == "server" else victim)
        if phase == "sessions":
            run["appliance"] = "%s-%d" % (appliance, number)  # recordings to upload, every time
        if phase == "prune":
            _plant_prunable(options, appliance, matrix.identity["recipient"])
        if victim == "server":
            run["server_pids"] = matrix.server_pids(kind)
            run["target"] = dict(options, timeout=2)  # the dead server fails the run in seconds
        before = _complete_ids(options, run["appliance"])
        started = time.monotonic()
        try:
            report = matrix.drive(run)
        finally:
            if victim == "server":  # also after a failure: the next cases need the servers
                matrix.fault_lab.restart()
        broken_seconds = time.monotonic() - started
        if not report.get("killed_itself"):
            assert report["fired"], ("the kill never fired", offset, report)
            assert victim == "module" or report["killed"], ("nothing to kill at offset", offset, report)
        bit += 1 if report.get("killed_itself") or not report["ok"] else 0
        print("\n%s/%s/%s offset %d of %d..%d, ended after %.1fs: %s" % (
            phase, victim, kind, offset, low, high, broken_seconds,
            "killed itself" if report.get("killed_itself") else (report.get("error") or "finished")[:160]))

        # the very next run, at once
        following = matrix.drive(dict(base, appliance=run["appliance"]))
        assert following["ok"], ("the run after the kill failed", offset, following.get("error"),
                                 following.get("traceback"))
        print("  next run ok after %.1fs" % (time.monotonic() - started))
        assert not _leftovers(server_dir, run["appliance"]), _leftovers(server_dir, run["appliance"])
        listing = deep_check_all(options, identity_file, appliance=run["appliance"])
        statuses = {r.id: r.status for r in listing.snapshots}
        assert set(statuses.values()) <= {catalog.STATUS_COMPLETE}, statuses
        after = [r.id for r in listing.snapshots]
        if phase == "prune":
            assert after == [good["result"]], after
        else:
            assert set(before) <= set(after), "a kill lost a complete snapshot: %s -> %s" % (before, after)
        if phase == "verify":
            assert following["result"] == {"ok": True, "problems": []}
        if phase == "restore":
            assert following["result"]["ok"], following["result"]
            source = reference.fingerprint_databases({"defaults_file": matrix.appliance["defaults_file"]})
            restored = reference.fingerprint_databases({"defaults_file": matrix.destination["defaults_file"]})
            assert restored == source, "the restore after the kill left databases unlike the source's"
    assert bit >= len(offsets) - 1, "only %d of %d kills ended their run: the matrix missed its aim" % (bit, len(offsets))
