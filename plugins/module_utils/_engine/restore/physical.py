# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The physical database method's restore: a whole datadir, swapped in, checked, rolled back on failure.

Order of work, and why:
1. preflight (``physical_preflight``): the same mariadb-backup version as the snapshot's (a prepared
   copy is only readable by its own server version), free space beside the datadir, and - with
   ``service: none`` - no server holding it;
2. every verified chunk is fed to ONE ``mbstream -x`` into a staging folder beside the datadir (the
   same filesystem, so the swap is a rename; ``swap.py`` moves entries when it cannot be);
3. ``mariadb-backup --prepare``, then a throwaway ``mariadbd --skip-networking`` on the staging folder:
   it proves the copy starts, and its per-table facts (rows, history included, and CHECKSUM TABLE) are
   what the restored server must show - facts of the snapshot's own point, not of a re-dump;
4. ownership of the old datadir; stop the service (and its socket units); move the datadir to
   ``<datadir>.pre-restore-<ts>`` and the staging folder into its place; start the service; compare
   its facts with step 3's;
5. any failure after the first move puts the old datadir back and starts it again (and says so).
Nothing before step 4 touches the running server; an error there removes the staging folder only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.dump import die_with_parent, widen_pipe
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection, run_query, stderr_excerpt
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.physical import (
    COMPLETED,
    backup_tool,
    find_server,
    server_version,
    short_version,
    tool_version,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.tablefacts import compare_facts, table_facts
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.swap import DatadirSwap
from ansible_collections.segura.backup.plugins.module_utils._engine.text import describe_bytes

NO_SERVICE = "none"
#: Prepared InnoDB files take about what the stream holds; the margin covers the redo log applied.
PHYSICAL_SPACE_FACTOR = 1.1
#: Files a running mariadbd keeps an fcntl lock on: if one is locked, a server holds the datadir.
LOCKED_FILES = ("ibdata1", "aria_log_control")
#: Socket units that start the service on a connection (Debian 12: mariadb.socket, mariadb-extra.socket).
SOCKET_UNITS = (".socket", "-extra.socket")
FEED_BLOCK = 4 * 1024 * 1024
FEED_DEPTH = 8
SERVER_START_SECONDS = 300
SERVER_STOP_SECONDS = 300
TOOL_SECONDS = 6 * 3600  # mbstream and --prepare of a very large instance


@dataclass
class PhysicalSetup:
    """What the preflight found out, used by the restore."""

    datadir: str
    tool: str
    server: str
    service: str
    stamp: str
    staging: str = ""
    previous: str = ""
    problems: List[str] = field(default_factory=list)
    checks: Dict[str, Any] = field(default_factory=dict)


def datadir_holder(datadir: str) -> Optional[str]:
    """Why a server still holds ``datadir`` (an fcntl lock on its files), or None when none does."""
    for name in LOCKED_FILES:
        path = os.path.join(datadir, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return "cannot open %s to check whether a server holds it: %s" % (path, exc.strerror)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return "a running server holds %s (it keeps a lock on %s)" % (datadir, name)
            return "cannot check the lock on %s: %s" % (path, exc.strerror)
        finally:
            os.close(fd)
    return None


def physical_preflight(request: RestoreRequest, record: Dict[str, Any], db_bytes: int) -> PhysicalSetup:
    """Everything a physical restore needs, checked before anything is written; problems say what refuses it."""
    problems: List[str] = []
    checks: Dict[str, Any] = {}
    tool = backup_tool()
    wanted = record.get("tool_version") or short_version(record.get("server_version") or "")
    have = tool_version(tool) if tool else None
    checks["tool"] = {"snapshot": wanted, "here": have, "ok": bool(wanted) and have == wanted}
    if tool is None:
        problems.append("the snapshot holds a physical backup (mariadb-backup %s); install mariadb-backup %s here"
                        % (wanted, wanted))
    elif have != wanted:
        problems.append("the snapshot was taken by mariadb-backup %s (server %s) but this host has mariadb-backup %s: a "
                        "physical backup restores only with the same version; install MariaDB %s here (no data was "
                        "touched)" % (wanted, record.get("server_version"), have or "of an unknown version", wanted))
    server = find_server()
    running = server_version(server) if server else None
    checks["server"] = {"here": running, "ok": running == wanted}
    if server is None:
        problems.append("no mariadbd on this host: a physical restore checks the prepared copy with it")
    elif running != wanted:
        problems.append("this host's mariadbd is %s but the snapshot's server was %s"
                        % (running or "of an unknown version", wanted))

    datadir = request.db_datadir
    if datadir is None and request.db_service != NO_SERVICE:
        rows = run_query(request.database(), "SELECT @@datadir;")
        datadir = rows[0][0] if rows and rows[0] else None
    if not datadir:
        problems.append("database.datadir is needed with database.service none (the server is stopped)")
        datadir = ""
    datadir = os.path.normpath(datadir) if datadir else ""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    setup = PhysicalSetup(datadir=datadir, tool=tool or "", server=server or "", service=request.db_service,
                          stamp=stamp, staging=datadir + ".restore-" + stamp, previous=datadir + ".pre-restore-" + stamp,
                          problems=problems, checks=checks)
    if datadir:
        _check_datadir(setup, db_bytes)
    if datadir and request.db_service != NO_SERVICE:
        _check_files_inside(request, setup)
    if request.db_service != NO_SERVICE and shutil.which("systemctl") is None:
        problems.append("database.service is %s but this host has no systemctl; set database.service none and stop "
                        "the server yourself" % request.db_service)
    return setup


def _check_datadir(setup: PhysicalSetup, db_bytes: int) -> None:
    datadir, problems = setup.datadir, setup.problems
    if not os.path.isdir(datadir):
        problems.append("the datadir %s does not exist (create it empty, owned by the server's user)" % datadir)
        return
    parent = os.path.dirname(datadir)
    for path in (setup.staging, setup.previous):
        if os.path.lexists(path):
            problems.append("%s already exists" % path)
    try:
        space = os.statvfs(parent)
        free = space.f_bavail * space.f_frsize
    except OSError as exc:
        problems.append("cannot read the free space of %s: %s" % (parent, exc.strerror))
        return
    need = int(db_bytes * PHYSICAL_SPACE_FACTOR)
    if os.path.ismount(datadir):
        # Its own filesystem: the old entries are copied out beside it (swap.py), so they need room here too.
        need += _tree_bytes(datadir)
    setup.checks["space"] = {"need": need, "free": free, "where": parent, "ok": free >= need,
                             "datadir_is_mount_point": os.path.ismount(datadir)}
    if free < need:
        problems.append("%s has %s free but the prepared copy needs about %s beside the current datadir (it stays "
                        "as %s until you remove it)" % (parent, describe_bytes(free), describe_bytes(need),
                                                        setup.previous))
    if setup.service == NO_SERVICE:
        holder = datadir_holder(datadir)
        setup.checks["stopped"] = {"ok": holder is None}
        if holder:
            problems.append("%s; with database.service none stop the server first (for example in pre_commands)" % holder)


#: Server settings that can put InnoDB or Aria files outside the datadir, which the swap would not move.
OUTSIDE_SETTINGS = ("innodb_log_group_home_dir", "innodb_undo_directory", "innodb_data_home_dir", "aria_log_dir_path")


def _check_files_inside(request: RestoreRequest, setup: PhysicalSetup) -> None:
    rows = run_query(request.database(), "SELECT %s;" % ", ".join("@@" + name for name in OUTSIDE_SETTINGS))
    values = rows[0] if rows else []
    outside = ["%s=%s" % (name, value) for name, value in zip(OUTSIDE_SETTINGS, values)
               if value and value != "NULL" and os.path.isabs(value)
               and not (os.path.normpath(value) + "/").startswith(setup.datadir + "/")]
    setup.checks["files_inside_datadir"] = {"ok": not outside, "outside": outside}
    if outside:
        setup.problems.append("the server keeps files outside its datadir %s (%s): a physical restore swaps the "
                              "datadir only; restore this snapshot by hand (docs/recovery.md)"
                              % (setup.datadir, ", ".join(outside)))


def _tree_bytes(path: str) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _run(argv: Sequence[str], what: str, timeout: float = TOOL_SECONDS) -> str:
    try:
        result = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                timeout=timeout, check=False, close_fds=True, preexec_fn=die_with_parent(os.getpid()))
    except OSError as exc:
        raise ApplianceError("could not run %s: %s" % (argv[0], exc.strerror)) from None
    except subprocess.TimeoutExpired:
        raise ApplianceError("%s did not finish within %d s" % (what, timeout)) from None
    output = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        raise ApplianceError("%s failed (exit code %d): %s"
                             % (what, result.returncode, stderr_excerpt(result.stdout[-8192:])))
    return output


class ThrowawayServer:
    """A ``mariadbd --skip-networking --skip-grant-tables`` on a prepared copy, reachable only by its socket."""

    def __init__(self, server: str, datadir: str):
        self.server = server
        self.datadir = datadir
        self.folder = ""
        self.process: Optional[subprocess.Popen[bytes]] = None

    def __enter__(self) -> DatabaseConnection:
        self.folder = tempfile.mkdtemp(prefix="segura-restore-check-")
        socket = os.path.join(self.folder, "mariadb.sock")
        argv = [self.server, "--no-defaults", "--datadir=" + self.datadir, "--socket=" + socket,
                "--pid-file=" + os.path.join(self.folder, "mariadb.pid"), "--tmpdir=" + self.folder,
                "--log-error=" + os.path.join(self.folder, "error.log"), "--skip-networking", "--skip-grant-tables",
                "--innodb-buffer-pool-size=128M", "--skip-log-bin", "--event-scheduler=DISABLED"]
        if os.geteuid() == 0:
            argv.append("--user=root")
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, close_fds=True,
                                            preexec_fn=die_with_parent(os.getpid()))
        except OSError as exc:
            self._cleanup()
            raise ApplianceError("could not start %s: %s" % (self.server, exc.strerror)) from None
        connection = DatabaseConnection(socket=socket, user="root")
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self._log()
                self._cleanup()
                raise ApplianceError("the prepared copy does not start (mariadbd exit code %s): %s"
                                     % (self.process.returncode, log))
            if os.path.exists(socket):
                try:
                    run_query(connection, "SELECT 1;", timeout=30)
                    return connection
                except ApplianceError:
                    pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise ApplianceError("the prepared copy's server did not answer within %d s" % SERVER_START_SECONDS)

    def _log(self) -> str:
        try:
            with open(os.path.join(self.folder, "error.log"), "rb") as handle:
                return stderr_excerpt(handle.read()[-8192:])
        except OSError:
            return "no log"

    def __exit__(self, exc_type, exc, tb) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=SERVER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        self._cleanup()

    def _cleanup(self) -> None:
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class PhysicalRestore:
    """Feeds the verified chunks to ``mbstream -x``, then prepares, checks, swaps and starts (see the module doc)."""

    def __init__(self, request: RestoreRequest, setup: PhysicalSetup, databases: Sequence[str]):
        self.request = request
        self.setup = setup
        self.databases = list(databases)
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.bytes = 0
        self.durations: Dict[str, float] = {}
        self.copy_facts: Optional[Dict[str, Any]] = None
        self.swapped = False
        self.sockets: List[str] = []  # socket units stopped with the service, started again after it
        self.swap = DatadirSwap(setup.datadir, setup.staging, setup.previous)
        self.warnings: List[str] = []
        # mbstream's input, written by a thread (bounded: FEED_DEPTH blocks of FEED_BLOCK bytes)
        self._queue: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=FEED_DEPTH)
        self._writer: Optional[threading.Thread] = None
        self._write_error: Optional[OSError] = None
        self._stderr: Any = None

    def start(self) -> "PhysicalRestore":
        mbstream = shutil.which("mbstream")
        if mbstream is None:
            raise ApplianceError("mbstream (package mariadb-backup) is not installed")
        os.mkdir(self.setup.staging, 0o700)
        try:
            # stderr to a file: nobody reads a pipe while the chunks are fed
            self._stderr = tempfile.TemporaryFile()
            self.process = subprocess.Popen([mbstream, "-x", "-C", self.setup.staging], stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=self._stderr, close_fds=True,
                                            preexec_fn=die_with_parent(os.getpid()))
        except OSError as exc:
            self._remove_staging()
            raise ApplianceError("could not start mbstream: %s" % exc.strerror) from None
        widen_pipe(self._process().stdin.fileno())  # type: ignore[union-attr]
        self._writer = threading.Thread(target=self._write_behind, name="mbstream-feed", daemon=True)
        self._writer.start()
        self._tick = time.monotonic()
        return self

    def feed(self, source) -> None:
        """Queue one verified chunk; a thread writes it to mbstream while the next one is read and checked."""
        if self._write_error is not None:
            self._end_stream()  # raises with mbstream's exit code and message when it failed
            raise ApplianceError("mbstream stopped reading the physical backup after %s: %s"
                                 % (describe_bytes(self.bytes), self._write_error))
        for block in iter(lambda: source.read(FEED_BLOCK), b""):
            self._queue.put(block)
            self.bytes += len(block)

    def _write_behind(self) -> None:
        stdin = self._process().stdin
        while True:
            block = self._queue.get()
            if block is None:
                return
            if self._write_error is None:  # after an error keep taking blocks, so feed() never blocks
                try:
                    stdin.write(block)  # type: ignore[union-attr]
                except OSError as exc:
                    self._write_error = exc

    def _process(self) -> "subprocess.Popen[bytes]":
        if self.process is None or self.process.stdin is None:
            raise RuntimeError("PhysicalRestore used before start()")
        return self.process

    def _end_stream(self) -> None:
        process = self._process()
        self._stop_writer()
        try:
            process.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        code = process.wait(timeout=TOOL_SECONDS)
        stderr = b""
        if self._stderr is not None:
            self._stderr.seek(0)
            stderr = self._stderr.read(65536)
        if code != 0:
            raise ApplianceError("extracting the physical backup failed (mbstream exit code %d after %s): %s"
                                 % (code, describe_bytes(self.bytes), stderr_excerpt(stderr)))

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def abort(self) -> None:
        """Before the swap: stop mbstream and remove the staging folder. The live datadir was not touched."""
        process = self.process
        try:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        finally:
            try:
                self._stop_writer()  # its writes fail now, so it drains the queue and ends
            finally:
                if not self.swapped:
                    self._remove_staging()

    def _remove_staging(self) -> None:
        if self.setup.staging and os.path.isdir(self.setup.staging) and not os.path.islink(self.setup.staging):
            shutil.rmtree(self.setup.staging, ignore_errors=True)

    def finish(self) -> Dict[str, Any]:
        """Prepare, check the copy, swap it in, start, check the server; roll back after a failed swap."""
        setup = self.setup
        try:
            self._end_stream()
            self._timed("extract", self._tick)
            tick = time.monotonic()
            output = _run([setup.tool, "--prepare", "--target-dir=" + setup.staging], "mariadb-backup --prepare")
            if COMPLETED not in output.rstrip().rsplit("\n", 1)[-1]:
                raise ApplianceError("mariadb-backup --prepare did not say '%s': %s"
                                     % (COMPLETED, stderr_excerpt(output[-4096:].encode())))
            self._timed("prepare", tick)
            tick = time.monotonic()
            with ThrowawayServer(setup.server, setup.staging) as copy:
                self.copy_facts = table_facts(copy, self.databases)
            self._timed("check_copy", tick)
            _copy_ownership(setup.datadir, setup.staging)
        except BaseException:
            self.abort()
            raise
        tick = time.monotonic()
        try:
            self._stop_service()
            holder = datadir_holder(setup.datadir)
            if holder:
                raise ApplianceError("%s after stopping %s" % (holder, setup.service))
        except BaseException:
            self.abort()
            self._start_service()
            raise
        self.swapped = True
        try:
            self.swap.swap_in()
            live = self._start_and_check()
        except BaseException as exc:
            self._roll_back(exc)
            raise  # _roll_back raises; this only keeps the type checker honest
        self._timed("swap_start_check", tick)
        return {"method": "physical", "datadir": setup.datadir, "previous_datadir": setup.previous,
                "swap": self.swap.mode, "warnings": list(self.warnings),
                "service": setup.service, "started": setup.service != NO_SERVICE, "live_check": live,
                "bytes": self.bytes, "durations": dict(self.durations)}

    def _timed(self, name: str, since: float) -> None:
        self.durations[name] = round(time.monotonic() - since, 3)

    def _start_and_check(self) -> Optional[Dict[str, Any]]:
        if self.setup.service == NO_SERVICE:
            return None
        self._start_service(strict=True)
        db = self.request.database()
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            try:
                run_query(db, "SELECT 1;", timeout=30)
                break
            except ApplianceError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        facts = table_facts(db, self.databases)
        problems = compare_facts(self.copy_facts or {}, facts)
        if problems:
            raise ApplianceError("the restored server differs from the snapshot: %s" % "; ".join(problems[:10]))
        return {"ok": True, "tables": len(facts["tables"])}

    def _systemctl(self, verb: str, unit: str) -> None:
        _run(["systemctl", verb, unit], "systemctl %s %s" % (verb, unit), timeout=SERVER_STOP_SECONDS)

    def _stop_service(self) -> None:
        """Stop the unit, and first its socket units: Debian's mariadb.socket would start it again
        at the first connection, on a datadir being swapped."""
        if self.setup.service == NO_SERVICE:
            return
        base = self.setup.service[:-len(".service")] if self.setup.service.endswith(".service") else self.setup.service
        for suffix in SOCKET_UNITS:  # every time: the rollback stops them again after the start
            unit = base + suffix
            if _unit_active(unit):
                self._systemctl("stop", unit)
                if unit not in self.sockets:
                    self.sockets.append(unit)
        self._systemctl("stop", self.setup.service)

    def _start_service(self, strict: bool = False) -> None:
        """Socket units first, as at boot (the service then takes its sockets from systemd); a socket
        unit that does not start is a warning: the server itself listens all the same."""
        if self.setup.service == NO_SERVICE:
            return
        for unit in self.sockets:
            try:
                self._systemctl("start", unit)
            except ApplianceError as exc:
                self.warnings.append("%s; start it by hand" % exc)
        try:
            self._systemctl("start", self.setup.service)
        except ApplianceError:
            if strict:
                raise

    def _roll_back(self, cause: BaseException) -> None:
        """Put the old datadir back (and start it); raise one error that says what happened."""
        setup = self.setup
        failed = setup.datadir + ".failed-restore-" + setup.stamp
        try:
            self._stop_service()
            self.swap.roll_back(failed)
            self._start_service(strict=True)
        except BaseException as exc:
            raise ApplianceError("the physical restore failed after the datadir swap (%s) and the rollback failed "
                                 "too (%s): the previous datadir is %s, the restored one %s; move the previous one "
                                 "back to %s and start the server" % (cause, exc, setup.previous, failed,
                                                                      setup.datadir)) from None
        raise ApplianceError("the physical restore failed after the datadir swap and was rolled back: %s. The "
                             "previous datadir is back in %s%s; the restored copy was kept as %s"
                             % (cause, setup.datadir, " and %s was started" % setup.service
                                if setup.service != NO_SERVICE else "", failed)) from None


def _unit_active(unit: str) -> bool:
    try:
        return subprocess.run(["systemctl", "is-active", "--quiet", unit], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _copy_ownership(datadir: str, staging: str) -> None:
    """Give the prepared copy the owner and mode of the datadir it replaces (prepare ran as root)."""
    info = os.stat(datadir)
    for folder, dirs, files in os.walk(staging):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), info.st_uid, info.st_gid)
    os.chown(staging, info.st_uid, info.st_gid)
    os.chmod(staging, info.st_mode & 0o7777)
