"""segura.backup.break_lock run by ansible-playbook against the lab's servers (encrypted SMB share,
NFS v4.1 through nfs-ganesha, a local path): the lock of a run that died on another host is shown in
check mode, refused while it is still refreshed, and broken (with the dead run's partial object)
once it went silent."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.integration.playbook import run_task

APPLIANCE = "lock-case"


def _stamp(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _plant_foreign_lock(client, refreshed_ago, run_id):
    """What a run on an execution node that vanished leaves: its lock (15 min ttl) and a partial upload."""
    refreshed = datetime.now(timezone.utc) - refreshed_ago
    doc = {"appliance": APPLIANCE, "run_id": run_id, "host": "awx-node-gone", "pid": 4242,
           "started": _stamp(refreshed - timedelta(minutes=2)), "refreshed": _stamp(refreshed),
           "expires": _stamp(refreshed + timedelta(minutes=15)), "token": "f" * 32}
    client.makedirs(catalog.snapshots_dir(APPLIANCE))
    client.write_bytes(catalog.lock_path(APPLIANCE), json.dumps(doc).encode())


@pytest.mark.parametrize("kind", ["smb_encrypted", "nfs_v41", "path"])
def test_break_lock_shows_refuses_and_breaks(lab_target_factory, kind):
    target = lab_target_factory(kind)
    args = {"target": target.options, "appliance": APPLIANCE}
    partial = catalog.partial_name("%s/%s" % (catalog.snapshots_dir(APPLIANCE),
                                              catalog.object_name(datetime.now(timezone.utc), "0badc0de", True)))
    with open_target(target.options) as client:
        _plant_foreign_lock(client, timedelta(minutes=1), "r-live")
        client.write_bytes(partial, b"half an upload")

    # refreshed a minute ago: its run may still be writing, so not even force breaks it
    refused = run_task("segura.backup.break_lock", dict(args, force=True))
    assert refused.rc != 0 and refused.result["failed"] is True
    assert "refusing to break the lock" in refused.result["msg"] and "r-live" in refused.result["msg"], refused.output
    assert refused.result["holder"]["run_id"] == "r-live"
    looked = run_task("segura.backup.break_lock", dict(args, force=True), check=True)  # says why, does not fail
    assert looked.rc == 0 and looked.result["changed"] is False and looked.result["would_break"] is False
    assert "may still be writing" in looked.result["refusal"]

    with open_target(target.options) as client:
        _plant_foreign_lock(client, timedelta(minutes=6), "r-dead")
    unforced = run_task("segura.backup.break_lock", args)  # silent, but not stale: force is the operator's word
    assert unforced.rc != 0 and "set force" in unforced.result["msg"], unforced.output
    args["force"] = True
    shown = run_task("segura.backup.break_lock", args, check=True)
    assert shown.rc == 0, shown.output
    holder = shown.result["holder"]
    assert (holder["run_id"], holder["host"], holder["breakable"]) == ("r-dead", "awx-node-gone", True)
    assert shown.result["changed"] is True and shown.result["would_break"] is True and shown.result["broken"] is False
    assert "f" * 32 not in shown.output  # the ownership token is not reported

    wrong = run_task("segura.backup.break_lock", dict(args, run_id="r-other"))
    assert wrong.rc != 0 and "belongs to run r-dead, not to run r-other" in wrong.result["msg"]

    broken = run_task("segura.backup.break_lock", dict(args, run_id=holder["run_id"]))
    assert broken.rc == 0, broken.output
    assert broken.result["changed"] is True and broken.result["broken"] is True
    assert broken.result["leftovers_removed"] == [partial]
    with open_target(target.options) as client:
        assert not client.exists(catalog.lock_path(APPLIANCE)) and not client.exists(partial)

    again = run_task("segura.backup.break_lock", args)
    assert again.rc == 0 and again.result["changed"] is False and again.result["holder"] is None
