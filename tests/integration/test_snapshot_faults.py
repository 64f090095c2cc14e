"""Bad input and faults: each run of segura.backup.snapshot ends in ONE clear message naming the cause,
leaves no complete-looking object (no new sidecar, no partial, no lock), keeps the earlier snapshot
byte for byte, and prints no secret even at -vvvv.

Every test first takes one good snapshot on its own fresh sub-path, then provokes the fault there.
Not covered: a full SMB share (it would need a share folder on a small filesystem, a lab change).

Run: .venv/bin/pytest tests/integration/test_snapshot_faults.py
"""

import json
import os
import secrets
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import format_utc, lock_path
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.integration.conftest import APPLIANCE_NAME, free_tcp_port, sha256_file, snapshot_args
from tests.integration.playbook import run_task
from tests.secret_checks import assert_no_secret

MODULE = "segura.backup.snapshot"
PASSPHRASE = "fault-test passphrase \\ & ! $'\"% ,"
WRONG_SMB_PASSWORD = "N0t the & right\\ one!"


class Fault:
    """A target with one good snapshot on it, and the checks every failed run must pass."""

    def __init__(self, lab, target, appliance, age_identity, good_components=("config", "secrets"), **good_extra):
        self.lab = lab
        self.target = target
        self.appliance = appliance
        self.age_identity = age_identity
        good = run_task(MODULE, snapshot_args(appliance, target, {"recipients": [age_identity["recipient"]]},
                                              components=good_components, **good_extra))
        assert good.rc == 0, good.output
        self.good_object = os.path.join(target.server_dir, good.result["snapshot"]["object"])
        self.good_sha256 = sha256_file(self.good_object)
        assert self.good_sha256 == good.result["snapshot"]["sha256"]
        self.before = target.listing()
        self.secrets = [lab["smb_password"], PASSPHRASE, age_identity["secret"], WRONG_SMB_PASSWORD]

    def run(self, target_options=None, encryption=None, components=("database", "config", "secrets"),
            appliance=None, **extra):
        """The failing run, at -vvvv, in passphrase mode unless told otherwise."""
        args = snapshot_args(appliance or self.appliance, target_options or self.target,
                             encryption or {"mode": "passphrase", "passphrase": PASSPHRASE},
                             components=components, **extra)
        return run_task(MODULE, args, verbosity=4)

    def assert_failed_cleanly(self, run, *words, error=None):
        assert run.rc != 0, run.output
        message = run.result.get("msg", "")
        assert message, run.output
        print("failure message: %s" % message)  # shown by pytest -rP
        for word in words:
            assert word.lower() in message.lower(), "%r not in the message %r" % (word, message)
        if error:
            assert run.result.get("error") == error, run.result
        assert "Traceback" not in run.output and "MODULE FAILURE" not in run.output, run.output
        assert "snapshot" not in run.result
        # Nothing new on the target, the earlier snapshot untouched, the lock released.
        assert self.target.listing() == self.before
        assert sha256_file(self.good_object) == self.good_sha256
        self.assert_no_secret(run)
        return message

    def assert_no_secret(self, run):
        printed = run.output + json.dumps(run.result)
        for secret in self.secrets:
            assert_no_secret(printed, secret, "the run's output or result")


@pytest.fixture
def fault(lab, lab_target_factory, reference_appliance, age_identity):
    def make(kind, appliance=None, **good):
        return Fault(lab, lab_target_factory(kind), appliance or reference_appliance, age_identity, **good)
    return make


