"""Run a module of the collection (or a playbook) through the real `ansible-playbook`, and read its result.

    result = run_task("segura.backup.snapshot", {"target": {...}, "encryption": {...}}, check=True)
    assert result.rc == 0, result.stdout
    result.result["preflight"]["ok"]

ansible-core 2.19 ships no `json` stdout callback and ansible.posix is not installed here, so the
one-task playbook registers the module's result and an `always:` task writes it to a file (in check
mode too) that we read back. Module arguments travel in the playbook file itself (JSON is YAML, so a
hostile password is quoted exactly), written 0600 in a private temporary folder and never on a
command line. Beware: ansible templates string arguments, so a value holding `{{` would be expanded.
"""

import json
import os
import shutil
import subprocess
import tempfile
from typing import NamedTuple, Optional

from tests.exec_trace import traced

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
COLLECTIONS = os.path.join(REPO, ".build", "collections")
TIMEOUT = 540  # seconds; below the 10-minute ceiling of one command


class TaskResult(NamedTuple):
    rc: int
    result: dict
    stdout: str
    stderr: str

    @property
    def failed(self) -> bool:
        return self.rc != 0 or bool(self.result.get("failed"))

    @property
    def output(self) -> str:
        """Everything the run printed (for secret scans and failure messages)."""
        return self.stdout + "\n" + self.stderr


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def ansible_env(workdir: str, extra_env: Optional[dict] = None) -> dict:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": os.path.join(workdir, "tmp"),
        "ANSIBLE_REMOTE_TEMP": os.path.join(workdir, "tmp"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "PATH": VENV_BIN + os.pathsep + env.get("PATH", ""),
    })
    env.update(extra_env or {})
    return env


def _run(argv, workdir: str, extra_env: Optional[dict]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=workdir, env=ansible_env(workdir, extra_env), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT, check=False)


def run_task(module: str, args: dict, check: bool = False, verbosity: int = 0,
             extra_env: Optional[dict] = None) -> TaskResult:
    """Run one task of `module` with `args` on localhost (connection local, the venv's python)."""
    workdir = tempfile.mkdtemp(prefix="segura-task-")
    try:
        result_file = os.path.join(workdir, "result.json")
        play = [{
            "name": "one task",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": PYTHON},
            "tasks": [{
                "block": [{"name": "the task", module: args, "register": "task_result"}],
                "always": [{
                    "name": "save the result",
                    "ansible.builtin.copy": {"content": "{{ task_result | to_json }}", "dest": result_file,
                                             "mode": "0600"},
                    "check_mode": False,
                    "no_log": True,  # the result is read from the file, not from the log
                }],
            }],
        }]
        playbook = os.path.join(workdir, "task.yml")
        _write_private(playbook, json.dumps(play, indent=2))
        argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", playbook]
        if check:
            argv.append("--check")
        if verbosity:
            argv.append("-" + "v" * verbosity)
        completed = _run(argv, workdir, extra_env)
        result = {}
        if os.path.exists(result_file):
            with open(result_file, encoding="utf-8") as handle:
                result = json.load(handle)
        return TaskResult(completed.returncode, result, completed.stdout, completed.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_playbook(path: str, inventory: dict, extra_vars: Optional[dict] = None, verbosity: int = 0,
                 extra_env: Optional[dict] = None, trace_file: Optional[str] = None) -> TaskResult:
    """Run a playbook (a path, or a name like `segura.backup.backup`) with an inventory given as a dict.

    Inventory and extra vars go into 0600 JSON files (they may hold passwords). `result` is empty:
    read what the playbook left on the target instead. With ``trace_file``, every command line the run
    starts is recorded there (tests/exec_trace.py).
    """
    workdir = tempfile.mkdtemp(prefix="segura-playbook-")
    try:
        inventory_file = os.path.join(workdir, "inventory.yml")
        _write_private(inventory_file, json.dumps(inventory, indent=2))
        argv = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory_file, path]
        if extra_vars:
            vars_file = os.path.join(workdir, "extra_vars.json")
            _write_private(vars_file, json.dumps(extra_vars))
            argv += ["-e", "@" + vars_file]
        if verbosity:
            argv.append("-" + "v" * verbosity)
        if trace_file:
            argv = traced(argv, trace_file)
        completed = _run(argv, workdir, extra_env)
        return TaskResult(completed.returncode, {}, completed.stdout, completed.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
