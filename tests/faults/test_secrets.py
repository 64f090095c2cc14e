"""No secret anywhere: every module and the playbooks run at -vvvv, and the SMB password, the
passphrases (a long one and a short one), the MariaDB password and the age private key must not appear
in stdout/stderr, on the command line of any process the runs start (every execve, traced with strace:
tests/exec_trace.py), in any file left in the runs' temp folders, in the registered results, or on the
target - raw, JSON/repr-escaped, or base64 (tests/secret_checks.py).
"""

import json
import os
import shutil

import pytest

from tests.exec_trace import command_lines
from tests.faults.conftest import APPLIANCE_NAME, run_tasks, snapshot_args
from tests.integration.conftest import trust_args
from tests.integration.playbook import run_playbook
from tests.secret_checks import find_leaks

PASSPHRASE = "s3cret pass \\ & ! $'\"% ,phrase"
SHORT_PASSPHRASE = "q\"7$k"  # shorter than eight characters: once below the scan's notice


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


def test_no_secret_reaches_output_command_lines_temp_files_or_target(lab, lab_target_factory, reference_appliance,
                                                                     age_identity, tmp_path):
    secrets = {"smb password": lab["smb_password"], "passphrase": PASSPHRASE, "short passphrase": SHORT_PASSPHRASE,
               "mariadb password": _mariadb_password(reference_appliance["defaults_file"]),
               "age private key": age_identity["secret"]}
    root = str(tmp_path / "appliance")
    shutil.copytree(reference_appliance["root"], root, symlinks=True)
    appliance = dict(reference_appliance, root=root)
    target = lab_target_factory("smb_encrypted")
    smb = target.options
    recipients = {"recipients": [age_identity["recipient"]]}
    trust = trust_args(appliance, APPLIANCE_NAME)  # verify trusts the copied appliance's own signing key
    key = {"identities": [age_identity["secret"]]}
    restore = {"target": smb, "appliance": {"name": APPLIANCE_NAME, "root": root},
               "database": {"defaults_file": appliance["defaults_file"]}, "decryption": key}
    tasks = [  # the recipients snapshot last: it is the "latest" the restores pick
        {"name": "snapshot, passphrase", "segura.backup.snapshot": snapshot_args(
            appliance, target, {"mode": "passphrase", "passphrase": PASSPHRASE})},
        {"name": "snapshot, short passphrase", "segura.backup.snapshot": snapshot_args(
            appliance, target, {"mode": "passphrase", "passphrase": SHORT_PASSPHRASE})},
        {"name": "snapshot, age recipients", "segura.backup.snapshot": snapshot_args(appliance, target, recipients)},
        {"name": "snapshot, wrong smb password", "segura.backup.snapshot": snapshot_args(
            appliance, dict(smb, password=lab["smb_password"] + "x"), recipients)},
        {"name": "backup_info", "segura.backup.backup_info": {"target": smb, "include_sessions": True}},
        {"name": "verify deep, key", "segura.backup.verify": {
            "target": smb, "mode": "deep", "select": "all", "decryption": key, "trust": trust,
            "fail_on_error": False}},
        {"name": "verify deep, passphrase", "segura.backup.verify": {
            "target": smb, "mode": "deep", "select": "all", "decryption": {"passphrase": PASSPHRASE},
            "trust": trust, "fail_on_error": False}},
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
    trace = str(tmp_path / "execve.trace")
    results, completed = run_tasks(tasks, verbosity=4, keep_dir=workdir, extra_env={"TMPDIR": module_tmp},
                                   trace_file=trace)
    backup = run_playbook("segura.backup.backup", inventory, verbosity=4,
                          extra_vars={"backup_target": smb,
                                      "backup_encryption": {"mode": "passphrase", "passphrase": PASSPHRASE},
                                      "backup_appliance": {"name": APPLIANCE_NAME, "root": root},
                                      "backup_database": {"defaults_file": appliance["defaults_file"]}},
                          extra_env={"TMPDIR": playbook_dir}, trace_file=trace)
    # The drill plans the newest snapshot: backup.yml's, made with the passphrase.
    drill = run_playbook("segura.backup.restore", inventory, verbosity=4,
                         extra_vars={"restore_target": smb, "restore_decryption": {"passphrase": PASSPHRASE},
                                     "restore_appliance": {"name": APPLIANCE_NAME, "root": root},
                                     "restore_database": {"defaults_file": appliance["defaults_file"]},
                                     "restore_components": ["config", "secrets"]},
                         extra_env={"TMPDIR": playbook_dir}, trace_file=trace)

    # The runs did what they should (so the scan looked at real work, not at early failures).
    assert len(results) == len(tasks), completed.stdout[-2000:] + completed.stderr[-2000:]
    outcome = {task["name"]: result for task, result in zip(tasks, results)}
    for name in ("snapshot, age recipients", "snapshot, passphrase", "snapshot, short passphrase", "backup_info",
                 "verify deep, key", "verify deep, passphrase", "restore check mode", "restore config", "prune",
                 "appliance_info"):
        assert not outcome[name].get("failed"), (name, outcome[name].get("msg"))
    for name in ("snapshot, wrong smb password", "restore wrong key"):
        assert outcome[name].get("failed"), name
    for name in ("verify deep, key", "verify deep, passphrase"):  # each key opened what it can open
        assert any(entry["ok"] and entry["mode"] == "deep" for entry in outcome[name]["snapshots"]), name
    assert backup.rc == 0, backup.output[-3000:]
    assert drill.rc == 0, drill.output[-3000:]
    # The trace saw the runs: the three ansible-playbook processes and a module's Python for every task.
    commands = command_lines(trace)
    assert sum(1 for argv in commands if os.path.basename(argv[0]) == "ansible-playbook") >= 3, len(commands)
    assert sum(1 for argv in commands if "AnsiballZ" in " ".join(argv)) >= len(tasks), len(commands)

    haystacks = [("playbook stdout", completed.stdout), ("playbook stderr", completed.stderr),
                 ("backup.yml output", backup.output), ("restore.yml output", drill.output),
                 ("registered results", json.dumps(results))]
    haystacks += [("command line of %s" % argv[0], "\n".join(argv)) for argv in commands]
    scanned = 0
    for folder in (workdir, module_tmp, playbook_dir, target.server_dir):
        for path in _files_below(folder):
            if path == os.path.join(workdir, "faults.yml"):
                continue  # the task arguments we wrote ourselves (0600)
            with open(path, "rb") as handle:
                haystacks.append((path, handle.read().decode("utf-8", "replace")))
            scanned += 1
    leaks = find_leaks(haystacks, secrets)
    print("scanned %d outputs, %d command lines, %d files; %d leaks" % (5, len(commands), scanned, len(leaks)))
    assert not leaks, leaks
