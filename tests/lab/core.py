# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared machinery of the lab: state folder, pid files, readiness polling, process cleanup.

Every process the lab starts is recorded in a pid file under the state folder, and `down` stops
exactly those processes (plus helpers that carry the lab's own config path in their command line).
Nothing is ever killed by name: other people run servers on the same machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_STATE_DIR = os.path.join(REPO_ROOT, ".lab")
STATE_ENV = "SEGURA_LAB_STATE"

STOP_TIMEOUT = 10.0  # seconds to wait after SIGTERM before SIGKILL
READY_TIMEOUT = 20.0  # seconds a server gets to become ready


class LabError(Exception):
    """A lab problem a person can fix; the message says what and how."""


class Service:
    """What every lab service provides (samba, ganesha, mariadb)."""

    name = "service"

    def __init__(self, state_dir: str):
        self.state_dir = os.path.abspath(state_dir)

    def up(self) -> dict:
        """Start if not running, wait until ready, return the endpoint dict."""
        raise NotImplementedError

    def down(self) -> None:
        """Stop exactly what this service started and remove its runtime bits."""
        raise NotImplementedError

    def status(self) -> dict:
        """Return {"running": bool, ...} without changing anything."""
        raise NotImplementedError

    def env(self) -> dict:
        """Return the endpoint dict (same as up's) without starting anything."""
        raise NotImplementedError


# --- state folder ---------------------------------------------------------------------------


def resolve_state_dir(explicit: Optional[str] = None) -> str:
    """The state folder: --state, else $SEGURA_LAB_STATE, else <repo>/.lab."""
    return os.path.abspath(explicit or os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR)


def ensure_dir(path: str, mode: int = 0o755) -> str:
    os.makedirs(path, mode=mode, exist_ok=True)
    return path


def write_private_file(path: str, text: str) -> None:
    """Write a 0600 file without a moment where it is readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


def write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def state_lock(state_dir: str, timeout: float = 120.0) -> Iterator[None]:
    """Serialize up/down of one lab (two test sessions may start it at the same moment)."""
    ensure_dir(state_dir)
    with open(os.path.join(state_dir, "lab.lock"), "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError("another lab command holds %s/lab.lock for over %ds" % (state_dir, timeout))
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- binaries -------------------------------------------------------------------------------


def require_binary(name: str, apt_package: str) -> str:
    """Return the binary's path or say which apt package provides it."""
    for folder in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return found
    raise LabError("%s is not installed: apt-get install %s" % (name, apt_package))


def run(argv: List[str], stdin_text: Optional[str] = None, check: bool = True, timeout: float = 60.0):
    """Run a short command; on failure raise LabError with its stderr (never its stdin)."""
    result = subprocess.run(
        argv,
        input=stdin_text,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise LabError(
            "%s failed (exit %d): %s" % (" ".join(argv), result.returncode, (result.stderr or result.stdout).strip())
        )
    return result


# --- processes ------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a zombie holds no port and no file)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the command name in parentheses, which may itself hold spaces.
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_cmdline(pid: int) -> List[str]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            raw = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def pids_with_argument(value: str) -> List[int]:
    """PIDs whose command line holds `value` as an argument or as `--option=value`.

    Exact matching (not substring) so /tmp/lab/smb.conf never matches /tmp/lab2/smb.conf.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        args = pid_cmdline(int(entry))
        if any(arg == value or arg.endswith("=" + value) for arg in args[1:]):
            if pid_alive(int(entry)):
                found.append(int(entry))
    return sorted(found)


def write_pid_file(path: str, pid: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("%d\n" % pid)


def read_pid_file(path: str) -> Optional[int]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def tracked_pid(pid_file: str, belongs: Callable[[int], bool]) -> Optional[int]:
    """The live PID recorded in pid_file, or None; a stale file (process gone or PID reused by
    something that is not ours) is removed so the next start begins clean."""
    pid = read_pid_file(pid_file)
    if pid is None:
        if os.path.exists(pid_file):
            os.unlink(pid_file)
        return None
    if pid_alive(pid) and belongs(pid):
        return pid
    os.unlink(pid_file)
    return None


def stop_pids(pids: Iterable[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the given PIDs, wait (bounded) until they are gone, SIGKILL what is left."""
    pending = [pid for pid in pids if pid_alive(pid)]
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if wait_for(lambda: not any(pid_alive(pid) for pid in pending), timeout):
        return
    for pid in pending:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if not wait_for(lambda: not any(pid_alive(pid) for pid in pending), 5.0):
        raise LabError("processes %s survived SIGKILL" % [pid for pid in pending if pid_alive(pid)])


def spawn(argv: List[str], log_path: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """Start a daemon in its own session with output to log_path; the caller records its PID."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )


def log_tail(log_path: str, lines: int = 15) -> str:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except FileNotFoundError:
        return "(no log)"


# --- readiness ------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll condition until it is true or the deadline passes; return whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tcp_port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(
    what: str, condition: Callable[[], bool], process: Optional[subprocess.Popen], log_path: str,
    timeout: float = READY_TIMEOUT,
) -> None:
    """Wait until condition holds; fail early with the log if the process died meanwhile."""

    def ready_or_dead() -> bool:
        return condition() or (process is not None and process.poll() is not None)

    if not wait_for(ready_or_dead, timeout):
        raise LabError("%s not ready after %ds; log %s:\n%s" % (what, timeout, log_path, log_tail(log_path)))
    if not condition():
        raise LabError(
            "%s exited with code %s; log %s:\n%s" % (what, process.returncode, log_path, log_tail(log_path))
        )


def listeners_on(host: str, port: int) -> str:
    """Who listens on host:port, as `ss` reports it (for error messages)."""
    result = run(["ss", "-Hltnp", "sport = :%d" % port], check=False)
    lines = [line for line in result.stdout.splitlines() if host in line or "0.0.0.0" in line or "*:" in line]
    return " | ".join(" ".join(line.split()) for line in lines) or "unknown process"


# --- who uses the lab (so a test session never stops a lab someone else still uses) ----------

PIN_NAME = "pinned"  # written by a person's `up`, removed by `down`


def _lease_dir(state_dir: str) -> str:
    return ensure_dir(os.path.join(state_dir, "leases"))


def pin(state_dir: str) -> None:
    """Mark the lab as wanted by a person: test sessions then leave it running."""
    write_pid_file(os.path.join(_lease_dir(state_dir), PIN_NAME), 0)


def unpin(state_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_lease_dir(state_dir), PIN_NAME))


def take_lease(state_dir: str) -> str:
    """Record that this process (a test session) uses the lab; returns the lease path."""
    path = os.path.join(_lease_dir(state_dir), str(os.getpid()))
    write_pid_file(path, os.getpid())
    return path


def release_lease(state_dir: str, lease_path: str) -> int:
    """Drop our lease and stale ones; return how many users (live sessions, a pin) remain."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lease_path)
    remaining = 0
    folder = _lease_dir(state_dir)
    for name in os.listdir(folder):
        if name == PIN_NAME:
            remaining += 1
            continue
        pid = read_pid_file(os.path.join(folder, name))
        if pid is not None and pid_alive(pid):
            remaining += 1
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))
    return remaining


def run_command(command: str, actions: Dict[str, Callable[[], dict]], errors: tuple = ()) -> int:
    """The lab CLIs' common ending: run ``actions[command]``, print its result as JSON and return the exit
    status (1 with one line on stderr for a lab error; 3 when `status` finds it not running)."""
    try:
        result = actions[command]()
    except (LabError,) + tuple(errors) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 3 if command == "status" and not result["running"] else 0
