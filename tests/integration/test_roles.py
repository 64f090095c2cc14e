"""The fleet roles and playbooks run through ansible-runner (as AWX runs them), against two podman appliance
containers over SSH (node 1 primary, node 2 contingency; tests/lab/containers.py), and against the lab
appliance on localhost (connection local).

The containers back up to a `path` inside the container, and to the lab's real shares: smbd also listens on
the lab network's host address (env key smb_guest_server) and nfs-ganesha on nfs_server, both reachable from
the containers; the host reads what they wrote in the share folders (smb_dir_encrypted, nfs_dir).

Timings (setup, idempotent second run, backup, restore) are printed, never asserted. Run with
`.venv/bin/pytest -m containers -s tests/integration/test_roles.py`.
"""

import json
import os
import shlex
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from tests.integration.conftest import sha256_file
from tests.integration.playbook import COLLECTIONS, REPO, VENV_BIN
from tests.lab import containers, core, reference
from tests.secret_checks import assert_has_secret, assert_no_secret

ansible_runner = pytest.importorskip("ansible_runner")

pytestmark = pytest.mark.containers

PLAYBOOKS = os.path.join(REPO, "playbooks")
BACKUP_ROOT = "/srv/backup_remoto"  # exists in the appliance image (Segura's default mount point)
VENV_PYTHON = "/opt/segura-backup/venv/bin/python"
HEALTH_URL = containers.HEALTH_URL


def _free_port_base(count):
    for base in range(59400, 59900, 10):
        if not any(core.tcp_port_open("127.0.0.1", base + n, 0.2) for n in range(1, count + 1)):
            return base
    pytest.fail("no free port range for appliance containers in 59400-59900")


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


class Fleet:
    """Two appliance containers, their inventory, and an ansible-runner helper."""

    def __init__(self, env, workdir, wheels_dir, recipient, identity_file):
        self.env = env
        self.workdir = workdir
        self.wheels_dir = wheels_dir
        self.recipient = recipient
        self.identity_file = identity_file
        self.primary, self.contingency = env["appliances"][0], env["appliances"][1]

    def inventory(self, **extra_vars):
        first = self.env["appliances"][0]
        hosts = {a["name"]: {"ansible_port": a["port"]} for a in self.env["appliances"]}
        group_vars = {
            "ansible_host": "127.0.0.1",
            "ansible_user": first["user"],
            "ansible_ssh_private_key_file": first["private_key"],
            "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
                                       % first["known_hosts"],
            "ansible_become": True,
            "ansible_pipelining": True,
            "ansible_python_interpreter": "/usr/bin/python3",
            "runtime_wheels_dir": self.wheels_dir,
            "backup_python_interpreter": VENV_PYTHON,
            "backup_target": {"type": "path", "path": BACKUP_ROOT},
            "backup_encryption": {"recipients": [self.recipient]},
            "backup_appliance": {"health_url": HEALTH_URL},
            # where setup.yml pins the appliances' signing keys; every later run reads them there
            "backup_signers_file": os.path.join(self.workdir, "segura_backup_signers"),
        }
        group_vars.update(extra_vars)
        return {"segura_appliances": {"hosts": hosts, "vars": group_vars}}

    def run(self, playbook, inventory=None, check=False, limit=None):
        """ansible-runner run of playbooks/<playbook>; returns (runner, seconds)."""
        private = tempfile.mkdtemp(prefix="runner-", dir=self.workdir)
        os.makedirs(os.path.join(private, "inventory"))
        _write_private(os.path.join(private, "inventory", "hosts.json"), json.dumps(inventory or self.inventory()))
        cmdline = []
        if check:
            cmdline.append("--check")
        if limit:
            cmdline += ["--limit", limit]
        started = time.monotonic()
        runner = ansible_runner.run(
            private_data_dir=private, playbook=os.path.join(PLAYBOOKS, playbook), quiet=True,
            cmdline=" ".join(shlex.quote(part) for part in cmdline) or None,
            envvars={"ANSIBLE_COLLECTIONS_PATH": COLLECTIONS, "ANSIBLE_NOCOLOR": "1",
                     "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
                     "ANSIBLE_LOCAL_TEMP": os.path.join(private, "tmp")})
        return runner, round(time.monotonic() - started, 1)

    def exec(self, appliance, command, check=True, stdin=None):
        result = containers.podman(["exec", "-i", appliance["id"], "sh", "-c", command], check=False,
                                   stdin_data=stdin, timeout=300)
        if check and result.returncode != 0:
            pytest.fail("%s: %r failed: %s" % (appliance["name"], command, result.stderr.decode()))
        return result


