"""Fixtures of the fault suite: a private lab to break, hooks that pick the moment of a fault, and the
checks every fault must pass ("nothing lost").

The shared lab (tests/integration) is only read and written here, never stopped: every test that
kills a server, cuts a link or fills a share does it to `fault_lab`, a second lab instance with its
own state folder, SMB port, network namespace (segura-lab-f, 10.254.79.0/30) and a 3 MiB tmpfs
under its encrypted share. Its processes are killed by the PIDs the lab recorded (and smbd's
children by the lab's own config path, as `lab down` does).
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import timedelta

import pytest

# The shared fixtures of the integration suite (lab, reference appliance, age key, lab targets).
# Fixtures are used by name, so pylint sees them as unused imports.
from tests.integration.conftest import (  # noqa: F401 pylint: disable=unused-import
    APPLIANCE_NAME,
    LabTarget,
    age_identity,
    free_tcp_port,
    lab,
    lab_cli,
    lab_target_factory,
    make_lab_target,
    reference_appliance,
    sha256_file,
    snapshot_args,
    source_mariadb,
)
from tests.exec_trace import traced
from tests.integration.playbook import PYTHON, VENV_BIN, ansible_env
from tests.lab import core

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, retention
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import prune
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import DEFAULT_KEY_FILE, load_signing_key
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import SnapshotRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from ansible_collections.segura.backup.plugins.module_utils._engine.verification import verify_snapshot

FAULT_NETNS = "segura-lab-f"
FAULT_NET = "10.254.79"
FULL_SHARE_BYTES = 3 * 1024 * 1024
BIG_FILE_BYTES = 6 * 1024 * 1024  # incompressible: the object gets ~100 writes, so "middle" is a real middle
# Long on purpose: a run stalled by the machine's load never loses its lock midway, and a test that wants
# a dead run's lock stale says so explicitly (expire_lock) instead of sleeping past a short ttl.
LOCK_TTL = timedelta(minutes=30)


# --------------------------------------------------------------------------------------------------
# the private lab


class FaultLab:
    """A second lab (samba + ganesha) that tests may break; knows its daemons by recorded PIDs."""

    SERVICES = ("--service", "samba", "--service", "ganesha")

    def __init__(self, state_dir, env):
        self.state_dir = state_dir
        self.env = env
        self.info = {}

    def cli(self, *args, check=True):
        return lab_cli(*(list(args) + list(self.SERVICES)), state_dir=self.state_dir, env=self.env, check=check)

    def up(self):
        self.cli("up")
        self.info = json.loads(self.cli("env").stdout)
        return self.info

    def status(self):
        return json.loads(self.cli("status", check=False).stdout)

    # -- killing, by the PIDs the lab recorded ----------------------------------------------------

    def smbd_pids(self):
        """The lab's smbd (recorded PID) and every helper started with its config path (children)."""
        recorded = self.status()["samba"]["pid"]
        return sorted(set(([recorded] if recorded else []) + core.pids_with_argument(self.info["smb_conf"])))

    def kill_samba(self):
        pids = self.smbd_pids()
        assert pids, "the fault lab's smbd is not running"
        _kill_and_wait(pids)

    def kill_ganesha(self):
        pid = self.status()["ganesha"]["ganesha_pid"]
        assert pid, "the fault lab's ganesha is not running"
        _kill_and_wait([pid])

    def restart(self):
        """`up` again: it restarts whatever died, on the same port and namespace."""
        self.up()
        assert self.status()["samba"]["running"] and self.status()["ganesha"]["running"]

    # -- the NFS link -----------------------------------------------------------------------------

    @property
    def host_if(self):
        with open(os.path.join(self.state_dir, "nfs", "network.json"), encoding="utf-8") as handle:
            return json.load(handle)["host_if"]

    def set_link(self, up):
        subprocess.run(["ip", "link", "set", self.host_if, "up" if up else "down"], check=True, timeout=30)

    # -- targets ----------------------------------------------------------------------------------

    def target(self, kind, subdir=None):
        """A LabTarget of this lab; kind 'smb_full' is the encrypted share on its 3 MiB tmpfs."""
        full = kind == "smb_full"
        made = make_lab_target("smb_encrypted" if full else kind, self.info, None, subdir)
        made.kind = kind
        made.options["timeout"] = 5  # a dead server must fail a run in seconds, not minutes
        return made


def _kill_and_wait(pids, timeout=10.0):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert core.wait_for(lambda: not any(core.pid_alive(pid) for pid in pids), timeout), pids


