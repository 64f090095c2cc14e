# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The logical database method: a ``mariadb-dump`` stream scanned, and loaded by one ``mariadb`` client."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tempfile
import threading
from typing import IO, Any, Dict, List, Optional, Sequence, cast

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.dump import DatabaseDump, die_with_parent
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection, first_tool, stderr_excerpt
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import MAX_CHUNK_SIZE
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, IntegrityError
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import BLOCK, CREATE_DATABASE, SPOOL_IN_MEMORY
from ansible_collections.segura.backup.plugins.module_utils._engine.text import describe_bytes


class DumpScanner:
    """Reads a mariadb-dump stream: the databases it creates, in order, and a content digest.

    The digest hashes every line except ``-- `` comment lines (mariadb-dump writes the server version
    and the host there), so a dump of restored databases can be compared with the snapshot's dump.
    Lines are never held whole: only the first bytes of a line are kept to recognise it.
    """

    _KEEP = 512

    def __init__(self) -> None:
        self.databases: List[str] = []
        self.content = hashlib.sha256()
        self._head = b""  # first bytes of the current (unfinished) line
        self._comment: Optional[bool] = None  # is the current line a comment? None: not known yet
        self._pending = b""  # bytes of the current line not hashed while that is unknown

    def feed(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end + 1
            piece = data[start:stop]
            if len(self._head) < self._KEEP:
                self._head += piece[:self._KEEP - len(self._head)]
            if self._comment is None:
                if len(self._head) >= 3 or end >= 0:  # enough to tell a comment line
                    self._comment = self._head.startswith(b"-- ")
                    if not self._comment:
                        self.content.update(self._pending + piece)
                    self._pending = b""
                else:
                    self._pending += piece
            elif not self._comment:
                self.content.update(piece)
            if end < 0:
                return
            self._end_line()
            start = stop

    def _end_line(self) -> None:
        match = CREATE_DATABASE.match(self._head)
        if match:
            self.databases.append(match.group(1).decode("utf-8", "replace"))
        self._head = b""
        self._pending = b""
        self._comment = None

    def finish(self) -> str:
        if self._pending:  # a last line of one or two bytes without a newline
            self.content.update(self._pending)
        if self._head:
            self._end_line()
        return self.content.hexdigest()


class DatabaseLoader:
    """ONE ``mariadb`` client fed the dump on stdin; stderr kept for the error message.

    Credentials only through the connection's defaults file. ``abort()`` kills the client so a
    half-fed statement is never committed by an orderly end of input.
    """

    def __init__(self, connection: DatabaseConnection):
        tool = first_tool("mariadb", "mysql")
        self.command = ([tool] + connection.client_args()
                        + ["--binary-mode", "--batch", "--default-character-set=utf8mb4", "--max-allowed-packet=1G"])
        self.describe = connection.describe()
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._stderr = bytearray()
        self._thread: Optional[threading.Thread] = None
        self.bytes = 0

    def _started(self) -> "subprocess.Popen[bytes]":
        if self.process is None:
            raise RuntimeError("DatabaseLoader used before start()")
        return self.process

    def _stdin(self) -> IO[bytes]:
        stdin = self._started().stdin
        if stdin is None:
            raise AssertionError("no stdin pipe, though opened with stdin=PIPE")
        return stdin

    def _join_drain(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)

    def start(self) -> "DatabaseLoader":
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, close_fds=True,
                                            preexec_fn=die_with_parent(os.getpid()))
        except OSError as exc:
            raise ApplianceError("could not start %s: %s" % (self.command[0], exc.strerror)) from None
        self._thread = threading.Thread(target=self._drain, name="mariadb-stderr", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        pipe = self._started().stderr
        if pipe is None:
            raise AssertionError("no stderr pipe, though opened with stderr=PIPE")
        stderr = cast(io.BufferedReader, pipe)  # a pipe with the default bufsize is buffered: read1 exists
        for block in iter(lambda: stderr.read1(65536), b""):
            room = 65536 - len(self._stderr)
            if room > 0:
                self._stderr += block[:room]

    def feed(self, source) -> None:
        stdin = self._stdin()
        try:
            for block in iter(lambda: source.read(BLOCK), b""):
                stdin.write(block)
                self.bytes += len(block)
        except BrokenPipeError:
            self._fail_after_exit()

    def finish(self) -> None:
        try:
            self._stdin().close()
        except BrokenPipeError:
            pass
        code = self._started().wait()
        self._join_drain()
        if code != 0:
            self._raise(code)

    def _fail_after_exit(self) -> None:
        code = self._started().wait()
        self._join_drain()
        self._raise(code)

    def _raise(self, code: int) -> None:
        raise ApplianceError("loading the database dump into %s failed (mariadb exit code %d after %s): %s"
                             % (self.describe, code, describe_bytes(self.bytes),
                                stderr_excerpt(bytes(self._stderr))))

    def abort(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(timeout=30)
        try:
            self._stdin().close()
        except OSError:
            pass


def spool_chunk(content, expected: Dict[str, Any], name: str):
    """Read one database chunk completely and check it against the manifest BEFORE it is fed.

    The spool holds at most the chunk's size as pass 1 verified it (one byte more proves a lie), and
    that size is at most MAX_CHUNK_SIZE: past SPOOL_IN_MEMORY it goes to an anonymous file in
    $TMPDIR, which must have room for it.
    """
    want = expected.get("size")
    if not isinstance(want, int) or isinstance(want, bool) or want < 0:
        raise IntegrityError("%s has no size in the manifest; not fed to the database" % name)
    if want > MAX_CHUNK_SIZE:
        raise IntegrityError("%s declares %s, larger than any database chunk a snapshot writes (%s); refusing to "
                             "spool it" % (name, describe_bytes(want), describe_bytes(MAX_CHUNK_SIZE)))
    if want > SPOOL_IN_MEMORY:
        _check_spool_room(want, name)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    digest = hashlib.sha256()
    size = 0
    while size <= want:
        block = content.read(min(BLOCK, want + 1 - size))
        if not block:
            break
        digest.update(block)
        size += len(block)
        spool.write(block)
    if size != want or digest.hexdigest() != expected.get("sha256"):
        spool.close()
        raise IntegrityError("%s differs from the manifest verified in the first pass (the object changed on the "
                             "target since?); not fed to the database" % name)
    spool.seek(0)
    return spool


def _check_spool_room(size: int, name: str) -> None:
    folder = tempfile.gettempdir()
    try:
        info = os.statvfs(folder)
    except OSError:
        return  # the write itself will say what is wrong
    free = info.f_bavail * info.f_frsize
    if free < size:
        raise ApplianceError("%s (%s) is checked in a temporary file before it is fed to the database, but %s "
                             "has only %s free (set TMPDIR to a folder with room)"
                             % (name, describe_bytes(size), folder, describe_bytes(free)))


def dump_digest(connection: DatabaseConnection, databases: Sequence[str], extra_args: Sequence[str] = ()) -> str:
    """DumpScanner digest of a fresh dump of ``databases`` (same options as a snapshot's dump)."""
    scanner = DumpScanner()
    with DatabaseDump(connection, databases, extra_args=extra_args) as dump:
        for block in iter(lambda: dump.stdout.read(BLOCK), b""):
            scanner.feed(block)
    return scanner.finish()