def _output(runner):
    return runner.stdout.read() if hasattr(runner.stdout, "read") else str(runner.stdout)


def _stats_artifact(runner):
    """The set_stats data of the run (AWX shows it as the job's artifacts)."""
    for event in runner.events:
        if event.get("event") == "playbook_on_stats":
            return event["event_data"].get("artifact_data", {})
    return {}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("fleet"))
    wheels = os.path.join(workdir, "wheels")
    # The air-gap path: wheels built on the controller, installed with --no-index on the appliance
    # (the containers do not inherit this machine's pip CA).
    subprocess.run([os.path.join(VENV_BIN, "pip"), "wheel", "-q", "-r", os.path.join(REPO, "requirements.txt"),
                    "-w", wheels], check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    identity = os.path.join(workdir, "age-key.txt")
    subprocess.run(["age-keygen", "-o", identity], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recipient = subprocess.run(["age-keygen", "-y", identity], check=True, stdout=subprocess.PIPE,
                               text=True).stdout.strip()
    lab = containers.ApplianceContainers(os.path.join(workdir, "state"), prefix="segura-roles-%d" % os.getpid(),
                                         port_base=_free_port_base(2))
    try:
        env = lab.up(count=2, seed_size=3_000_000)
        yield Fleet(env, workdir, wheels, recipient, identity)
    finally:
        lab.down()


@pytest.fixture(scope="module")
def set_up(fleet):
    """setup.yml twice: the second run must change nothing."""
    first, first_seconds = fleet.run("setup.yml")
    assert first.rc == 0, _output(first)
    second, second_seconds = fleet.run("setup.yml")
    assert second.rc == 0, _output(second)
    print("\nsetup.yml on 2 appliances: %.1fs; second run: %.1fs" % (first_seconds, second_seconds))
    return second


def test_setup_is_idempotent(set_up, fleet):
    assert set(set_up.stats["ok"]) == {fleet.primary["name"], fleet.contingency["name"]}
    assert not set_up.stats["changed"], set_up.stats["changed"]
    assert not set_up.stats["failures"]


def test_setup_refuses_to_pin_another_key_for_a_pinned_name(set_up, fleet):
    """A compromised appliance reporting another's name must not replace that appliance's pinned key."""
    path = os.path.join(fleet.workdir, "segura_backup_signers")
    with open(path, encoding="utf-8") as handle:
        pinned = handle.read()
    name = fleet.exec(fleet.primary, "hostname -s").stdout.decode().strip()
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    forged = "".join('%s namespaces="segura-backup" %s\n' % (name, other) if line.startswith(name + " ") else line + "\n"
                     for line in pinned.splitlines())
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(forged)
        refused, _seconds = fleet.run("setup.yml", limit=fleet.primary["name"])
        assert refused.rc != 0 and "must not pin another key" in _output(refused), _output(refused)[-2000:]
        with open(path, encoding="utf-8") as handle:
            assert handle.read() == forged  # nothing replaced
    finally:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(pinned)


def test_setup_installs_runtime_timer_and_private_config(set_up, fleet):
    for appliance in (fleet.primary, fleet.contingency):
        fleet.exec(appliance, "/opt/segura-backup/venv/bin/python -c 'import zstandard, smbclient, nfs_rs'")
        # nothing global: the system python has none of the packages
        assert fleet.exec(appliance, "python3 -c 'import zstandard'", check=False).returncode != 0
        modes = fleet.exec(appliance, "stat -c '%a %U' /etc/segura-backup /etc/segura-backup/segura-backup.json")
        assert modes.stdout.decode().split("\n")[:2] == ["700 root", "600 root"]
        timer = fleet.exec(appliance, "systemctl show segura-backup.timer -p ActiveState -p UnitFileState")
        assert "ActiveState=active" in timer.stdout.decode() and "UnitFileState=enabled" in timer.stdout.decode()
        unit = fleet.exec(appliance, "systemctl cat segura-backup.timer segura-backup.service").stdout.decode()
        for line in ("Persistent=true", "FixedRandomDelay=true", "OnCalendar=*-*-* 05:00:00", "ProtectSystem=strict",
                     "PrivateTmp=true", "NoNewPrivileges=true", "ReadWritePaths=%s" % BACKUP_ROOT):
            assert line in unit
        assert fleet.exec(appliance, "test -e /etc/cron.d/segura-backup", check=False).returncode != 0
        # the appliance's own signing key, private to it; its public half pinned on the controller
        key = fleet.exec(appliance, "stat -c '%a %U' /etc/segura-backup/signing_key && "
                                    "cut -d' ' -f1,2 /etc/segura-backup/signing_key.pub && hostname -s")
        mode, public, name = key.stdout.decode().strip().split("\n")
        assert mode == "600 root"
        with open(os.path.join(fleet.workdir, "segura_backup_signers"), encoding="utf-8") as handle:
            pinned = handle.read().splitlines()
        assert '%s namespaces="segura-backup" %s' % (name, public) in pinned, pinned


def _sidecars(fleet, appliance):
    listing = fleet.exec(appliance, "ls %s/%s/snapshots 2>/dev/null || true" % (BACKUP_ROOT, appliance["name"])
                         ).stdout.decode().split()
    return sorted(name for name in listing if name.endswith(".json") and name.count(".") == 1)


def _sidecar_and_members(fleet, appliance, sidecar_name):
    folder = "%s/%s/snapshots" % (BACKUP_ROOT, appliance["name"])
    sidecar = json.loads(fleet.exec(appliance, "cat %s/%s" % (folder, sidecar_name)).stdout)
    encrypted = fleet.exec(appliance, "cat %s/%s" % (folder, sidecar["object"])).stdout
    members = subprocess.run("age -d -i %s | zstd -d | tar -t" % shlex.quote(fleet.identity_file), shell=True,
                             input=encrypted, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True,
                             timeout=120).stdout.decode().split()
    return sidecar, members


def _remote_dump_and_module(fleet, appliance):
    """(dump pid, pid of the module process running it) on the appliance, or None (by exact process name:
    `pgrep -f` would find the shell that runs it)."""
    found = fleet.exec(appliance, "for p in $(pgrep -x mariadb-dump); do echo $p $(ps -o ppid= -p $p); done"
                       ).stdout.decode().split()
    return (int(found[0]), int(found[1])) if len(found) >= 2 else None


def _remote_alive(fleet, appliance, pid):
    return fleet.exec(appliance, "test -d /proc/%d" % pid, check=False).returncode == 0


def test_awx_cancel_over_ssh_never_leaves_a_lock_that_blocks_the_next_run(set_up, fleet):
    """AWX's cancel (ansible-runner SIGKILLs ansible-playbook's process group, its ssh clients with it) while
    the backup module runs on the appliance: the module there is not signalled; it finishes its snapshot
    and releases the lock. A table write-locked from a second MariaDB session keeps the module mid-dump
    until the test lets it go."""
    from tests.faults.test_cancel import table_held

    appliance = fleet.primary
    folder = "%s/%s" % (BACKUP_ROOT, appliance["name"])
    before = _sidecars(fleet, appliance)
    private = tempfile.mkdtemp(prefix="runner-", dir=fleet.workdir)
    os.makedirs(os.path.join(private, "inventory"))
    _write_private(os.path.join(private, "inventory", "hosts.json"), json.dumps(fleet.inventory()))
    cancel = {"now": False}
    holder = [core.require_binary("podman", "podman"), "exec", "-i", appliance["id"], "mariadb"]
    with table_held(client_argv=holder, client_env=containers.podman_env()):
        thread, runner = ansible_runner.run_async(
            private_data_dir=private, playbook=os.path.join(PLAYBOOKS, "backup.yml"), quiet=True,
            cmdline="--limit %s" % shlex.quote(appliance["name"]), cancel_callback=lambda: cancel["now"],
            # The table lock holds a mariadb-dump mid-stream; the image's mariadb-backup would make it physical.
            extravars={"backup_database": {"method": "logical"}},
            envvars={"ANSIBLE_COLLECTIONS_PATH": COLLECTIONS, "ANSIBLE_NOCOLOR": "1",
                     "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
                     "ANSIBLE_LOCAL_TEMP": os.path.join(private, "tmp")})

        def mid_dump():
            partial = fleet.exec(appliance, "ls %s/snapshots/ 2>/dev/null | grep -c partial$ || true"
                                 % folder).stdout.decode().strip()
            return partial not in ("", "0") and _remote_dump_and_module(fleet, appliance)

        assert core.wait_for(mid_dump, 180, 0.5), "the backup never reached its dump"
        dump, module = _remote_dump_and_module(fleet, appliance)
        cancel["now"] = True
        thread.join(timeout=120)
        assert not thread.is_alive() and runner.status == "canceled"
        time.sleep(1)
        # what docs/faults.md says: the appliance's side is not signalled and goes on
        assert _remote_alive(fleet, appliance, module) and _remote_alive(fleet, appliance, dump)
        assert fleet.exec(appliance, "test -e %s/lock" % folder, check=False).returncode == 0
    # the table is free: the cancelled job's module finishes by itself, publishes, releases the lock
    assert core.wait_for(lambda: not _remote_alive(fleet, appliance, module), 120, 0.5)
    assert len(_sidecars(fleet, appliance)) == len(before) + 1, "the cancelled job's snapshot was not published"
    assert fleet.exec(appliance, "test -e %s/lock" % folder, check=False).returncode != 0
    leftover = fleet.exec(appliance, "ls %s/snapshots/" % folder).stdout.decode().split()
    assert not [name for name in leftover if name.endswith(".partial")], leftover
    runner, _seconds = fleet.run("backup.yml", limit=appliance["name"])
    assert runner.rc == 0, _output(runner)
    assert len(_sidecars(fleet, appliance)) == len(before) + 2


def test_backup_runs_on_the_primary_only(set_up, fleet):
    runner, seconds = fleet.run("backup.yml", fleet.inventory(backup_prune={"keep_last": 2}))
    assert runner.rc == 0, _output(runner)
    print("\nbackup.yml on 2 appliances (primary backs up, contingency skips): %.1fs" % seconds)
    summary = _stats_artifact(runner)["backup_summary"]
    primary, contingency = summary[fleet.primary["name"]], summary[fleet.contingency["name"]]
    assert primary["status"] == "ok" and primary["cluster_role"] == "primary"
    assert primary["verify"] == "1 snapshot(s) verified"
    assert contingency["status"] == "skipped" and "not the primary" in contingency["reason"]
    assert len(_sidecars(fleet, fleet.primary)) >= 1
    assert fleet.exec(fleet.contingency, "test -e %s/%s" % (BACKUP_ROOT, fleet.contingency["name"]),
                      check=False).returncode != 0


def test_backup_check_mode_is_a_preflight(set_up, fleet):
    before = _sidecars(fleet, fleet.primary)
    runner, _seconds = fleet.run("backup.yml", check=True, limit=fleet.primary["name"])
    assert runner.rc == 0, _output(runner)
    assert _stats_artifact(runner)["backup_summary"][fleet.primary["name"]]["status"] == "checked"
    assert _sidecars(fleet, fleet.primary) == before


def test_scheduled_job_makes_the_same_snapshot_as_the_playbook(set_up, fleet):
    runner, _seconds = fleet.run("backup.yml", limit=fleet.primary["name"])
    assert runner.rc == 0, _output(runner)
    by_playbook = _sidecars(fleet, fleet.primary)[-1]
    started = time.monotonic()
    fleet.exec(fleet.primary, "systemctl start segura-backup.service")
    print("\nscheduled job (systemctl start segura-backup.service): %.1fs" % (time.monotonic() - started))
    by_timer = _sidecars(fleet, fleet.primary)[-1]
    assert by_timer != by_playbook
    sidecar_a, members_a = _sidecar_and_members(fleet, fleet.primary, by_playbook)
    sidecar_b, members_b = _sidecar_and_members(fleet, fleet.primary, by_timer)
    assert sorted(sidecar_a) == sorted(sidecar_b)
    assert members_a == members_b
    assert sidecar_a["components"] == sidecar_b["components"]
    journal = fleet.exec(fleet.primary, "journalctl -t segura-backup --no-pager -o cat").stdout.decode()
    assert "event=18 Backup performed: %s snapshot %s" % (fleet.primary["name"], sidecar_b["id"]) in journal
    # Under systemd the job writes its progress to the journal, a line as each phase begins (progress.py).
    for phase in ("databases", "config", "secrets", "publish", "verify"):
        assert "progress: %s begins" % phase in journal, journal[-3000:]


def test_scheduled_job_on_the_contingency_skips(set_up, fleet):
    fleet.exec(fleet.contingency, "systemctl start segura-backup.service")
    journal = fleet.exec(fleet.contingency, "journalctl -u segura-backup.service --no-pager -o cat").stdout.decode()
    assert '"status": "skipped"' in journal
    assert fleet.exec(fleet.contingency, "test -e %s/%s" % (BACKUP_ROOT, fleet.contingency["name"]),
                      check=False).returncode != 0


def test_failing_scheduled_job_shows_as_failed_unit_and_error_event(set_up, fleet):
    config = "/etc/segura-backup/segura-backup.json"
    original = fleet.exec(fleet.primary, "cat %s" % config).stdout
    broken = json.loads(original)
    broken["target"] = {"type": "smb", "server": "127.0.0.1", "port": 9, "share": "nope", "username": "backup",
                        "password": "wrong-Pa$$word", "timeout": 3}
    try:
        fleet.exec(fleet.primary, "umask 077 && cat > %s" % config, stdin=json.dumps(broken).encode())
        assert fleet.exec(fleet.primary, "systemctl start segura-backup.service", check=False).returncode != 0
        state = fleet.exec(fleet.primary, "systemctl show segura-backup.service -p ActiveState -p Result").stdout
        assert b"ActiveState=failed" in state and b"Result=exit-code" in state
        journal = fleet.exec(fleet.primary, "journalctl -t segura-backup --no-pager -o cat").stdout.decode()
        assert "event=19 Error on backup" in journal
        assert "wrong-Pa$$word" not in journal
    finally:
        fleet.exec(fleet.primary, "umask 077 && cat > %s" % config, stdin=original)
        fleet.exec(fleet.primary, "systemctl reset-failed segura-backup.service", check=False)


def test_schedule_refuses_cron_next_to_the_timer(set_up, fleet):
    runner, _seconds = fleet.run("setup.yml", fleet.inventory(schedule_method="cron"), limit=fleet.primary["name"])
    assert runner.rc != 0
    assert "already schedules this backup" in _output(runner)
    assert fleet.exec(fleet.primary, "test -e /etc/cron.d/segura-backup", check=False).returncode != 0


def test_verify_playbook(set_up, fleet):
    runner, _seconds = fleet.run("verify.yml", limit=fleet.primary["name"])
    assert runner.rc == 0, _output(runner)
    assert "1 snapshot(s) verified" in _output(runner)


# --- mount role: the files it writes (kernel mounts cannot happen here: no CIFS/NFS client in this
# host kernel, so mount_activate is false; the real mount belongs to the molecule kernel_mount scenario)

HOSTILE_PASSWORD = "Pa\\ss & w!rd $'\"% ,x=y"


def test_mount_role_writes_private_credentials_and_no_fstab_secret(set_up, fleet):
    mount_vars = dict(mount_type="cifs", mount_server="files.example.test", mount_share="segura",
                      mount_username="svc-backup", mount_password=HOSTILE_PASSWORD, mount_point="/srv/backup_share",
                      mount_activate=False, setup_schedule=False)
    fstab_before = fleet.exec(fleet.primary, "cat /etc/fstab").stdout
    check, _seconds = fleet.run("setup.yml", fleet.inventory(**mount_vars), check=True, limit=fleet.primary["name"])
    assert check.rc == 0, _output(check)
    assert fleet.exec(fleet.primary, "test -e /etc/systemd/system/srv-backup_share.mount", check=False).returncode != 0
    runner, _seconds = fleet.run("setup.yml", fleet.inventory(**mount_vars), limit=fleet.primary["name"])
    assert runner.rc == 0, _output(runner)
    assert_no_secret(_output(runner), HOSTILE_PASSWORD, "the setup run's output")
    assert_no_secret(_output(check), HOSTILE_PASSWORD, "the check run's output")
    modes = fleet.exec(fleet.primary, "stat -c '%a %U' /etc/segura-backup/cifs-credentials").stdout.decode().strip()
    assert modes == "600 root"
    credentials = fleet.exec(fleet.primary, "cat /etc/segura-backup/cifs-credentials").stdout.decode()
    assert_has_secret(credentials, "password=%s\n" % HOSTILE_PASSWORD, "the credentials file")
    unit = fleet.exec(fleet.primary, "cat /etc/systemd/system/srv-backup_share.mount").stdout.decode()
    assert "What=//files.example.test/segura" in unit and "credentials=/etc/segura-backup/cifs-credentials" in unit
    assert "vers=3.1.1" in unit and "seal" in unit and "password" not in unit.replace("credentials=", "")
    assert fleet.exec(fleet.primary, "cat /etc/fstab").stdout == fstab_before
    again, _seconds = fleet.run("setup.yml", fleet.inventory(**mount_vars), limit=fleet.primary["name"])
    assert again.rc == 0 and not again.stats["changed"], again.stats
    gone, _seconds = fleet.run("setup.yml", fleet.inventory(mount_state="absent", **mount_vars),
                               limit=fleet.primary["name"])
    assert gone.rc == 0, _output(gone)
    assert fleet.exec(fleet.primary, "test -e /etc/segura-backup/cifs-credentials || "
                      "test -e /etc/systemd/system/srv-backup_share.mount", check=False).returncode != 0


# --- SMB and NFS targets, from the lab appliance on localhost (connection local) -------------------

def _local_inventory(reference_appliance, target, recipient, **extra):
    host = {"ansible_connection": "local", "ansible_python_interpreter": os.path.join(VENV_BIN, "python"),
            "backup_target": target, "backup_encryption": {"recipients": [recipient]},
            "backup_appliance": {"name": "ref-appliance", "root": reference_appliance["root"]},
            "backup_database": {"defaults_file": reference_appliance["defaults_file"]},
            # the lab appliance's key, pinned as playbooks/setup.yml would
            "backup_signers": reference.signers_text(reference_appliance["root"], "ref-appliance")}
    host.update(extra)
    return {"segura_appliances": {"hosts": {"ref-appliance": host}}}


def _local_run(tmp_path, playbook, inventory, check=False):
    private = tempfile.mkdtemp(prefix="runner-", dir=str(tmp_path))
    os.makedirs(os.path.join(private, "inventory"))
    _write_private(os.path.join(private, "inventory", "hosts.json"), json.dumps(inventory))
    started = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=private, playbook=os.path.join(PLAYBOOKS, playbook), quiet=True,
        cmdline="--check" if check else None,
        envvars={"ANSIBLE_COLLECTIONS_PATH": COLLECTIONS, "ANSIBLE_NOCOLOR": "1",
                 "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
                 "ANSIBLE_LOCAL_TEMP": os.path.join(private, "tmp")})
    return runner, round(time.monotonic() - started, 1)


@pytest.mark.parametrize("kind", ["smb_encrypted", "nfs_v41"])
def test_backup_verify_prune_restore_drill_on_lab_shares(kind, reference_appliance, lab_target_factory,
                                                         age_identity, tmp_path):
    target = lab_target_factory(kind)
    inventory = _local_inventory(reference_appliance, target.options, age_identity["recipient"],
                                 backup_prune={"keep_last": 1})
    first, seconds = _local_run(tmp_path, "backup.yml", inventory)
    assert first.rc == 0, _output(first)
    print("\nbackup.yml to %s from the lab appliance (20 MB reference): %.1fs" % (kind, seconds))
    summary = _stats_artifact(first)["backup_summary"]["ref-appliance"]
    # the reference appliance's galera.cnf asks for Galera, but the lab's MariaDB runs without it: a lone node
    assert summary["status"] == "ok" and summary["cluster_role"] == "standalone"
    assert "Galera" not in _output(first)  # the demo's run: no false alarm about a cluster
    second, _seconds = _local_run(tmp_path, "backup.yml", inventory)
    assert second.rc == 0, _output(second)
    second_summary = _stats_artifact(second)["backup_summary"]["ref-appliance"]
    assert second_summary["prune"] == "keep 1 last: 1 removed"
    sidecars = [name for name in target.snapshot_files("ref-appliance") if name.endswith(".json") and name.count(".") == 1]
    assert len(sidecars) == 1 and sidecars[0].endswith("-%s.json" % second_summary["snapshot"]["id"]), sidecars

    deep = dict(inventory["segura_appliances"]["hosts"]["ref-appliance"], verify_mode="deep",
                verify_decryption={"identity_file": age_identity["identity_file"]})
    verified, _seconds = _local_run(tmp_path, "verify.yml", {"segura_appliances": {"hosts": {"ref-appliance": deep}}})
    assert verified.rc == 0, _output(verified)
    assert "1 snapshot(s) verified" in _output(verified)

    drill_host = dict(inventory["segura_appliances"]["hosts"]["ref-appliance"], restore_target=target.options,
                      restore_decryption={"identity_file": age_identity["identity_file"]},
                      restore_appliance={"name": "ref-appliance", "root": reference_appliance["root"]},
                      restore_database={"defaults_file": reference_appliance["defaults_file"]})
    drill, seconds = _local_run(tmp_path, "restore.yml", {"segura_appliances": {"hosts": {"ref-appliance": drill_host}}},
                                check=True)
    assert drill.rc == 0, _output(drill)
    assert second_summary["snapshot"]["id"] in _output(drill)
    print("restore drill (check mode: deep verify + plan) from %s: %.1fs" % (kind, seconds))


def test_backup_skips_unknown_role_when_asked(reference_appliance, lab_target_factory, age_identity, tmp_path):
    """The role cannot be told: the health endpoint does not answer (a closed port). The lab's MariaDB runs
    without wsrep, so without a health URL this node is a lone primary and is backed up."""
    target = lab_target_factory("path")
    with socket.socket() as probe:  # a port nothing listens on: connection refused at once
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    inventory = _local_inventory(reference_appliance, target.options, age_identity["recipient"],
                                 backup_when_role_unknown="skip")
    inventory["segura_appliances"]["hosts"]["ref-appliance"]["backup_appliance"]["health_url"] = (
        "http://127.0.0.1:%d/flow/orbit/mntr" % closed_port)
    runner, _seconds = _local_run(tmp_path, "backup.yml", inventory)
    assert runner.rc == 0, _output(runner)
    assert _stats_artifact(runner)["backup_summary"]["ref-appliance"]["status"] == "skipped"
    assert target.snapshot_files("ref-appliance") == []


# --- restore.yml (the restore role): plan first, restore only with restore_confirm -----------------

def _install_restore_key(fleet, appliance):
    """The age identity on the appliance (0600), as an operator puts it there for a restore."""
    with open(fleet.identity_file, "rb") as handle:
        fleet.exec(appliance, "umask 077 && cat > /root/segura-restore-key.txt", stdin=handle.read())
    return {"identity_file": "/root/segura-restore-key.txt"}


def _damage(fleet, appliance):
    """A secrets export disappears and a config file changes."""
    fleet.exec(appliance, "rm -rf /srv/cache/coba/* && echo tampered >> /var/senhasegura/orbinibkp.conf")


def test_restore_playbook_plans_then_restores_only_when_confirmed(set_up, fleet):
    appliance = fleet.primary
    runner, _seconds = fleet.run("backup.yml", limit=appliance["name"])
    assert runner.rc == 0, _output(runner)
    snapshot_id = _stats_artifact(runner)["backup_summary"][appliance["name"]]["snapshot"]["id"]
    fingerprint = containers.fingerprint(appliance["id"])
    decryption = _install_restore_key(fleet, appliance)
    _damage(fleet, appliance)
    damaged = containers.fingerprint(appliance["id"])
    assert damaged != fingerprint

    # restore_python_interpreter is not set: the role falls back to backup_python_interpreter (the venv)
    restore_vars = dict(restore_target={"type": "path", "path": BACKUP_ROOT}, restore_decryption=decryption,
                        restore_snapshot=snapshot_id)
    plan, _seconds = fleet.run("restore.yml", fleet.inventory(**restore_vars), limit=appliance["name"])
    assert plan.rc == 0, _output(plan)
    assert "snapshot %s of %s" % (snapshot_id, appliance["name"]) in _output(plan)
    assert "set restore_confirm=true to restore" in _output(plan)
    assert not plan.stats["changed"], plan.stats
    assert containers.fingerprint(appliance["id"]) == damaged  # nothing written

    done, seconds = fleet.run("restore.yml", fleet.inventory(restore_confirm=True, **restore_vars),
                              limit=appliance["name"])
    assert done.rc == 0, _output(done)
    print("\nrestore.yml (plan + restore + post-verify) in the container from a path: %.1fs" % seconds)
    assert "snapshot %s restored and verified" % snapshot_id in _output(done)
    assert containers.fingerprint(appliance["id"]) == fingerprint


# --- the containers over SSH against the lab's real SMB and NFS shares ------------------------------

def _container_target(kind, lab, lab_target_factory, subdir):
    """(LabTarget on the host's view, target option as the containers reach it). The SMB password is read
    from the lab's password file, never printed."""
    target = lab_target_factory(kind, subdir)
    options = dict(target.options)
    if kind.startswith("smb"):
        with open(lab["smb_password_file"], encoding="utf-8") as handle:
            password = handle.read().rstrip("\n")
        options.update(server=lab["smb_guest_server"], port=int(lab["smb_port"]), password=password)
    return target, options


def _runner_text(runner):
    """Everything a run shows: its output and all its events (AWX stores both)."""
    return _output(runner) + json.dumps(list(runner.events))


def _object_members(target, appliance, sidecar_name, identity_file):
    """The sidecar and the tar members of its object, read from the share folder on this host."""
    folder = os.path.join(target.appliance_dir(appliance), "snapshots")
    with open(os.path.join(folder, sidecar_name), encoding="utf-8") as handle:
        sidecar = json.load(handle)
    object_path = os.path.join(folder, sidecar["object"])
    assert os.path.getsize(object_path) == sidecar["size"]
    assert sha256_file(object_path) == sidecar["sha256"]
    with open(object_path, "rb") as handle:
        listing = subprocess.run("age -d -i %s | zstd -d | tar -t" % shlex.quote(identity_file), shell=True,
                                 stdin=handle, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True, timeout=120)
    return sidecar, listing.stdout.decode().split()


def _share_sidecars(target, appliance):
    return [name for name in target.snapshot_files(appliance) if name.endswith(".json") and name.count(".") == 1]


@pytest.mark.parametrize("kind", ["smb_encrypted", "nfs_v41"])
def test_fleet_backup_verify_prune_restore_on_lab_share(kind, lab, lab_target_factory, set_up, fleet):
    subdir = "fleet-%s-%d-%s" % (kind, os.getpid(), uuid.uuid4().hex[:8])
    target, options = _container_target(kind, lab, lab_target_factory, subdir)
    secret = options.get("password")
    primary, contingency = fleet.primary, fleet.contingency
    runs = []

    def run(playbook, limit=None, **extra):
        runner, seconds = fleet.run(playbook, fleet.inventory(backup_target=options, **extra), limit=limit)
        runs.append(runner)
        assert runner.rc == 0, _output(runner)
        return runner, seconds

    first, seconds = run("backup.yml")
    print("\n%s: backup.yml on 2 appliances over SSH: %.1fs" % (kind, seconds))
    summary = _stats_artifact(first)["backup_summary"]
    assert summary[primary["name"]]["status"] == "ok", summary
    assert summary[contingency["name"]]["status"] == "skipped", summary
    first_id = summary[primary["name"]]["snapshot"]["id"]
    assert [name for name in _share_sidecars(target, primary["name"]) if first_id in name]
    assert not os.path.exists(target.appliance_dir(contingency["name"]))  # only the primary is backed up

    verified, seconds = run("verify.yml", limit=primary["name"], verify_select="all")
    assert "1 snapshot(s) verified" in _output(verified)
    print("%s: verify.yml (quick): %.1fs" % (kind, seconds))

    second, seconds = run("backup.yml", limit=primary["name"], backup_prune={"keep_last": 1})
    print("%s: backup.yml + prune keep_last 1: %.1fs" % (kind, seconds))
    second_summary = _stats_artifact(second)["backup_summary"][primary["name"]]
    assert second_summary["prune"] == "keep 1 last: 1 removed", second_summary
    second_id = second_summary["snapshot"]["id"]
    sidecars = _share_sidecars(target, primary["name"])
    assert len(sidecars) == 1 and sidecars[0].endswith("-%s.json" % second_id), sidecars
    assert not [name for name in target.snapshot_files(primary["name"]) if first_id in name]
    sidecar, members = _object_members(target, primary["name"], sidecars[0], fleet.identity_file)
    assert sidecar["id"] == second_id and sidecar["appliance"] == primary["name"]
    assert members[0] == "snapshot.json" and members[-1] == "manifest.json"

    fingerprint = containers.fingerprint(primary["id"])
    decryption = _install_restore_key(fleet, primary)
    _damage(fleet, primary)
    restore_vars = dict(restore_target=options, restore_decryption=decryption)
    plan, _seconds = run("restore.yml", limit=primary["name"], **restore_vars)
    assert "snapshot %s of %s" % (second_id, primary["name"]) in _output(plan)
    assert containers.fingerprint(primary["id"]) != fingerprint  # the plan wrote nothing
    done, seconds = run("restore.yml", limit=primary["name"], restore_confirm=True, **restore_vars)
    print("%s: restore.yml (plan + restore + post-verify): %.1fs" % (kind, seconds))
    assert "snapshot %s restored and verified" % second_id in _output(done)
    assert containers.fingerprint(primary["id"]) == fingerprint

    if secret:
        texts = [_runner_text(runner) for runner in runs]
        # the scan reads what the runs said about the target (the share name is in the snapshot location) ...
        assert all(options["share"] in text for text in texts[:1])
        # ... and the password is nowhere
        assert not [index for index, text in enumerate(texts) if secret in text], "the SMB password leaked"