@pytest.fixture(scope="session")
def fault_lab():
    """The private lab, up for the session; a tmpfs under its encrypted share makes it fill up.

    Its state folder is not below pytest's 0700 temp folders: smbd serves the shares as user `backup`.
    """
    state_dir = tempfile.mkdtemp(prefix="segura-fault-lab-")
    os.chmod(state_dir, 0o755)
    env = dict(os.environ, SEGURA_LAB_SMB_PORT=str(free_tcp_port()), SEGURA_LAB_NETNS=FAULT_NETNS,
               SEGURA_LAB_NET=FAULT_NET)
    full_share = os.path.join(state_dir, "shares", "backup_encrypted")
    os.makedirs(full_share)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0770" % FULL_SHARE_BYTES, "tmpfs", full_share],
                   check=True, timeout=30)
    lab_ = FaultLab(state_dir, env)
    try:
        lab_.up()
        yield lab_
    finally:
        with contextlib.suppress(Exception):
            lab_.set_link(True)
        lab_.cli("down", check=False)
        subprocess.run(["umount", full_share], check=False, timeout=60)
        if not os.path.ismount(full_share):
            shutil.rmtree(state_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# the appliance broken tests use


@pytest.fixture
def fault_appliance(reference_appliance, tmp_path):
    """A private copy of the reference appliance plus one incompressible config file of 6 MiB."""
    root = str(tmp_path / "appliance")
    shutil.copytree(reference_appliance["root"], root, symlinks=True)
    big = os.path.join(root, "etc", "senhasegura", "big.bin")
    os.makedirs(os.path.dirname(big), exist_ok=True)
    with open(big, "wb") as handle:
        handle.write(os.urandom(BIG_FILE_BYTES))
    return dict(reference_appliance, root=root)


def snapshot_request(appliance, recipient, components=("database", "config", "secrets"), name=APPLIANCE_NAME,
                     config_paths=None, lock_ttl=LOCK_TTL):
    layout_args = {"root": appliance["root"]}
    if config_paths is not None:
        layout_args["config_paths"] = config_paths
    return SnapshotRequest(
        appliance=name,
        layout=ApplianceLayout(**layout_args),
        encryption=Encryption.recipients_of([recipient]),
        db=DatabaseConnection(defaults_file=appliance["defaults_file"]) if "database" in components else None,
        components=components,
        chunk_size=1024 * 1024,
        lock_ttl=lock_ttl,
        db_method="logical",  # the fault matrix is about the dump path (see tests/integration/test_database_methods.py)
        # One thread: a byte read from the appliance reaches the target at once, which is what the
        # triggers ("after N bytes written") count on to act while a given file is being read.
        zstd_threads=0,
        signing_key=load_signing_key(os.path.join(appliance["root"], DEFAULT_KEY_FILE)),
    )


def child_pids(pid, name=None):
    """Live PIDs whose parent is ``pid`` (optionally only those whose command name is ``name``), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="utf-8", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] not in ("Z", "X") and (name is None or comm == name):
            found.append(int(entry))
    return found


# --------------------------------------------------------------------------------------------------
# hooks: a real target whose calls announce themselves, so a test can break the server at that moment


class _HookedHandle:
    def __init__(self, inner, relpath, hook):
        self._inner = inner
        self._relpath = relpath
        self._hook = hook
        self.written = 0

    def write(self, data):
        written = self._inner.write(data)
        self.written += len(data) if written is None else written
        self._hook("write", self._relpath, self.written)
        return written

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)


class HookedTarget:
    """Delegates to a real Target; calls ``hook(event, relpath, count)`` around writes and renames.

    Events: 'open_write' (after the open), 'write' (after each write, count = bytes so far),
    'rename' (before it happens), 'renamed' (after it happened).
    """

    def __init__(self, inner, hook):
        self._inner = inner
        self._hook = hook

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def open_write(self, relpath, exclusive=False):
        handle = self._inner.open_write(relpath, exclusive=exclusive)
        self._hook("open_write", relpath, 0)
        return _HookedHandle(handle, relpath, self._hook)

    def write_bytes(self, relpath, data, exclusive=False):
        # Through our open_write, so small files (sidecar, lock) announce themselves too.
        with self.open_write(relpath, exclusive=exclusive) as handle:
            handle.write(data)

    def rename(self, src, dst, replace=False):
        self._hook("rename", src, 0)
        result = self._inner.rename(src, dst, replace=replace)
        self._hook("renamed", dst, 0)
        return result

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._inner.close()
        return False


class Trigger:
    """Fires ``action`` once, the first time ``when(event, relpath, count)`` holds."""

    def __init__(self, when, action):
        self.when = when
        self.action = action
        self.fired = False

    def __call__(self, event, relpath, count):
        if not self.fired and self.when(event, relpath, count):
            self.fired = True
            self.action()


def is_object_partial(relpath):
    return relpath.endswith((".tar.zst.age.partial", ".tar.zst.partial"))


def is_sidecar_partial(relpath):
    name = os.path.basename(relpath)
    return name.endswith(".json.partial") and not name.endswith((".sessions.json.partial", ".verify.json.partial"))


# --------------------------------------------------------------------------------------------------
# "nothing lost": the checks after every fault


NFS_LEASE_SECONDS = 10  # ganesha's Lease_Lifetime in the lab (tests/lab/ganesha.py)


def expire_lock(target_options, appliance=APPLIANCE_NAME, nfs=False):
    """Make the lock a broken run left behind stale, explicitly: its expiry is rewritten into the past
    through the target's own protocol (never behind the server's back). The broken run was this test's
    own process, which is alive, so only expiry lets the next run take the lock over.

    With ``nfs``, also wait out the NFSv4 lease of the dead client: until it expires ganesha keeps
    its open state, and nfs-rs reports the next mkdir of the same folder as "uncertain" (measured).
    """
    relpath = catalog.lock_path(appliance)
    with open_target(target_options) as target:
        if target.exists(relpath):
            doc = json.loads(target.read_bytes(relpath).decode("utf-8"))
            doc["expires"] = doc["refreshed"] = "2000-01-01T00:00:00Z"
            target.write_bytes(relpath, json.dumps(doc).encode("utf-8"))
    if nfs:
        time.sleep(NFS_LEASE_SECONDS + 2)


def deep_check_all(target_options, identity_file, appliance=APPLIANCE_NAME):
    """backup_info's view (a full listing) and a deep verification of every complete snapshot.

    Returns the listing. Fails if any snapshot that looks complete is damaged or does not verify.
    """
    decryption = Decryption.identity_file(identity_file)
    with open_target(target_options) as target:
        listing = catalog.list_snapshots(target, appliance)
        assert listing.complete, listing.errors
        for record in listing.snapshots:
            assert record.status in (catalog.STATUS_COMPLETE, catalog.STATUS_PARTIAL), (
                record.id, record.status, record.problem)
            if record.complete:
                result = verify_snapshot(target, record, mode="deep", decryption=decryption)
                assert result.ok, (record.id, result.problems)
    return listing


def prune_partials(target_options, appliance=APPLIANCE_NAME):
    """prune with partial_grace 0 and a policy that keeps every complete snapshot."""
    with open_target(target_options) as target:
        (outcome,) = prune(target, retention.Policy(keep_last=-1), appliance=appliance,
                           partial_grace=timedelta(0), lock_ttl=LOCK_TTL)
    assert outcome.error is None, outcome.error
    return outcome


def snapshot_dir_files(server_dir, appliance=APPLIANCE_NAME):
    folder = os.path.join(server_dir, appliance, "snapshots")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def tree_listing(root):
    """{relative path: (kind, size, sha256 or link target)} of a local tree, to prove nothing changed."""
    result = {}
    if not os.path.isdir(root):
        return result
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if os.path.islink(path):
                result[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                result[rel] = ("dir", info.st_mode & 0o7777)
            else:
                result[rel] = ("file", info.st_size, sha256_file(path), info.st_mode & 0o7777)
    return result


# --------------------------------------------------------------------------------------------------
# playbooks with many tasks (bad input is tried in groups) and with everything they print kept


def run_tasks(tasks, verbosity=0, check=False, keep_dir=None, extra_env=None, timeout=540, trace_file=None):
    """Run several tasks (each: {"name", module: args}) in one play, each with ignore_errors.

    Returns (results in task order, CompletedProcess). Arguments travel in a 0600 playbook file.
    With ``keep_dir`` the work folder (tmp dirs included) is kept there for inspection; with ``trace_file``
    every command line the run starts is recorded there (tests/exec_trace.py).
    """
    workdir = keep_dir or tempfile.mkdtemp(prefix="segura-faults-")
    os.makedirs(workdir, exist_ok=True)
    try:
        result_file = os.path.join(workdir, "results.json")
        play_tasks = []
        for index, task in enumerate(tasks):
            task = dict(task, register="r%d" % index, ignore_errors=True)
            play_tasks.append(task)
        collected = "{{ [%s] | to_json }}" % ", ".join("r%d" % i for i in range(len(tasks)))
        play_tasks.append({"name": "save the results", "no_log": True, "check_mode": False,
                           "ansible.builtin.copy": {"content": collected, "dest": result_file, "mode": "0600"}})
        play = [{"name": "faults", "hosts": "localhost", "connection": "local", "gather_facts": False,
                 "vars": {"ansible_python_interpreter": PYTHON}, "tasks": play_tasks}]
        playbook = os.path.join(workdir, "faults.yml")
        fd = os.open(playbook, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(play, indent=1))
        argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", playbook]
        if check:
            argv.append("--check")
        if verbosity:
            argv.append("-" + "v" * verbosity)
        if trace_file:
            argv = traced(argv, trace_file)
        env = ansible_env(workdir, extra_env)
        completed = subprocess.run(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, timeout=timeout, check=False)
        results = []
        if os.path.exists(result_file):
            with open(result_file, encoding="utf-8") as handle:
                results = json.load(handle)
        return results, completed
    finally:
        if keep_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
