"""The scheduled job's entry point (plugins/module_utils/_engine/cli.py), through its real code paths.

The appliance is a seeded reference root under tmp_path (files only: the runs use `components` to leave the
database out), the target a `path` folder under tmp_path, the encryption age X25519 (age-keygen) or a
passphrase. Syslog events are read from a real datagram socket: the job runs in a private mount namespace
(root, `unshare -m`) where /dev/log is that socket; nothing outside the namespace changes. A test double of
Segura's health endpoint (a local HTTP server) answers 203 "active, not primary" for the skip case.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.conftest import COLLECTIONS, ROOT
from tests.doubles import serve_segura_health
from tests.lab import reference

from ansible_collections.segura.backup.plugins.module_utils._engine import cli

APPLIANCE = "cli-appliance"
COMPONENTS = ["config", "secrets"]
SECRET = "cli-Pa$$ phrase \\ & ! 'q' \"dq\" 42"  # every character Segura's own backup forbids


@pytest.fixture(scope="module")
def appliance_root(tmp_path_factory):
    """A small seeded appliance (config files + secrets staging; galera.cnf says: a cluster member)."""
    root = str(tmp_path_factory.mktemp("appliance"))
    reference.seed_files(root, reference.parse_size("2MB"), 3)
    return root


@pytest.fixture(scope="module")
def age_key(tmp_path_factory):
    folder = tmp_path_factory.mktemp("age")
    identity = str(folder / "key.txt")
    subprocess.run(["age-keygen", "-o", identity], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=30)
    recipient = subprocess.run(["age-keygen", "-y", identity], check=True, stdout=subprocess.PIPE, text=True,
                               timeout=30).stdout.strip()
    return {"identity_file": identity, "recipient": recipient}


def _config(appliance_root, target_dir, age_key, **overrides):
    if not os.path.exists(str(target_dir)):
        os.makedirs(str(target_dir))  # a path target is a mounted share: it exists
    config = {"target": {"type": "path", "path": str(target_dir)},
              "encryption": {"recipients": [age_key["recipient"]]},
              "appliance": {"name": APPLIANCE, "root": appliance_root},
              "components": list(COMPONENTS)}
    config.update(overrides)
    return config


def _write_config(folder, config, mode=0o600):
    path = os.path.join(str(folder), "segura-backup.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(config if isinstance(config, str) else json.dumps(config))
    os.chmod(path, mode)  # O_CREAT's mode passes through the umask
    return path


def _main(capsys, *argv):
    """cli.main in this process, without syslog; returns (exit code, the JSON line it printed)."""
    code = cli.main(list(argv) + ["--no-syslog"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # exactly one JSON line, for the journal
    return code, json.loads(out[0])


def _sidecars(target_dir):
    folder = os.path.join(str(target_dir), APPLIANCE, "snapshots")
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name.endswith(".json") and name.count(".") == 1)


# --- arguments and the config file ----------------------------------------------------------------

def test_config_argument_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_unreadable_config_file_is_a_configuration_error(tmp_path, capsys):
    code, result = _main(capsys, "--config", str(tmp_path / "missing.json"))
    assert code == cli.EXIT_CONFIG
    assert result["status"] == "failed" and result["error"] == "ConfigError"
    assert "cannot read config file" in result["message"] and "No such file" in result["message"]


def test_config_readable_by_others_is_refused(tmp_path, capsys, appliance_root, age_key):
    path = _write_config(tmp_path, _config(appliance_root, tmp_path / "target", age_key), mode=0o644)
    code, result = _main(capsys, "--config", path)
    assert code == cli.EXIT_CONFIG
    assert "must not be readable by group or others (chmod 0600)" in result["message"]
    assert _sidecars(tmp_path / "target") == []


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"target": {"type": "path", "path": "/x"}, "encryption": {}, "retention": {}}', "unknown option retention"),
    ('{"target": {"type": "path", "path": "/x"}}', "missing required arguments: encryption"),
    ('{"target": "path:/x", "encryption": {}}', "value of 'target' must be of type dict"),
])
def test_malformed_config_is_a_configuration_error(tmp_path, capsys, text, message):
    code, result = _main(capsys, "--config", _write_config(tmp_path, text))
    assert code == cli.EXIT_CONFIG
    assert message in result["message"], result


@pytest.mark.parametrize("overrides, message", [
    ({"chunk_size_mb": "16MB"}, "argument 'chunk_size_mb' is of type str"),
    ({"chunk_size_mb": 0}, "chunk_size_mb must be 1 or more"),
    ({"lock_ttl": 1.5}, "argument 'lock_ttl' is of type float"),
    ({"compression": {"level": "max"}}, "argument 'level' is of type str found in 'compression'"),
    ({"components": {"config": True}}, "argument 'components' is of type dict"),
    ({"components": ["config", "videos"]}, "videos"),
    ({"components": ["database"], "database": {"hostname": "db"}}, "unknown option database.hostname"),
    ({"verify": {"mode": "thorough"}}, "value of mode must be one of: quick, deep, none, got: thorough found in verify"),
    ({"verify": {"mode": "deep"}}, "verify mode deep needs 'decryption'"),
    ({"verify": {"speed": 1}}, "unknown option verify.speed"),
    ({"prune": {"keep_last": "many"}}, "argument 'keep_last' is of type str found in 'prune'"),
    ({"prune": {"keep_last": 1, "timezone": "Mars/Olympus"}}, "is not a known IANA time zone"),
    ({"prune": {"keep_last": 1, "partial_grace": "soon"}}, "partial_grace must be a duration"),
    ({"when_role_unknown": "guess"}, "value of when_role_unknown must be one of: backup, skip, fail, got: guess"),
])
def test_bad_values_fail_as_configuration_before_any_snapshot(tmp_path, capsys, appliance_root, age_key,
                                                              overrides, message):
    target = tmp_path / "target"
    code, result = _main(capsys, "--config", _write_config(tmp_path, _config(appliance_root, target, age_key,
                                                                             **overrides)))
    assert code == cli.EXIT_CONFIG, result
    assert result["error"] == "ConfigError" and message in result["message"], result
    assert _sidecars(target) == []  # refused before a snapshot was taken, not after


# --- runs -------------------------------------------------------------------------------------------

def test_run_snapshots_verifies_and_prunes_on_a_path_target(tmp_path, capsys, appliance_root, age_key):
    target = tmp_path / "target"
    config = _config(appliance_root, target, age_key, verify={"mode": "deep",
                                                              "decryption": {"identity_file": age_key["identity_file"]}},
                     prune={"keep_last": 1})
    path = _write_config(tmp_path, config)
    code, first = _main(capsys, "--config", path)
    assert code == cli.EXIT_OK, first
    assert first["status"] == "ok" and first["appliance"] == APPLIANCE
    # galera.cnf of the seed says cluster member, no health URL: backed up (when_role_unknown defaults to backup)
    assert first["cluster"]["role"] == "cluster_member" and first["cluster"]["is_primary"] is None
    assert first["snapshot"]["components"] == COMPONENTS
    assert first["verify"]["ok"] is True and first["verify"]["mode"] == "deep"
    assert _sidecars(target) == [os.path.basename(first["snapshot"]["object"]).rsplit(".tar", 1)[0] + ".json"]

    code, second = _main(capsys, "--config", path)
    assert code == cli.EXIT_OK, second
    assert second["prune"]["removed"] == [first["snapshot"]["id"]] and second["prune"]["errors"] == []
    sidecars = _sidecars(target)
    assert len(sidecars) == 1 and second["snapshot"]["id"] in sidecars[0]
    # the object opens with the standard tools and the private key
    folder = os.path.join(str(target), APPLIANCE, "snapshots")
    with open(os.path.join(folder, os.path.basename(second["snapshot"]["object"])), "rb") as handle:
        listing = subprocess.run("age -d -i '%s' | zstd -d | tar -t" % age_key["identity_file"], shell=True,
                                 stdin=handle, stdout=subprocess.PIPE, check=True, timeout=60).stdout.decode()
    assert listing.split()[0] == "snapshot.json" and listing.split()[-1] == "manifest.json"


def test_role_unknown_skip_and_fail(tmp_path, capsys, appliance_root, age_key):
    target = tmp_path / "target"
    code, result = _main(capsys, "--config", _write_config(
        tmp_path, _config(appliance_root, target, age_key, when_role_unknown="skip")))
    assert code == cli.EXIT_OK and result["status"] == "skipped", result
    assert "not the primary (cluster_member, from galera.cnf)" in result["reason"]
    code, result = _main(capsys, "--config", _write_config(
        tmp_path, _config(appliance_root, target, age_key, when_role_unknown="fail")))
    assert code == cli.EXIT_CONFIG and "cannot tell whether this node is the primary" in result["message"]
    assert _sidecars(target) == []


@pytest.fixture
def health_not_primary():
    with serve_segura_health() as server:
        yield "http://127.0.0.1:%d/flow/orbit/mntr/203" % server.server_address[1]  # 203: active, not primary


def test_contingency_node_is_skipped(tmp_path, capsys, appliance_root, age_key, health_not_primary):
    target = tmp_path / "target"
    config = _config(appliance_root, target, age_key)
    config["appliance"]["health_url"] = health_not_primary
    code, result = _main(capsys, "--config", _write_config(tmp_path, config))
    assert code == cli.EXIT_OK and result["status"] == "skipped", result
    assert result["cluster"] == {"role": "secondary", "is_primary": False, "source": "health", "status": 203}
    assert result["reason"] == "not the primary (secondary, from health)"
    assert _sidecars(target) == []


def test_failing_run_exits_1_and_names_the_cause_without_the_password(tmp_path, capsys, appliance_root, age_key):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config = _config(appliance_root, tmp_path / "target", age_key,
                     target={"type": "smb", "server": "127.0.0.1", "port": closed_port, "share": "backup",
                             "username": "backup", "password": SECRET, "timeout": 3})
    code, result = _main(capsys, "--config", _write_config(tmp_path, config))
    assert code == cli.EXIT_FAILED, result
    assert result["status"] == "failed" and result["error"].startswith("Target")
    assert "127.0.0.1" in result["message"]
    assert SECRET not in json.dumps(result)


# --- the real job: a subprocess, syslog on a private /dev/log --------------------------------------

NAMESPACE_SCRIPT = r"""
set -e
mount --bind /dev "$1/hostdev"
mount -t tmpfs -o mode=755 segura-cli-test-dev /dev
for name in null zero urandom random; do touch "/dev/$name"; mount --bind "$1/hostdev/$name" "/dev/$name"; done
touch /dev/log
mount --bind "$1/log" /dev/log
shift
exec "$@"
"""


class SyslogDouble:
    """A datagram socket that stands in for /dev/log inside the job's mount namespace."""

    def __init__(self, folder):
        self.folder = folder
        os.makedirs(os.path.join(folder, "hostdev"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.path.join(folder, "log"))
        self.sock.setblocking(False)

    def messages(self):
        received = []
        for dummy in range(1000):  # bounded: the job has exited, everything it sent is queued
            try:
                received.append(self.sock.recv(65536).decode("utf-8", "replace"))
            except BlockingIOError:
                break
        return received

    def close(self):
        self.sock.close()


@pytest.fixture
def syslog_double(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private /dev/log")
    double = SyslogDouble(str(tmp_path / "syslog"))
    yield double
    double.close()


def _job(syslog_double, config_path, *extra):
    """python -m ...cli as the systemd unit runs it, in a private mount namespace with /dev/log = the double."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([COLLECTIONS, ROOT]))
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT, "job", syslog_double.folder,
            sys.executable, "-m", "ansible_collections.segura.backup.plugins.module_utils._engine.cli",
            "--config", config_path] + list(extra)
    result = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
                            cwd=ROOT, check=False)
    return result, syslog_double.messages()


def test_job_success_sends_event_18(tmp_path, syslog_double, appliance_root, age_key):
    target = tmp_path / "target"
    config = _config(appliance_root, target, age_key, encryption={"mode": "passphrase", "passphrase": SECRET})
    result, messages = _job(syslog_double, _write_config(tmp_path, config))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert len(messages) == 1, messages
    # <30> = facility daemon (3) * 8 + info (6)
    assert messages[0].startswith("<30>") and "segura-backup[" in messages[0]
    assert "event=18 Backup performed: %s snapshot %s" % (APPLIANCE, summary["snapshot"]["id"]) in messages[0]
    assert SECRET not in result.stdout + result.stderr + "".join(messages)
    assert len(_sidecars(target)) == 1


def test_job_failure_sends_event_19_without_the_secret(tmp_path, syslog_double, appliance_root, age_key):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the target folder should be")
    config = _config(appliance_root, blocker, age_key, encryption={"mode": "passphrase", "passphrase": SECRET})
    result, messages = _job(syslog_double, _write_config(tmp_path, config))
    assert result.returncode == cli.EXIT_FAILED, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["status"] == "failed"
    assert len(messages) == 1, messages
    assert messages[0].startswith("<27>")  # daemon * 8 + err (3)
    assert "event=19 Error on backup: " in messages[0] and str(blocker) in messages[0]
    assert SECRET not in result.stdout + result.stderr + "".join(messages)


def test_job_configuration_error_exits_2_with_event_19(tmp_path, syslog_double):
    result, messages = _job(syslog_double, _write_config(tmp_path, "{}"))
    assert result.returncode == cli.EXIT_CONFIG
    assert len(messages) == 1 and "event=19 Error on backup: configuration: " in messages[0], messages


def test_job_without_syslog_sends_nothing(tmp_path, syslog_double, appliance_root, age_key):
    result, messages = _job(syslog_double, _write_config(tmp_path, "{}"), "--no-syslog")
    assert result.returncode == cli.EXIT_CONFIG
    assert messages == []


# --- JSON spellings, check mode, and a failure after the snapshot ------------------------------------

def test_nulls_mean_defaults_and_true_means_default_verify(tmp_path, capsys, appliance_root, age_key):
    target = tmp_path / "target"
    config = _config(appliance_root, target, age_key, verify=True, compression=None, database=None,
                     lock_ttl=None)
    config["target"]["timeout"] = None
    code, result = _main(capsys, "--config", _write_config(tmp_path, config))
    assert code == cli.EXIT_OK, result
    assert result["verify"]["mode"] == "quick" and result["verify"]["ok"] is True


def test_compression_threads_minus_one_means_one_per_cpu(tmp_path, capsys, appliance_root, age_key):
    target = tmp_path / "target"
    code, result = _main(capsys, "--config", _write_config(
        tmp_path, _config(appliance_root, target, age_key, compression={"threads": -1})))
    assert code == cli.EXIT_OK, result


def test_required_target_keys_must_not_be_empty(tmp_path, capsys, appliance_root, age_key):
    config = _config(appliance_root, tmp_path / "target", age_key)
    config["target"] = {"type": "nfs", "server": "", "export": "/backup"}
    code, result = _main(capsys, "--config", _write_config(tmp_path, config))
    assert code == cli.EXIT_CONFIG and "a nfs target needs a non-empty server" in result["message"], result


def test_check_mode_shows_the_prune_plan_and_removes_nothing(tmp_path, capsys, appliance_root, age_key):
    from ansible_collections.segura.backup.plugins.module_utils._engine import job

    target = tmp_path / "target"
    path = _write_config(tmp_path, _config(appliance_root, target, age_key, prune={"keep_last": 2}))
    ids = []
    for _run in range(2):
        code, result = _main(capsys, "--config", path)
        assert code == cli.EXIT_OK, result
        ids.append(result["snapshot"]["id"])
    before = _sidecars(target)
    assert len(before) == 2
    params = cli.load_config(_write_config(tmp_path, _config(appliance_root, target, age_key, prune={"keep_last": 1})))
    checked = job.run_backup(params, check_mode=True)
    assert checked["status"] == "checked" and checked["prune"]["dry_run"] is True
    assert checked["prune"]["removed"] == [ids[0]]  # what a real run would remove
    assert _sidecars(target) == before  # and nothing was


def test_a_failed_verify_still_reports_the_snapshot_taken(tmp_path, capsys, appliance_root, age_key, monkeypatch):
    from ansible_collections.segura.backup.plugins.module_utils._engine import job
    from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError

    def failing_verify(self, target, snapshot_id):
        raise BackupError("snapshot %s failed verification: test double" % snapshot_id)

    monkeypatch.setattr(job.BackupJob, "verify_new", failing_verify)
    target = tmp_path / "target"
    code, result = _main(capsys, "--config", _write_config(tmp_path, _config(appliance_root, target, age_key)))
    assert code == cli.EXIT_FAILED and result["status"] == "failed", result
    assert result["snapshot"]["id"] in result["message"]
    assert _sidecars(target) == [os.path.basename(result["snapshot"]["object"]).rsplit(".tar", 1)[0] + ".json"]


def test_a_stopped_job_reports_event_19_and_exits_failed(monkeypatch, capsys):
    """systemctl stop (SIGTERM) mid-job: the job unwinds, and the stop is an error event like any other."""
    import signal
    import time

    events = []
    monkeypatch.setattr(cli, "_event", lambda level, text: events.append((level, text)))
    monkeypatch.setattr(cli, "load_config", lambda path: {})

    def stopped_midway(params, notify, progress=None):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the job")

    monkeypatch.setattr(cli, "run_backup", stopped_midway)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["--config", "unused.json"]) == cli.EXIT_FAILED
    assert events == [("error", "event=19 Error on backup: stopped by SIGTERM before it finished; "
                                "nothing unfinished was published")]
    assert json.loads(capsys.readouterr().out)["error"] == "RunStopped"
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_a_job_stopped_during_verify_still_reports_its_snapshot(
        tmp_path, monkeypatch, capsys, appliance_root, age_key):
    """The snapshot was published before the stop came: the failed job's summary says which one."""
    import signal
    import time

    from ansible_collections.segura.backup.plugins.module_utils._engine import job

    def stopped_while_verifying(self, target, snapshot_id):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the job")

    monkeypatch.setattr(job.BackupJob, "verify_new", stopped_while_verifying)
    monkeypatch.setattr(cli, "_event", lambda level, text: None)
    target = tmp_path / "target"
    config = _config(appliance_root, target, age_key)  # verify: quick, the default
    assert cli.main(["--config", _write_config(tmp_path, config)]) == cli.EXIT_FAILED
    emitted = json.loads(capsys.readouterr().out)
    assert emitted["error"] == "RunStopped" and emitted["status"] == "failed"
    assert emitted["snapshot"]["id"] and [emitted["snapshot"]["id"] in name for name in _sidecars(target)] == [True]
