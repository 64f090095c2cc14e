# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""One streaming ``mariadb-dump`` of the appliance's databases; nothing is staged on disk."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import queue
import signal
import subprocess
import threading
from typing import IO, Any, Callable, List, Optional, Sequence

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import DEFAULT_DATABASES, check_database_names
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection, first_tool, stderr_excerpt
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError
from ansible_collections.segura.backup.plugins.module_utils._engine.streams import ReadMixin

DUMP_TRAILER = b"-- Dump completed"

# --------------------------------------------------------------------------- database dump

#: Options of the one dump run, and why:
#: --single-transaction   one consistent InnoDB snapshot of BOTH databases, without locking them
#:                        (it also turns --lock-tables off);
#: --quick                stream rows instead of buffering whole tables in the client;
#: --routines --triggers --events   the schema objects a restore needs besides tables and views;
#: --hex-blob             binary columns survive any charset handling;
#: --add-drop-database --databases  the dump recreates each database, so restore replaces cleanly;
#: --default-character-set=utf8mb4  no lossy conversion of text;
#: --skip-dump-date       two dumps of the same data compare equal (trailer without a date);
#: --max-allowed-packet=1G  the client never refuses a large row.
#: Not used: --master-data / --gtid (nobody builds a replica from these dumps: Galera nodes join by
#: SST), --flush-logs (the binary logs are not part of the backup), the 'mysql' system database
#: (a fresh appliance has its own accounts).
DUMP_OPTIONS = (
    "--single-transaction",
    "--quick",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--add-drop-database",
    "--default-character-set=utf8mb4",
    "--skip-dump-date",
    "--max-allowed-packet=1G",
)

_TAIL_BYTES = 256
_STDERR_LIMIT = 64 * 1024
_STDERR_TAIL = 16 * 1024  # the last lines: where mariadb-backup says "completed OK!" and its position
_STOP_TIMEOUT = 10.0

_PR_SET_PDEATHSIG = 1
_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return _libc


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: the child gets SIGKILL if our process dies (Linux), so a killed run leaves no dump
    reading the database (nor a restore's client writing into it).

    The signal is tied to the *thread* that started the child: keep the child in the thread that
    created it (the context managers do).
    """
    libc = _load_libc()

    def preexec():
        if libc:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


_F_SETPIPE_SZ = 1031  # Linux fcntl
_PIPE_BYTES = 1024 * 1024


def widen_pipe(fd: int) -> None:
    """Let the tool run up to 1 MiB ahead of us (a pipe holds 64 KiB by default): while we compress
    and hash a chunk it keeps reading the database instead of waiting on a full pipe."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size, or not Linux: the default size still works


class _ReadAhead:
    """Reads the tool's output in a thread, up to ``depth`` blocks ahead of the consumer.

    While the consumer hashes, compresses and waits on the share, the tool keeps reading the database
    instead of waiting on a full pipe: the overlap a shell pipeline has between its processes. Memory
    stays bounded (``depth`` x ``block``); an error of the read is raised to the consumer.
    """

    _POLL = 0.5

    def __init__(self, raw: IO[bytes], block: int = 1024 * 1024, depth: int = 16):
        self._raw = raw
        self._block = block
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
        self._pending = memoryview(b"")
        self._eof = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dump-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        read = getattr(self._raw, "read1", self._raw.read)
        while not self._stop.is_set():
            try:
                data: Any = read(self._block)
            except (OSError, ValueError) as exc:  # ValueError: the pipe was closed under us (abort)
                data = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(data, timeout=self._POLL)
                    break
                except queue.Full:
                    continue
            if not isinstance(data, bytes) or not data:
                return

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            if self._eof:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return b""
            self._pending = memoryview(item)
        if size is None or size < 0:
            size = len(self._pending)
        data, self._pending = self._pending[:size].tobytes(), self._pending[size:]
        return data

    def close(self) -> None:
        self._stop.set()
        self._raw.close()
        self._thread.join(timeout=_STOP_TIMEOUT)

    @property
    def closed(self) -> bool:
        return self._raw.closed


class _DumpReader(ReadMixin):
    """The dump's stdout as a binary stream; remembers the byte count and the last bytes read."""

    def __init__(self, raw: Any):
        self._raw = raw
        self.bytes_read = 0
        self.at_eof = False
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size) if size is not None and size >= 0 else self._raw.read()
        if data:
            self.bytes_read += len(data)
            self.tail = (self.tail + data[-_TAIL_BYTES:])[-_TAIL_BYTES:]
        elif size != 0:
            self.at_eof = True
        return data

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return self._raw.closed


