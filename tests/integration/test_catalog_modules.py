"""segura.backup.backup_info, verify and prune, run by ansible-playbook against the lab's servers:
the encrypted SMB share, NFS v4.1 (nfs-ganesha) and a local path.

Every target holds one real snapshot taken by the snapshot module from the reference appliance
(with session recordings), four older real snapshot objects of the same appliance (built by the
archive writer with creation times one to four days back, each referencing a recording of its
own), a snapshot of a second appliance two days old, and one recording nobody references.
Damage is done through the target's own protocol client (never behind nfs-ganesha's back).

Run: .venv/bin/pytest tests/integration/test_catalog_modules.py
"""

import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import age, catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.integration.conftest import APPLIANCE_NAME, snapshot_args
from tests.integration.playbook import run_task
from tests.lab import reference
from tests.unit.test_verification import make_snapshot, signers_for

KINDS = ["smb_encrypted", "nfs_v41", "path"]
STALE_APPLIANCE = "stale-appliance"
STRAY = "%s/sessions/2025/0101/stray.arz" % APPLIANCE_NAME
STALE_QUERY = ("appliances[?latest_complete.age_seconds > `93600`].latest_complete"
               ".{appliance: appliance, id: id, created: created, age_seconds: age_seconds}")


class Populated:
    def __init__(self, target, real_id, old_ids, stale_id, identity, signers=""):
        self.target = target
        self.signers = signers
        self.real_id = real_id
        self.old_ids = old_ids  # 1, 2, 3, 4 days old
        self.stale_id = stale_id
        self.identity = identity

    def run(self, module, check=False, diff=False, **args):
        args.setdefault("target", self.target.options)
        if module == "verify":  # the real snapshot is signed by the appliance's key, the made-up ones by SIGNER
            args.setdefault("trust", {"signers": self.signers})
        extra = {"ANSIBLE_DIFF_ALWAYS": "1"} if diff else None
        return run_task("segura.backup." + module, args, check=check, extra_env=extra)

    def client(self):
        return open_target(self.target.options)


@pytest.fixture(params=KINDS)
def populated(request, lab_target_factory, reference_appliance, age_identity):
    target = lab_target_factory(request.param)
    encryption = {"recipients": [age_identity["recipient"]]}
    taken = run_task("segura.backup.snapshot", snapshot_args(
        reference_appliance, target, encryption, components=("database", "config", "secrets", "sessions")))
    assert taken.rc == 0, taken.output
    real_id = taken.result["snapshot"]["id"]
    now = datetime.now(timezone.utc)
    engine_encryption = Encryption.recipients_of([age_identity["recipient"]])
    with open_target(target.options) as client:
        old_ids = [make_snapshot(client, now - timedelta(days=days, hours=1), appliance=APPLIANCE_NAME,
                                 encryption=engine_encryption,
                                 sessions={"2025/0101/old-%d.arz" % days: os.urandom(3000 + days)}).id
                   for days in (1, 2, 3, 4)]
        stale_id = make_snapshot(client, now - timedelta(days=2), appliance=STALE_APPLIANCE,
                                 encryption=engine_encryption).id
        client.write_bytes(STRAY, b"a recording no snapshot references")
    signers = (reference.signers_text(reference_appliance["root"], APPLIANCE_NAME)
               + signers_for(APPLIANCE_NAME, STALE_APPLIANCE))
    return Populated(target, real_id, old_ids, stale_id, age_identity, signers)


def _records(result, appliance=APPLIANCE_NAME):
    return [s for s in result["snapshots"] if s["appliance"] == appliance]


def _path_of(populated, snap_id, suffix, appliance=APPLIANCE_NAME):
    """Target-relative path of one of a snapshot's files, from a fresh listing."""
    with populated.client() as client:
        record = catalog.list_snapshots(client, appliance).find(snap_id)[0]
    return "%s/%s%s" % (catalog.snapshots_dir(appliance), record.stem, suffix)


def _index_use(result):
    return {a["name"]: a["index"] for a in result["appliances"]}


def _without_ages(result):
    return [{k: v for k, v in s.items() if k != "age_seconds"} for s in result["snapshots"]]


