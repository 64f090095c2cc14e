"""A run stopped from outside (#21 item 4): a stop signal to the module process, SIGTERM to
ansible-playbook, and AWX's cancel (ansible-runner SIGKILLs ansible-playbook's whole process group).

To stop a run at a known point, the test holds a write lock on one of the appliance's tables from a
second MariaDB session: the module's dump then waits in the middle of the snapshot, with the
appliance lock held and the partial object open, until the table is released. Each case ends with the
same checks: no process of the run is left, the next run goes ahead at once (no waiting for a ttl),
no partial object is left, and the earlier snapshot still deep-verifies.
"""

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time

import pytest

from tests.faults.conftest import deep_check_all, snapshot_dir_files
from tests.integration.conftest import snapshot_args
from tests.integration.playbook import PYTHON, VENV_BIN, ansible_env, run_task
from tests.lab import core

ansible_runner = pytest.importorskip("ansible_runner")


@contextlib.contextmanager
def table_held(defaults_file=None, client_argv=None, client_env=None):
    """LOCK TABLES ... WRITE on the first table of `mt4` from another session, until the block ends.

    The session is a `mariadb` client here (``defaults_file``) or any command that runs one (``client_argv``,
    e.g. inside an appliance container)."""
    argv = client_argv or ["mariadb", "--defaults-file=" + defaults_file]
    client = subprocess.Popen(argv + ["--batch", "--skip-column-names", "--unbuffered"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env)
    try:
        client.stdin.write("SELECT CONCAT('mt4.', table_name) FROM information_schema.tables "
                           "WHERE table_schema = 'mt4' ORDER BY table_name LIMIT 1;\n")
        client.stdin.flush()
        table = client.stdout.readline().strip()
        assert table.startswith("mt4."), table
        client.stdin.write("LOCK TABLES %s WRITE; SELECT 'held';\n" % table)
        client.stdin.flush()
        assert client.stdout.readline().strip() == "held"
        yield table
    finally:
        client.stdin.close()  # the session ends, and its table lock with it
        try:
            client.wait(timeout=30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait(timeout=30)
        client.stdout.close()
        client.stderr.close()


def _descendants(pid):
    """PIDs below ``pid`` (children first), from /proc; bounded by the process count."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, encoding="ascii", errors="replace") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, pending = [], [pid]
    while pending and len(found) < 10000:
        for child in children.get(pending.pop(0), []):
            found.append(child)
            pending.append(child)
    return found


def _is_dump(pid):
    return os.path.basename(_cmdline(pid).split(" ", 1)[0]) in ("mariadb-dump", "mysqldump")


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class StoppableRun:
    """One snapshot task run by ansible-playbook (connection local), stopped from outside."""

    def __init__(self, appliance, target, recipient, workdir):
        self.appliance = appliance
        self.target = target
        self.args = snapshot_args(appliance, target, {"recipients": [recipient]})
        self.workdir = workdir
        self.lock = os.path.join(target.appliance_dir(), "lock")
        self.snapshots = os.path.join(target.appliance_dir(), "snapshots")

    def playbook(self):
        play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
                 "vars": {"ansible_python_interpreter": PYTHON},
                 "tasks": [{"name": "snapshot", "segura.backup.snapshot": self.args}]}]
        path = os.path.join(self.workdir, "snapshot.yml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(play))
        return path

    def start(self):
        return subprocess.Popen([os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", self.playbook()],
                                cwd=self.workdir, env=ansible_env(self.workdir), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait_until_mid_snapshot(self, root_pid):
        """The module process, once it holds the lock and its dump waits on the held table."""
        def module_pid():
            for pid in _descendants(root_pid):  # the python running it, not the `sh -c` around it
                argv = _cmdline(pid).split(" ")
                if os.path.basename(argv[0]).startswith("python") and "AnsiballZ_snapshot" in _cmdline(pid):
                    return pid
            return None

        def waiting():
            partials = [n for n in os.listdir(self.snapshots) if n.endswith(".partial")] \
                if os.path.isdir(self.snapshots) else []
            return module_pid() and os.path.exists(self.lock) and partials \
                and any(_is_dump(pid) for pid in _descendants(root_pid))

        if not core.wait_for(waiting, 60, 0.05):
            seen = {pid: _cmdline(pid)[:200] for pid in _descendants(root_pid)}
            pytest.fail("the snapshot never reached its dump: lock %s, processes %s"
                        % (os.path.exists(self.lock), seen))
        return module_pid()

    def assert_healed(self, good_id, identity_file, published_meanwhile=0):
        """Nothing left behind that blocks or misleads: the next run goes at once, no partial stays."""
        assert not [n for n in snapshot_dir_files(self.target.server_dir) if n.endswith(".partial")] \
            or os.path.exists(self.lock)  # a partial may only be left with the lock of the killed run
        following = run_task("segura.backup.snapshot", self.args)
        assert following.rc == 0, following.output
        left = snapshot_dir_files(self.target.server_dir)
        assert not [n for n in left if n.endswith(".partial")], left
        assert not os.path.exists(self.lock)
        listing = deep_check_all(self.target.options, identity_file)
        complete = sorted(r.id for r in listing.snapshots if r.complete)
        assert len(complete) == 2 + published_meanwhile, complete
        assert good_id in complete and following.result["snapshot"]["id"] in complete
        return following.result["snapshot"]


@pytest.fixture
def stoppable(reference_appliance, lab_target_factory, age_identity, tmp_path):
    run = StoppableRun(reference_appliance, lab_target_factory("path"), age_identity["recipient"], str(tmp_path))
    first = run_task("segura.backup.snapshot", run.args)
    assert first.rc == 0, first.output
    run.good_id = first.result["snapshot"]["id"]
    return run


def _finish(process, timeout=120):
    try:
        output = process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        _kill_tree(process.pid)
        output = process.communicate(timeout=30)[0]
        pytest.fail("the run did not end within %ds of being stopped:\n%s" % (timeout, output[-3000:]))
    return output


def _kill_tree(pid):
    """SIGKILL ``pid`` and every process below it (the module runs in a session of its own, so killing
    a process group would miss it); for the cleanup of a failed test."""
    for victim in reversed([pid] + _descendants(pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


@contextlib.contextmanager
def cleaned_up(process):
    """Whatever the test asserts, nothing it started outlives it."""
    try:
        yield process
    finally:
        if process.poll() is None:
            _kill_tree(process.pid)
            process.wait(timeout=30)
        if process.stdout:
            process.stdout.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_to_the_module_stops_it_cleanly(stoppable, reference_appliance, age_identity, signum):
    """systemctl stop, a shutdown, Ctrl-C, a hang-up: the module unwinds, releases its lock, removes its partial."""
    with table_held(reference_appliance["defaults_file"]), cleaned_up(stoppable.start()) as process:
        module = stoppable.wait_until_mid_snapshot(process.pid)
        dumps = [pid for pid in _descendants(module) if _is_dump(pid)]
        started = time.monotonic()
        os.kill(module, signum)
        output = _finish(process)
        stopped_in = time.monotonic() - started
    assert process.returncode != 0
    assert "stopped by %s before it finished; nothing unfinished was published" % signum.name in output, output[-3000:]
    assert stopped_in < 30, stopped_in
    print("\n%s to the module: ansible-playbook ended %.2fs later" % (signum.name, stopped_in))
    assert not any(core.pid_alive(pid) for pid in dumps), "the dump outlived the stopped run"
    assert not os.path.exists(stoppable.lock), "a cleanly stopped run releases its lock"
    assert not [n for n in os.listdir(stoppable.snapshots) if n.endswith(".partial")]
    following = stoppable.assert_healed(stoppable.good_id, age_identity["identity_file"])
    assert following["lock_taken_over"] is False


def test_sigterm_to_ansible_playbook(stoppable, reference_appliance, age_identity):
    """`kill <ansible-playbook>` (or `timeout`): what the module does then, and that nothing blocks the next run."""
    with table_held(reference_appliance["defaults_file"]), cleaned_up(stoppable.start()) as process:
        module = stoppable.wait_until_mid_snapshot(process.pid)
        os.kill(process.pid, signal.SIGTERM)
        output = _finish(process)
        # ansible-playbook passes the stop on to its workers and they to the module, which unwinds
        # (while its dump still waits on the held table: it did not finish, it stopped)
        module_ended = core.wait_for(lambda: not core.pid_alive(module), 30)
        assert module_ended, "the module process outlived ansible-playbook by 30 s"
        assert not os.path.exists(stoppable.lock), "the module was stopped without releasing its lock"
    assert process.returncode != 0, output
    following = stoppable.assert_healed(stoppable.good_id, age_identity["identity_file"])
    assert following["lock_taken_over"] is False


def test_awx_cancel_lets_the_module_finish_and_release_its_lock(
        stoppable, reference_appliance, age_identity, tmp_path):
    """AWX cancels through ansible-runner, which SIGKILLs ansible-playbook's process group. The module runs
    in a session of its own (ansible's workers call setsid), so it is not in that group: it finishes its
    snapshot, publishes it and releases the lock; a run started meanwhile is refused, naming it, and the
    next one goes ahead."""
    private = tempfile.mkdtemp(prefix="runner-", dir=str(tmp_path))
    cancel = {"now": False}
    with table_held(reference_appliance["defaults_file"]):
        runner_thread, runner = ansible_runner.run_async(
            private_data_dir=private, playbook=stoppable.playbook(), inventory="localhost,", quiet=True,
            cancel_callback=lambda: cancel["now"],
            envvars={k: v for k, v in ansible_env(private).items() if k.startswith("ANSIBLE_") or k == "PATH"})
        try:
            def playbook():
                return next((pid for pid in _descendants(os.getpid()) if "ansible-playbook" in _cmdline(pid)), None)

            # runner.status says "running" a moment before its ansible-playbook exists: look for the process
            assert core.wait_for(lambda: playbook() is not None, 60, 0.05), "ansible-runner did not start ansible-playbook"
            playbook_pid = playbook()
            module = stoppable.wait_until_mid_snapshot(playbook_pid)
        finally:
            cancel["now"] = True  # also when the test failed: ansible-runner tears its run down
            runner_thread.join(timeout=120)
        assert not runner_thread.is_alive()
        assert runner.status == "canceled"
        assert not core.pid_alive(playbook_pid)
        assert core.pid_alive(module) and os.path.exists(stoppable.lock)
        meanwhile = run_task("segura.backup.snapshot", stoppable.args)
        assert meanwhile.rc != 0 and "is locked by host" in meanwhile.result["msg"], meanwhile.output
        assert "pid %d" % module in meanwhile.result["msg"]
    # the table is free again: the cancelled job's module finishes on its own
    assert core.wait_for(lambda: not core.pid_alive(module), 60), "the module did not finish"
    assert not os.path.exists(stoppable.lock)
    following = stoppable.assert_healed(stoppable.good_id, age_identity["identity_file"], published_meanwhile=1)
    assert following["lock_taken_over"] is False
