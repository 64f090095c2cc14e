"""Issue 15 ("Trust"), items 3 and 8, through ansible-playbook against the lab appliance and real targets.

Item 3, future-dated snapshots: a well-formed snapshot dated ten years ahead (an appliance clock that ran
ahead, or a snapshot planted on the share) is flagged by backup_info, never restore's or verify's
"latest", restorable by id only with a warning, and kept aside by prune (never "the newest" that pins or
drops the real ones).

Item 8, keys stay where they belong: deep verify runs on the controller by default, so the private age
identity never reaches the appliance's Python; verify.yml finds the snapshots the backup filed under the
appliance's short host name even when the inventory name is an FQDN; verifying an appliance that has no
snapshot fails.

Run: .venv/bin/pytest tests/integration/test_trust.py
"""

import json
import os
import shutil
import socket
import stat
import tempfile
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.integration.conftest import APPLIANCE_NAME, snapshot_args
from tests.integration.playbook import REPO, VENV_BIN, run_playbook, run_task
from tests.unit.test_verification import make_snapshot

PLAYBOOKS = os.path.join(REPO, "playbooks")
TEN_YEARS = timedelta(days=3653)


def _info_records(result, appliance=APPLIANCE_NAME):
    return [s for s in result["snapshots"] if s["appliance"] == appliance]


@pytest.fixture
def planted(lab_target_factory, reference_appliance, age_identity):
    """A path target with a real snapshot (taken by the snapshot module), a real one a day older and a
    well-formed one dated ten years ahead (the archive writer's, encrypted to the same key)."""
    target = lab_target_factory("path")
    taken = run_task("segura.backup.snapshot", snapshot_args(
        reference_appliance, target, {"recipients": [age_identity["recipient"]]}, components=("config", "secrets")))
    assert taken.rc == 0, taken.output
    now = datetime.now(timezone.utc)
    encryption = Encryption.recipients_of([age_identity["recipient"]])
    with open_target(target.options) as client:
        older = make_snapshot(client, now - timedelta(days=1), appliance=APPLIANCE_NAME, encryption=encryption)
        future = make_snapshot(client, now + TEN_YEARS, appliance=APPLIANCE_NAME, encryption=encryption)
    return {"target": target, "real": taken.result["snapshot"]["id"], "older": older.id, "future": future.id}


def test_future_dated_snapshot_is_flagged_and_never_latest(planted, reference_appliance, age_identity):
    target = planted["target"]

    info = run_task("segura.backup.backup_info", {"target": target.options, "appliance": APPLIANCE_NAME})
    assert info.rc == 0, info.output
    records = {s["id"]: s for s in _info_records(info.result)}
    assert records[planted["future"]]["future_dated"] is True
    assert records[planted["real"]]["future_dated"] is False
    assert records[planted["older"]]["future_dated"] is False
    summary = info.result["appliances"][0]
    assert summary["latest_complete"]["id"] == planted["real"]
    assert summary["future_dated"] == 1
    assert "WARNING" in info.output and planted["future"] in info.output, info.output

    # restore's "latest" (the plan of a drill: check mode writes nothing) is the real newest snapshot
    restore = {"target": target.options, "appliance": {"name": APPLIANCE_NAME, "root": reference_appliance["root"]},
               "components": ["config"], "decryption": {"identity_file": age_identity["identity_file"]}}
    latest = run_task("segura.backup.restore", restore, check=True)
    assert latest.rc == 0, latest.output
    assert latest.result["plan"]["snapshot"]["id"] == planted["real"]
    # asked for by id, it is restored (planned) all the same, with a warning that names it
    # (the planted snapshot is unsigned: a signature is not what this test is about)
    by_id = run_task("segura.backup.restore", dict(restore, snapshot=planted["future"], force_version_mismatch=True,
                                                   trust={"allow_unsigned": True}), check=True)
    assert by_id.rc == 0, by_id.output
    assert by_id.result["plan"]["snapshot"]["id"] == planted["future"]
    assert "ahead of now" in by_id.output and planted["future"] in by_id.output, by_id.output

    # verify's "latest" proves the real newest snapshot, not the planted one
    verified = run_task("segura.backup.verify", {"target": target.options, "appliance": APPLIANCE_NAME,
                                                 "trust": {"allow_unsigned": True}})
    assert verified.rc == 0, verified.output
    assert [s["id"] for s in verified.result["snapshots"]] == [planted["real"]]

    # prune keep_last 1: the real newest stays, the older real one goes, the planted one is kept aside
    pruned = run_task("segura.backup.prune", {"target": target.options, "appliance": APPLIANCE_NAME,
                                              "keep_last": 1})
    assert pruned.rc == 0, pruned.output
    outcome = pruned.result["appliances"][0]
    assert [r["id"] for r in outcome["removed"]] == [planted["older"]]
    kept = {k["id"]: k["reasons"] for k in outcome["kept"]}
    assert "newest complete" in kept[planted["real"]]
    assert any("future" in reason for reason in kept[planted["future"]]), kept
    assert any(planted["future"] in w for w in outcome["warnings"]), outcome["warnings"]


def test_verify_of_an_appliance_without_snapshots_fails(planted):
    result = run_task("segura.backup.verify", {"target": planted["target"].options, "appliance": "no-such-appliance"})
    assert result.failed, result.output
    assert "no snapshot of appliance 'no-such-appliance'" in result.result["msg"], result.result["msg"]
    assert APPLIANCE_NAME in result.result["msg"]  # names what the target does hold