class DatabaseDump:
    """One ``mariadb-dump`` of the layout's databases, streamed; nothing is staged on disk.

        with DatabaseDump(connection, layout.databases) as dump:
            for block in iter(lambda: dump.stdout.read(1 << 20), b''):
                ...
        # leaving the block checks exit code and trailer; ApplianceError on failure

    If the body raises, the dump is terminated (by its PID) and reaped. If this process dies, the
    kernel kills the dump too (PR_SET_PDEATHSIG), so a killed run leaves no dump behind.

    The account needs, on each database: SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES; and SELECT
    on mysql.proc for the routines. On an appliance, root over the unix socket has all of it.
    """

    def __init__(self, connection: DatabaseConnection, databases: Sequence[str] = DEFAULT_DATABASES,
                 tool: Optional[str] = None, extra_args: Sequence[str] = ()):
        self.connection = connection
        self.databases = check_database_names(databases)
        self.tool = tool
        self.extra_args = tuple(extra_args)
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._reader: Optional[_DumpReader] = None
        self._argv: List[str] = []  # the command start() ran (the process's args)
        self._stderr = bytearray()
        self._stderr_tail = b""
        self._stderr_thread: Optional[threading.Thread] = None

    def command(self) -> List[str]:
        tool = self.tool or first_tool("mariadb-dump", "mysqldump")
        return ([tool] + self.connection.client_args() + list(DUMP_OPTIONS) + list(self.extra_args)
                + ["--databases"] + list(self.databases))

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    @property
    def stdout(self) -> _DumpReader:
        """The dump's output; set by ``start()`` (entering the context manager)."""
        if self._reader is None:
            raise RuntimeError("DatabaseDump.stdout read before start()")
        return self._reader

    @property
    def bytes_read(self) -> int:
        return self._reader.bytes_read if self._reader else 0

    def _started(self) -> "subprocess.Popen[bytes]":
        if self.process is None:
            raise RuntimeError("DatabaseDump used before start()")
        return self.process

    def start(self) -> "DatabaseDump":
        command = self._argv = self.command()
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                close_fds=True, preexec_fn=die_with_parent(os.getpid()))
        except OSError as exc:
            raise ApplianceError("could not start %s: %s" % (command[0], exc.strerror or exc)) from None
        if self.process.stdout is None or self.process.stderr is None:
            raise AssertionError("no stdout or stderr pipe, though opened with stdout=PIPE and stderr=PIPE")
        widen_pipe(self.process.stdout.fileno())
        self._reader = _DumpReader(_ReadAhead(self.process.stdout))
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name="dump-stderr", daemon=True)
        self._stderr_thread.start()
        return self

    def _drain_stderr(self) -> None:
        """Keep the first 64 KiB and the last 16 KiB of stderr, so the tool never blocks on it."""
        stream = self._started().stderr
        if stream is None:
            raise AssertionError("no stderr pipe, though opened with stderr=PIPE")
        while True:
            data = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not data:
                break
            room = _STDERR_LIMIT - len(self._stderr)
            if room > 0:
                self._stderr += data[:room]
            self._stderr_tail = (self._stderr_tail + data)[-_STDERR_TAIL:]

    @property
    def stderr_text(self) -> str:
        return stderr_excerpt(bytes(self._stderr))

    @property
    def stderr_tail(self) -> str:
        """The last lines the tool wrote (complete once ``finish()`` returned)."""
        return self._stderr_tail.decode("utf-8", "replace")

    def abort(self) -> None:
        """Stop the dump (SIGTERM, then SIGKILL) and reap it. Safe to call twice."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=_STOP_TIMEOUT)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(OSError):
                self._reader.close()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=_STOP_TIMEOUT)
        if self.process is not None and self.process.stderr is not None:
            with contextlib.suppress(OSError):
                self.process.stderr.close()

    def finish(self) -> None:
        """Wait for the tool and check that the dump is complete; ApplianceError otherwise."""
        process, reader = self._started(), self.stdout
        if not reader.at_eof:
            # A consumer that stopped early would store a truncated dump: refuse.
            extra = reader.read(1)
            if extra:
                self.abort()
                raise ApplianceError("the database dump was not read to its end (stopped after %d bytes)"
                                     % (reader.bytes_read - 1))
        try:
            code = process.wait(timeout=_STOP_TIMEOUT * 6)
        except subprocess.TimeoutExpired:
            self.abort()
            raise ApplianceError("%s did not exit after its output ended" % os.path.basename(self.command()[0]))
        self._close_pipes()
        tool = os.path.basename(self._argv[0])
        if code != 0:
            raise ApplianceError("database dump of %s failed (%s exit code %d): %s"
                                 % (", ".join(self.databases), tool, code, self.stderr_text))
        self.check_complete(tool, reader)

    def check_complete(self, tool: str, reader: _DumpReader) -> None:
        """The tool exited 0: check that its output is whole (mariadb-dump's trailer line)."""
        last_line = reader.tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if not last_line.startswith(DUMP_TRAILER):
            raise ApplianceError("database dump of %s is incomplete: %s ended without its '-- Dump completed' "
                                 "line (%d bytes; stderr: %s)"
                                 % (", ".join(self.databases), tool, reader.bytes_read, self.stderr_text))

    def __enter__(self) -> "DatabaseDump":
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            return False
        self.finish()
        return False
