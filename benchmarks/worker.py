"""The collection's side of a benchmark, run in a child process so that its CPU time and peak memory
are accounted exactly like the shell baseline's (os.wait4 in the runner).

Reads one JSON job on stdin (stdin, because the job holds the SMB password) and prints one JSON
result on stdout. Jobs:
  {"op": "push", "target": {...}, "file": PATH, "name": NAME, "profile": PATH|null}
      stream a local file through Target.open_write in 1 MiB writes (optionally under cProfile)
  {"op": "snapshot", "target": {...}, "appliance": NAME, "root": DIR, "defaults_file": F,
   "recipient": "age1...", "components": [...], "db_method": "physical"|"logical"|null, "signing_key": F|null}
      snapshot.take_snapshot (signed with the OpenSSH ed25519 key F, as a deployment does)
  {"op": "restore", "target": {...}, "appliance": NAME, "root": DIR, "defaults_file": F, "identity": KEYFILE,
   "components": [...]|null, "restore_sessions": bool, "db_service": "mariadb"|"none", "db_datadir": DIR|null,
   "signers_file": F|null}
      restore.restore of the latest snapshot (trusting the keys pinned in the allowed-signers file F)
Run by benchmarks/run.py; not meant to be used by hand.
"""

import cProfile
import json
import os
import pstats
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, ".build", "collections"), REPO]
# run.py imported tests.conftest, which links the collection under .build/; importing it here would
# also import pytest, whose start-up (~0.15 s) no user of the collection pays.

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.progress import Progress  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import SigningKey, TrustPolicy, load_signers  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target  # noqa: E402

BLOCK = 1024 * 1024


def push(job):
    with open_target(job["target"]) as target, open(job["file"], "rb") as source:
        started = time.perf_counter()
        with target.open_write(job["name"]) as sink:
            while True:
                block = source.read(BLOCK)
                if not block:
                    break
                sink.write(block)
        return {"seconds": time.perf_counter() - started}


def snapshot(job):
    from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import SnapshotRequest, take_snapshot

    db = DatabaseConnection(defaults_file=job["defaults_file"], exclusive_defaults=True) if job.get("defaults_file") else None
    request = SnapshotRequest(appliance=job["appliance"], layout=ApplianceLayout(root=job["root"]),
                              encryption=Encryption.recipients_of([job["recipient"]]), db=db,
                              components=job["components"], db_method=job.get("db_method"),
                              signing_key=SigningKey.from_file(job["signing_key"]) if job.get("signing_key") else None)
    started = time.perf_counter()
    progress = _SessionsClock(started)
    with open_target(job["target"]) as target:
        done = take_snapshot(target, request, progress=progress)
    return {"seconds": done["duration"], "size": done["size"], "counts": done["counts"], "object": done["object"],
            "sessions_seconds": progress.sessions_done}


class _SessionsClock(Progress):
    """The engine's silent progress report, noting when the phase after "sessions" began."""

    def __init__(self, started):
        super().__init__()
        self.started = started
        self.current = None
        self.sessions_done = None

    def phase(self, name, total=None, count=None):
        if self.current == "sessions" and name != "sessions":
            self.sessions_done = time.perf_counter() - self.started
        self.current = name
        super().phase(name, total=total, count=count)


def restore(job):
    from ansible_collections.segura.backup.plugins.module_utils._engine.restore.apply import restore as run_restore
    from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest

    request = RestoreRequest(appliance=job["appliance"], layout=ApplianceLayout(root=job["root"]),
                             decryption=Decryption.identity_file(job["identity"]),
                             db=DatabaseConnection(defaults_file=job["defaults_file"], exclusive_defaults=True),
                             restore_sessions=job.get("restore_sessions", True), components=job.get("components"),
                             db_service=job.get("db_service", "mariadb"), db_datadir=job.get("db_datadir"),
                             trust=TrustPolicy(load_signers(path=job["signers_file"])) if job.get("signers_file") else None)
    started = time.perf_counter()
    with open_target(job["target"]) as target:
        done = run_restore(target, request)
    return {"seconds": time.perf_counter() - started, "durations": done.get("durations"),
            "physical": done.get("physical"), "verification": done.get("verification"),
            "object_reads": done.get("object_reads")}


def main():
    job = json.loads(sys.stdin.read())
    operation = {"push": push, "snapshot": snapshot, "restore": restore}[job["op"]]
    if job.get("profile"):
        profiler = cProfile.Profile()
        result = profiler.runcall(operation, job)
        profiler.dump_stats(job["profile"])
        with open(job["profile"] + ".txt", "w") as report:
            stats = pstats.Stats(job["profile"], stream=report)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(25)
    else:
        result = operation(job)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