# --- item 8: the playbooks ------------------------------------------------------------------------

def _logging_python(folder):
    """A Python interpreter for the 'appliance' that records the module each run executes (AnsiballZ_<name>.py),
    so a test can tell which modules ran through the appliance's Python and which on the controller."""
    log = os.path.join(folder, "appliance-python.log")
    wrapper = os.path.join(folder, "appliance-python")
    with open(wrapper, "w", encoding="utf-8") as handle:
        handle.write('#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done >> "%s"\nexec "%s" "$@"\n'
                     % (log, os.path.join(VENV_BIN, "python")))
    os.chmod(wrapper, stat.S_IRWXU)
    return wrapper, log


def _modules_run(log):
    if not os.path.exists(log):
        return []
    with open(log, encoding="utf-8") as handle:
        return sorted({os.path.basename(line.strip())[len("AnsiballZ_"):-len(".py")]
                       for line in handle if os.path.basename(line.strip()).startswith("AnsiballZ_")})


@pytest.fixture
def private_dir():
    folder = tempfile.mkdtemp(prefix="segura-trust-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("kind", ["smb_encrypted"])
def test_deep_verify_runs_on_the_controller_and_finds_the_fqdn_host(kind, lab_target_factory, reference_appliance,
                                                                    age_identity, private_dir):
    """backup.yml and verify.yml with deep verify: the identity file is read on the controller only; the
    inventory name is an FQDN while the snapshots are filed under this host's short name (no appliance.name)."""
    target = lab_target_factory(kind)
    short = socket.gethostname().split(".")[0]
    fqdn = "%s.segura.example.test" % short
    wrapper, log = _logging_python(private_dir)
    host = {"ansible_connection": "local", "ansible_python_interpreter": wrapper,
            "backup_target": target.options, "backup_encryption": {"recipients": [age_identity["recipient"]]},
            "backup_appliance": {"root": reference_appliance["root"]},
            "backup_database": {"defaults_file": reference_appliance["defaults_file"], "method": "logical"},
            "backup_components": ["config", "secrets"], "backup_preflight": False,
            "backup_verify_mode": "deep",
            "backup_verify_decryption": {"identity_file": age_identity["identity_file"]},
            "verify_mode": "deep", "verify_decryption": {"identity_file": age_identity["identity_file"]},
            # no signing keys are pinned in this test's inventory: signatures are not what it is about
            "backup_verify_trust": {"allow_unsigned": True}, "verify_trust": {"allow_unsigned": True}}
    inventory = {"segura_appliances": {"hosts": {fqdn: host}}}

    backup = run_playbook(os.path.join(PLAYBOOKS, "backup.yml"), inventory)
    assert backup.rc == 0, backup.output[-4000:]
    filed = target.snapshot_files(short)
    assert [name for name in filed if name.endswith(".tar.zst.age")], filed
    on_appliance = _modules_run(log)
    assert "backup_job" in on_appliance and "verify" not in on_appliance, on_appliance
    assert "deep" in backup.stdout and "1 snapshot(s) verified" in backup.stdout, backup.stdout[-3000:]

    os.remove(log)
    verify = run_playbook(os.path.join(PLAYBOOKS, "verify.yml"), inventory)
    assert verify.rc == 0, verify.output[-4000:]
    assert "1 snapshot(s) verified" in verify.stdout, verify.stdout[-3000:]
    assert "verify" not in _modules_run(log), _modules_run(log)
    assert age_identity["secret"] not in verify.output + backup.output


def test_verify_playbook_with_a_path_target_verifies_quick_unless_allowed(lab_target_factory, reference_appliance,
                                                                          age_identity, private_dir):
    """A path target is local to the appliance: deep verify there needs the key there, so it happens only when
    verify_on_appliance is set; otherwise the snapshots are verified quick and the report says why."""
    target = lab_target_factory("path")
    taken = run_task("segura.backup.snapshot", snapshot_args(
        reference_appliance, target, {"recipients": [age_identity["recipient"]]}, components=("config",)))
    assert taken.rc == 0, taken.output
    wrapper, log = _logging_python(private_dir)
    host = {"ansible_connection": "local", "ansible_python_interpreter": wrapper,
            "backup_target": target.options, "backup_appliance": {"name": APPLIANCE_NAME},
            "verify_mode": "deep", "verify_decryption": {"identity_file": age_identity["identity_file"]},
            "verify_trust": {"allow_unsigned": True}}
    quick = run_playbook(os.path.join(PLAYBOOKS, "verify.yml"), {"segura_appliances": {"hosts": {"appliance": host}}})
    assert quick.rc == 0, quick.output[-4000:]
    assert "quick only" in quick.stdout and "verify_on_appliance" in quick.stdout, quick.stdout[-3000:]
    allowed = run_playbook(os.path.join(PLAYBOOKS, "verify.yml"),
                           {"segura_appliances": {"hosts": {"appliance": dict(host, verify_on_appliance=True)}}})
    assert allowed.rc == 0, allowed.output[-4000:]
    with open_target(target.options) as client:
        records = [json.loads(client.read_bytes(path, limit=1 << 20))
                   for path in ("%s/snapshots/%s" % (APPLIANCE_NAME, name) for name in target.snapshot_files()
                                if name.endswith(".verify.json"))]
    assert [r["mode"] for r in records] == ["deep"], records