def _zero_sha256(sidecar):
    doc = json.loads(sidecar)
    doc["sha256"] = "0" * 64
    return json.dumps(doc).encode()


def _rewrite(populated, relpath, change):
    with populated.client() as client:
        data = client.read_bytes(relpath, limit=1 << 30)
        client.write_bytes(relpath, change(data))


# ------------------------------------------------------------------ list, verify, prune


def test_list_verify_and_prune(populated):
    everything = populated.target.listing(folder_times=True)

    # backup_info: every appliance, newest first, with the staleness query of the module's EXAMPLES
    info = populated.run("backup_info", query=STALE_QUERY)
    assert info.rc == 0 and info.result["changed"] is False, info.output
    ours = _records(info.result)
    assert [s["id"] for s in ours] == [populated.real_id] + populated.old_ids
    assert all(s["status"] == "complete" for s in info.result["snapshots"]) and info.result["complete"]
    newest = ours[0]
    assert "sessions" in newest["components"] and newest["sessions_list"] is True
    assert newest["versions"]["tool"] and newest["sha256"] and newest["age_seconds"] < 3600
    assert 4 * 86400 < ours[-1]["age_seconds"] < 5 * 86400
    assert [a["name"] for a in info.result["appliances"]] == [APPLIANCE_NAME, STALE_APPLIANCE]
    # the snapshot module indexed its own snapshot; the four made by hand were read, as was the other appliance
    assert _index_use(info.result) == {APPLIANCE_NAME: {"state": "used", "from_index": 1, "read": 4},
                                       STALE_APPLIANCE: {"state": "missing", "from_index": 0, "read": 1}}
    slim = populated.run("backup_info", query=STALE_QUERY, include_snapshots=False)
    assert slim.rc == 0 and "snapshots" not in slim.result, slim.output
    assert [(q["appliance"], q["id"]) for q in slim.result["query_result"]] == [(STALE_APPLIANCE, populated.stale_id)]
    assert [a["name"] for a in slim.result["appliances"]] == [APPLIANCE_NAME, STALE_APPLIANCE]
    assert slim.result["appliances"][0]["latest_complete"]["id"] == populated.real_id
    ids = populated.run("backup_info", appliance=APPLIANCE_NAME, query="snapshots[].id", include_snapshots=False)
    assert ids.result["query_result"] == [populated.real_id] + populated.old_ids  # the query still sees them
    unindexed = populated.run("backup_info", use_index=False)
    assert "index" not in unindexed.result["appliances"][0]
    assert _without_ages(unindexed.result) == _without_ages(info.result)
    assert info.result["query_result"] == [{
        "appliance": STALE_APPLIANCE, "id": populated.stale_id,
        "created": _records(info.result, STALE_APPLIANCE)[0]["created"],
        "age_seconds": _records(info.result, STALE_APPLIANCE)[0]["age_seconds"]}]
    sessions = populated.run("backup_info", appliance=APPLIANCE_NAME, include_sessions=True)
    report = sessions.result["sessions"][APPLIANCE_NAME]
    assert [o["path"] for o in report["orphaned"]] == [STRAY] and report["problem"] is None
    assert report["files"] == newest["sessions"]["count"] + 4 + 1

    # verify in check mode: verifies, stores nothing
    checked = populated.run("verify", check=True, select="all")
    assert checked.rc == 0 and checked.result["changed"] is False and checked.result["verified_count"] == 6
    assert all(s["ok"] and not s["recorded"] for s in checked.result["snapshots"])
    assert populated.target.listing(folder_times=True) == everything

    quick = populated.run("verify", select="all")
    assert quick.rc == 0 and quick.result["changed"] is True and quick.result["failed_count"] == 0, quick.output
    deep = populated.run("verify", mode="deep", check_session_hashes=True,
                         decryption={"identity_file": populated.identity["identity_file"]})
    assert deep.rc == 0, deep.output
    assert sorted(s["id"] for s in deep.result["snapshots"]) == sorted([populated.real_id, populated.stale_id])
    real = [s for s in deep.result["snapshots"] if s["id"] == populated.real_id][0]
    assert real["checks"]["sessions"]["hashed"] == real["checks"]["sessions"]["referenced"] > 0
    assert real["checks"]["archive"]["members"] > 3
    assert populated.identity["secret"] not in deep.output
    listed = populated.run("backup_info", appliance=APPLIANCE_NAME)
    # verify brought the index up to date: five sidecars and five verification records, nothing read
    assert _index_use(listed.result) == {APPLIANCE_NAME: {"state": "used", "from_index": 10, "read": 0}}
    assert _without_ages(populated.run("backup_info", appliance=APPLIANCE_NAME, use_index=False).result) == \
        _without_ages(listed.result)
    verifications = {s["id"]: s["verification"] for s in listed.result["snapshots"]}
    assert verifications[populated.real_id]["mode"] == "deep" and verifications[populated.real_id]["ok"]
    assert verifications[populated.old_ids[0]]["mode"] == "quick"

    # prune in check mode with --diff: the plan, and nothing touched
    before = populated.target.listing(folder_times=True)
    plan = populated.run("prune", check=True, diff=True, appliance=APPLIANCE_NAME, keep_daily=2)
    assert plan.rc == 0 and plan.result["changed"] is True, plan.output
    assert populated.target.listing(folder_times=True) == before
    planned = plan.result["appliances"][0]
    assert [k["id"] for k in planned["kept"]] == [populated.real_id, populated.old_ids[0]]
    assert planned["kept"][0]["reasons"] == ["newest complete", "daily snapshot"]
    assert [r["id"] for r in planned["removed"]] == populated.old_ids[1:]
    assert sorted(planned["sessions_removed"]) == sorted(
        ["%s/sessions/2025/0101/old-%d.arz" % (APPLIANCE_NAME, d) for d in (2, 3, 4)] + [STRAY])
    assert plan.result["diff"]["after"] == {APPLIANCE_NAME: [populated.real_id, populated.old_ids[0]]}
    assert plan.result["diff"]["before"] == {APPLIANCE_NAME: [populated.real_id] + populated.old_ids}
    assert "--- before" in plan.stdout and populated.old_ids[3] in plan.stdout

    # prune for real: exactly the plan
    done = populated.run("prune", appliance=APPLIANCE_NAME, keep_daily=2)
    assert done.rc == 0 and done.result["changed"] is True, done.output
    result = done.result["appliances"][0]
    for key in ("kept", "removed", "sessions_removed", "after", "bytes_freed"):
        assert result[key] == planned[key], key
    assert done.result["bytes_freed"] > 3 * 3000
    after = populated.run("backup_info", include_sessions=True)
    assert [s["id"] for s in _records(after.result)] == [populated.real_id, populated.old_ids[0]]
    assert [s["id"] for s in _records(after.result, STALE_APPLIANCE)] == [populated.stale_id]
    assert _index_use(after.result)[APPLIANCE_NAME] == {"state": "used", "from_index": 4, "read": 0}  # after prune
    assert after.result["sessions"][APPLIANCE_NAME]["orphaned"] == []
    again = populated.run("prune", appliance=APPLIANCE_NAME, keep_daily=2)
    assert again.rc == 0 and again.result["changed"] is False and again.result["removed_count"] == 0
    assert populated.run("verify", select="all", mode="deep",
                         decryption={"identity_file": populated.identity["identity_file"]}).rc == 0


