"""No secret anywhere: every module and the playbooks run at -vvvv, and the SMB password, the
passphrase, the MariaDB password and the age private key must not appear in stdout/stderr, in the
process list (`ps -eo args` every 50 ms during the runs), in any file left in the runs' temp
folders, in the registered results, or on the target - raw, JSON/repr-escaped, or base64.
"""

import base64
import json
import os
import shutil

import pytest

from tests.faults.conftest import APPLIANCE_NAME, ProcessWatcher, run_tasks, snapshot_args
from tests.integration.playbook import run_playbook

PASSPHRASE = "s3cret pass \\ & ! $'\"% ,phrase"


def _forms(secret):
    """Ways a secret can leak besides verbatim."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1]}
    raw = secret.encode("utf-8")
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.add(encode(raw).decode().rstrip("="))
    return {form for form in forms if len(form) >= 8}


def _mariadb_password(defaults_file):
    with open(defaults_file, encoding="utf-8") as handle:
        for line in handle:
            key, _sep, value = line.partition("=")
            if key.strip() == "password":
                return value.strip()
    pytest.fail("no password in %s" % defaults_file)


def _files_below(folder):
    for base, _dirs, files in os.walk(folder):
        for name in files:
            yield os.path.join(base, name)


def _scan(haystacks, secrets):
    """[(where, which secret)] for every leak found."""
    leaks = []
    for where, text in haystacks:
        for label, secret in secrets.items():
            for form in _forms(secret):
                if form in text:
                    leaks.append((where, label))
    return leaks


def test_no_secret_reaches_output_process_list_temp_files_or_target(lab, lab_target_factory, reference_appliance,
                                                                    age_identity, tmp_path):
    secrets = {"smb password": lab["smb_password"], "passphrase": PASSPHRASE,
               "mariadb password": _mariadb_password(reference_appliance["defaults_file"]),
               "age private key": age_identity["secret"]}
    root = str(tmp_path / "appliance")
    shutil.copytree(reference_appliance["root"], root, symlinks=True)
    appliance = dict(reference_appliance, root=root)
    target = lab_target_factory("smb_encrypted")
    smb = target.options
    recipients = {"recipients": [age_identity["recipient"]]}
    key = {"identities": [age_identity["secret"]]}
    restore = {"target": smb, "appliance": {"name": APPLIANCE_NAME, "root": root},
               "database": {"defaults_file": appliance["defaults_file"]}, "decryption": key}
    tasks = [  # the recipients snapshot last: it is the "latest" the restores pick
        {"name": "snapshot, passphrase", "segura.backup.snapshot": snapshot_args(
            appliance, target, {"mode": "passphrase", "passphrase": PASSPHRASE})},
        {"name": "snapshot, age recipients", "segura.backup.snapshot": snapshot_args(appliance, target, recipients)},
        {"name": "snapshot, wrong smb password", "segura.backup.snapshot": snapshot_args(
            appliance, dict(smb, password=lab["smb_password"] + "x"), recipients)},
        {"name": "backup_info", "segura.backup.backup_info": {"target": smb, "include_sessions": True}},
        {"name": "verify deep, key", "segura.backup.verify": {
            "target": smb, "mode": "deep", "select": "all", "decryption": key, "fail_on_error": False}},
        {"name": "verify deep, passphrase", "segura.backup.verify": {
            "target": smb, "mode": "deep", "select": "all", "decryption": {"passphrase": PASSPHRASE},
            "fail_on_error": False}},
        {"name": "restore check mode", "segura.backup.restore": restore, "check_mode": True},
        {"name": "restore config", "segura.backup.restore": dict(restore, components=["config", "secrets"])},
        {"name": "restore wrong key", "segura.backup.restore": dict(
            restore, decryption={"passphrase": PASSPHRASE + "x"})},
        {"name": "prune", "segura.backup.prune": {"target": smb, "keep_last": 5, "partial_grace": "1h"}},
        {"name": "appliance_info", "segura.backup.appliance_info": {
            "appliance": {"root": root}, "database": {"defaults_file": appliance["defaults_file"]}}},
    ]
    workdir = str(tmp_path / "run")
    module_tmp = os.path.join(workdir, "module-tmp")
    os.makedirs(module_tmp)
    playbook_dir = str(tmp_path / "playbook-run")
    os.makedirs(playbook_dir)
    inventory = {"segura_appliances": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": os.path.join(
            os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".venv", "bin", "python")}}}}
    with ProcessWatcher() as watcher:
        results, completed = run_tasks(tasks, verbosity=4, keep_dir=workdir, extra_env={"TMPDIR": module_tmp})
        backup = run_playbook("segura.backup.backup", inventory, verbosity=4,
                              extra_vars={"backup_target": smb,
                                          "backup_encryption": {"mode": "passphrase", "passphrase": PASSPHRASE},
                                          "backup_appliance": {"name": APPLIANCE_NAME, "root": root},
                                          "backup_database": {"defaults_file": appliance["defaults_file"]}},
                              extra_env={"TMPDIR": playbook_dir})
        drill = run_playbook("segura.backup.restore", inventory, verbosity=4,
                             extra_vars={"restore_target": smb, "restore_decryption": key,
                                         "restore_appliance": {"name": APPLIANCE_NAME, "root": root},
                                         "restore_database": {"defaults_file": appliance["defaults_file"]},
                                         "restore_components": ["config", "secrets"]},
                             extra_env={"TMPDIR": playbook_dir})

    # The runs did what they should (so the scan looked at real work, not at early failures).
    assert len(results) == len(tasks), completed.stdout[-2000:] + completed.stderr[-2000:]
    outcome = {task["name"]: result for task, result in zip(tasks, results)}
    for name in ("snapshot, age recipients", "snapshot, passphrase", "backup_info", "verify deep, key",
                 "restore check mode", "restore config", "prune", "appliance_info"):
        assert not outcome[name].get("failed"), (name, outcome[name].get("msg"))
    for name in ("snapshot, wrong smb password", "restore wrong key"):
        assert outcome[name].get("failed"), name
    assert backup.rc == 0, backup.output[-3000:]
    assert len(watcher.samples) > 10

    haystacks = [("playbook stdout", completed.stdout), ("playbook stderr", completed.stderr),
                 ("backup.yml output", backup.output), ("restore.yml output", drill.output),
                 ("registered results", json.dumps(results))]
    haystacks += [("process list sample %d" % index, sample) for index, sample in enumerate(watcher.samples)]
    scanned = 0
    for folder in (workdir, module_tmp, playbook_dir, target.server_dir):
        for path in _files_below(folder):
            if path == os.path.join(workdir, "faults.yml"):
                continue  # the task arguments we wrote ourselves (0600)
            with open(path, "rb") as handle:
                haystacks.append((path, handle.read().decode("utf-8", "replace")))
            scanned += 1
    leaks = _scan(haystacks, secrets)
    print("scanned %d outputs, %d process list samples, %d files; %d leaks"
          % (5, len(watcher.samples), scanned, len(leaks)))
    assert not leaks, leaks
