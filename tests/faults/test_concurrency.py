"""Runs at the same time, on the shared lab (nothing is broken here, so the shared servers are fine).

- Two runs for the same appliance: the second is refused with LockBusy while the first writes, the
  first completes, and exactly one new sidecar appears. Made deterministic by starting the second
  run from inside the first one's upload (the hook only picks the moment; both are real runs with
  their own connections).
- The same with two real ansible-playbook processes started together: whichever takes the lock is held
  inside its dump (a table write-locked from another session) until the other has met the lock, so
  contention happens for certain: one succeeds, one fails with LockBusy, one new sidecar.
- Five appliances on one share at once (five ansible-playbook processes): all succeed.
"""

import concurrent.futures
import os
import threading

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import LockBusy
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.faults.conftest import (
    APPLIANCE_NAME,
    HookedTarget,
    Trigger,
    deep_check_all,
    is_object_partial,
    snapshot_args,
    snapshot_dir_files,
    snapshot_request,
)
from tests.integration.playbook import run_task


def _sidecars(target, appliance=APPLIANCE_NAME):
    return [n for n in snapshot_dir_files(target.server_dir, appliance)
            if n.endswith(".json") and not n.endswith((".sessions.json", ".verify.json"))]


@pytest.mark.parametrize("kind", ["smb_encrypted", "nfs_v41", "path"])
def test_second_run_for_the_same_appliance_is_refused_while_the_first_writes(
        lab_target_factory, reference_appliance, age_identity, kind):
    target = lab_target_factory(kind)
    request = snapshot_request(reference_appliance, age_identity["recipient"])
    refusals = []

    def second_run():
        with open_target(target.options) as other:
            try:
                take_snapshot(other, request)
            except LockBusy as exc:
                refusals.append(str(exc))

    trigger = Trigger(lambda event, relpath, count: event == "write" and is_object_partial(relpath) and count > 0,
                      second_run)
    with open_target(target.options) as client:
        first = take_snapshot(HookedTarget(client, trigger), request)
    assert trigger.fired
    assert len(refusals) == 1, "the second run was not refused"
    assert "locked" in refusals[0]
    assert _sidecars(target) == [os.path.basename(first["sidecar"])]
    assert not [n for n in snapshot_dir_files(target.server_dir) if n.endswith(".partial")]
    listing = deep_check_all(target.options, age_identity["identity_file"])
    assert [r.id for r in listing.snapshots] == [first["id"]]


def _parallel(calls):
    """Run each zero-argument call in its own thread, all at once; return their results in order."""
    results = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def work(index, call):
        barrier.wait(timeout=60)
        results[index] = call()

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_two_playbook_runs_at_once_never_both_write(lab_target_factory, reference_appliance, age_identity):
    """Contention for certain, whatever the machine's load: a table write-locked from a second MariaDB
    session keeps whichever run takes the appliance lock first inside its dump, so the other one meets
    the held lock; the table is released only once that other run has ended."""
    from tests.faults.test_cancel import table_held

    target = lab_target_factory("smb_signed")
    args = snapshot_args(reference_appliance, target, {"recipients": [age_identity["recipient"]]})
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        with table_held(reference_appliance["defaults_file"]):
            runs = [pool.submit(run_task, "segura.backup.snapshot", args) for _run in range(2)]
            done, _pending = concurrent.futures.wait(runs, timeout=300, return_when=concurrent.futures.FIRST_COMPLETED)
            assert len(done) == 1, "both runs ended while one of them had to wait on the held table"
        results = [run.result(timeout=300) for run in runs]
    refused = [run for run in results if run.rc != 0]
    succeeded = [run for run in results if run.rc == 0]
    assert len(refused) == 1 and len(succeeded) == 1, [run.output for run in results]
    assert refused[0].result.get("error") == "LockBusy", refused[0].output
    assert "is locked by host" in refused[0].result["msg"]
    assert _sidecars(target) == [os.path.basename(succeeded[0].result["snapshot"]["sidecar"])]
    listing = deep_check_all(target.options, age_identity["identity_file"])
    assert [r.id for r in listing.snapshots if r.complete] == [succeeded[0].result["snapshot"]["id"]]


def test_five_appliances_on_one_share_at_once(lab_target_factory, reference_appliance, age_identity):
    target = lab_target_factory("smb_encrypted")
    names = ["fleet-%d" % number for number in range(1, 6)]

    def run_for(name):
        appliance = dict(reference_appliance, name=name)
        args = snapshot_args(appliance, target, {"recipients": [age_identity["recipient"]]},
                             components=("config", "secrets"))  # five dumps at once would only cost time
        return lambda: run_task("segura.backup.snapshot", args)

    runs = _parallel([run_for(name) for name in names])
    for name, run in zip(names, runs):
        assert run.rc == 0, (name, run.output)
        assert run.result["snapshot"]["appliance"] == name
    for name in names:
        assert len(_sidecars(target, name)) == 1
        listing = deep_check_all(target.options, age_identity["identity_file"], appliance=name)
        assert [r.status for r in listing.snapshots] == ["complete"]
        assert not os.path.exists(os.path.join(target.server_dir, name, "lock"))