# ------------------------------------------------------------------ damage


def test_damage_is_detected(populated):
    flipped, truncated, lost_session, wrong_key = populated.old_ids
    _rewrite(populated, _path_of(populated, flipped, ".tar.zst.age"),
             lambda data: data[:-200] + bytes([data[-200] ^ 0x40]) + data[-199:])
    _rewrite(populated, _path_of(populated, truncated, ".tar.zst.age"), lambda data: data[:-1000])
    with populated.client() as client:
        client.remove("%s/sessions/2025/0101/old-3.arz" % APPLIANCE_NAME)
    _rewrite(populated, _path_of(populated, populated.real_id, ".json"), _zero_sha256)

    decryption = {"identity_file": populated.identity["identity_file"]}
    deep = populated.run("verify", select="all", mode="deep", decryption=decryption, fail_on_error=False)
    assert deep.rc == 0 and deep.result["failed_count"] == 4, deep.output
    problems = {s["id"]: " | ".join(s["problems"]) for s in deep.result["snapshots"]}
    assert "corrupt" in problems[flipped] or "tampered" in problems[flipped], problems[flipped]
    assert "sidecar says" in problems[truncated]
    assert problems[lost_session] == "1 referenced session file(s) missing: %s/sessions/2025/0101/old-3.arz" % APPLIANCE_NAME
    assert "sidecar" in problems[populated.real_id]
    assert problems[wrong_key] == "" and problems[populated.stale_id] == ""

    quick = populated.run("verify", select="all")
    assert quick.rc != 0 and quick.result["failed"] is True
    assert quick.result["msg"].startswith("3 of 6 snapshot(s) failed verification")
    failed = {s["id"] for s in quick.result["snapshots"] if not s["ok"]}
    assert failed == {flipped, truncated, populated.real_id}  # a missing recording is not quick's job

    other_key = {"identities": [age.generate_identity()[0]]}
    keyed = populated.run("verify", select="ids", ids=[wrong_key], mode="deep", decryption=other_key)
    assert keyed.rc != 0
    assert keyed.result["snapshots"][0]["problems"] == [
        "the object cannot be opened: no identity matches this archive's recipients"]
    assert other_key["identities"][0] not in keyed.output

    # every verdict was stored beside its snapshot: backup_info shows them
    info = populated.run("backup_info")
    stored = {s["id"]: s["verification"] for s in info.result["snapshots"]}
    assert stored[wrong_key]["ok"] is False and stored[populated.stale_id]["ok"] is True
    truncated_record = [s for s in info.result["snapshots"] if s["id"] == truncated][0]
    assert truncated_record["status"] == "damaged"