def _private_file(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


# ------------------------------------------------------------------ the target refuses or is absent
def test_wrong_smb_password(fault):
    case = fault("smb_signed")
    bad = dict(case.target.options, password=WRONG_SMB_PASSWORD)
    message = case.assert_failed_cleanly(case.run(bad), "backup", error="TargetAuthError")
    assert "password" in message.lower() or "logon" in message.lower() or "credentials" in message.lower()


def test_unknown_smb_share(fault):
    case = fault("smb_encrypted")
    bad = dict(case.target.options, share="no_such_share")
    case.assert_failed_cleanly(case.run(bad), "no_such_share")


def test_unknown_nfs_export(fault):
    case = fault("nfs_v41")
    bad = dict(case.target.options, export="/no-such-export")
    case.assert_failed_cleanly(case.run(bad), "/no-such-export")


def test_unreachable_smb_host(fault):
    case = fault("smb_signed")
    port = free_tcp_port()  # nothing listens there
    bad = dict(case.target.options, port=port, timeout=5)
    case.assert_failed_cleanly(case.run(bad), "127.0.0.1", str(port))


# ------------------------------------------------------------------ a full target
def _tmpfs_target(lab_target_factory, mountpoint):
    target = lab_target_factory("path")
    target.server_dir, target.options = mountpoint, {"type": "path", "path": mountpoint}
    return target


def test_full_target_is_refused_before_any_data_moves(lab, lab_target_factory, reference_appliance, age_identity,
                                                      small_tmpfs):
    # The good snapshot (config only, a few KiB) fits; the full one (20 MB appliance) cannot.
    case = Fault(lab, _tmpfs_target(lab_target_factory, small_tmpfs), reference_appliance, age_identity,
                 good_components=("config",))
    case.assert_failed_cleanly(case.run(), "free", error="TargetFull")


def test_target_filling_up_while_writing(lab, lab_target_factory, age_identity, reference_appliance, small_tmpfs,
                                         tmp_path):
    """The estimate passes (incompressible file exactly as big as the free space), the write hits ENOSPC."""
    root = str(tmp_path / "tiny-appliance")
    os.makedirs(root)
    with open(os.path.join(root, "small.conf"), "w") as handle:
        handle.write("small=1\n")
    appliance = {"root": root, "defaults_file": reference_appliance["defaults_file"], "config_paths": ["small.conf"]}
    case = Fault(lab, _tmpfs_target(lab_target_factory, small_tmpfs), appliance, age_identity,
                 good_components=("config",))
    stats = os.statvfs(small_tmpfs)
    # The run creates its lock (one page) before it measures: leave the file exactly the rest.
    size = stats.f_bavail * stats.f_frsize - 4096
    with open(os.path.join(root, "big.bin"), "wb") as handle:
        handle.write(os.urandom(size))
    run = case.run(components=("config",), appliance=dict(appliance, config_paths=["big.bin"]))
    message = case.assert_failed_cleanly(run, error="TargetFull")
    assert "may need" not in message  # not refused up front: the write itself ran out of space


# ------------------------------------------------------------------ the appliance refuses
def test_database_refuses_a_wrong_password(fault, reference_appliance, tmp_path):
    case = fault("smb_signed")
    wrong = "wrong-db-" + secrets.token_hex(8)
    case.secrets.append(wrong)
    # TCP, so that root's unix-socket login cannot succeed without the password.
    defaults = _private_file(str(tmp_path / "wrong.cnf"), "[client]\nuser=root\npassword=%s\nhost=127.0.0.1\n"
                             "port=%s\nprotocol=tcp\n" % (wrong, reference_appliance["mysql_port"]))
    appliance = dict(case.appliance, defaults_file=defaults)
    case.assert_failed_cleanly(case.run(appliance=appliance), "access denied", error="ApplianceError")


@pytest.fixture
def unprivileged_db_user(reference_appliance, tmp_path):
    """A MariaDB user that may log in but read nothing; dropped afterwards. Yields its defaults file."""
    name = "segura_noprivs_%s" % secrets.token_hex(4)
    password = secrets.token_hex(16)
    admin = ["mariadb", "--defaults-file=" + reference_appliance["defaults_file"]]
    subprocess.run(admin, input="CREATE USER '%s'@'127.0.0.1' IDENTIFIED BY '%s';" % (name, password),
                   text=True, check=True, timeout=60)
    defaults = _private_file(str(tmp_path / "noprivs.cnf"), "[client]\nuser=%s\npassword=%s\nhost=127.0.0.1\n"
                             "port=%s\nprotocol=tcp\n" % (name, password, reference_appliance["mysql_port"]))
    try:
        yield defaults, password
    finally:
        subprocess.run(admin, input="DROP USER IF EXISTS '%s'@'127.0.0.1';" % name, text=True, timeout=60, check=False)


def test_database_user_without_privileges(fault, unprivileged_db_user):
    case = fault("nfs_v3")
    defaults, password = unprivileged_db_user
    case.secrets.append(password)
    appliance = dict(case.appliance, defaults_file=defaults)
    case.assert_failed_cleanly(case.run(appliance=appliance), "mt4", error="ApplianceError")


# ------------------------------------------------------------------ bad options
def test_recipient_that_is_not_an_age_key(fault):
    case = fault("path")
    run = case.run(encryption={"recipients": ["age1thisisnotakey"]})
    case.assert_failed_cleanly(run, "recipient", error="ConfigError")


def test_missing_required_config_path(fault):
    case = fault("smb_encrypted")
    run = case.run(appliance=dict(case.appliance, config_paths=["var/senhasegura/orbinibkp.conf",
                                                                "etc/does-not-exist.conf"]))
    case.assert_failed_cleanly(run, "etc/does-not-exist.conf", error="ApplianceError")


# ------------------------------------------------------------------ the lock
def _write_lock(target, expires):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    doc = {"appliance": APPLIANCE_NAME, "run_id": "other-run", "host": "other-host", "pid": 4242,
           "started": format_utc(now - timedelta(hours=2)), "refreshed": format_utc(now),
           "expires": format_utc(expires), "token": secrets.token_hex(16)}
    with open_target(target.options) as client:  # through the server, like another run would
        client.write_bytes(lock_path(APPLIANCE_NAME), (json.dumps(doc) + "\n").encode(), exclusive=True)


def test_lock_held_by_a_live_run(fault):
    case = fault("smb_signed")
    _write_lock(case.target, datetime.now(timezone.utc) + timedelta(hours=1))
    case.before = case.target.listing()  # the other run's lock must stay as it is
    case.assert_failed_cleanly(case.run(), "locked", "other-host", error="LockBusy")


def test_stale_lock_is_taken_over(fault):
    case = fault("nfs_v3")
    _write_lock(case.target, datetime.now(timezone.utc) - timedelta(minutes=5))
    run = case.run()
    assert run.rc == 0, run.output
    snap = run.result["snapshot"]
    assert snap["lock_taken_over"] is True
    assert not os.path.exists(os.path.join(case.target.appliance_dir(), "lock"))
    assert os.path.isfile(os.path.join(case.target.server_dir, snap["sidecar"]))
    assert sha256_file(case.good_object) == case.good_sha256
    case.assert_no_secret(run)