# ------------------------------------------------------------------ refusal


def test_prune_refuses_an_incomplete_listing(populated):
    """SMB: the share's account (not root) is denied the folder, as an ACL would. nfs-ganesha squashes
    nobody and root reads any local folder, so there an appliance's 'snapshots' is a file instead of
    a folder: listing it fails the same way."""
    kind = populated.target.kind
    server_dir = populated.target.server_dir
    denied = os.path.join(server_dir, STALE_APPLIANCE, "snapshots")
    if kind.startswith("smb"):
        os.chmod(denied, 0)
    else:
        with populated.client() as client:
            client.write_bytes("broken-appliance/snapshots", b"not a folder")
    try:
        refused = populated.run("prune", keep_last=1)
        assert refused.rc != 0 and refused.result["failed"] is True
        errors = {a["appliance"]: a["error"] for a in refused.result["appliances"]}
        broken = STALE_APPLIANCE if kind.startswith("smb") else "broken-appliance"
        assert "the snapshot listing is incomplete" in errors[broken], refused.result["msg"]
        assert errors[APPLIANCE_NAME] is None  # the others were pruned
        assert len(_records(populated.run("backup_info", appliance=APPLIANCE_NAME).result)) == 1
        assert len(os.listdir(os.path.join(server_dir, STALE_APPLIANCE, "snapshots"))) == 3  # untouched (object, sidecar, signature)
    finally:
        if kind.startswith("smb"):
            os.chmod(denied, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP)


@pytest.mark.parametrize("populated", ["smb_encrypted"], indirect=True)
def test_prune_refuses_when_a_kept_sidecar_cannot_be_read(populated):
    """Only an SMB server denies a file to its account while the tests run as root."""
    sidecar = os.path.join(populated.target.server_dir, _path_of(populated, populated.real_id, ".json"))
    os.chmod(sidecar, 0)
    try:
        before = populated.target.listing()
        refused = populated.run("prune", appliance=APPLIANCE_NAME, keep_last=1)
        assert refused.rc != 0 and "denied" in refused.result["msg"].lower(), refused.result.get("msg")
        assert populated.target.listing() == before
    finally:
        os.chmod(sidecar, 0o640)
