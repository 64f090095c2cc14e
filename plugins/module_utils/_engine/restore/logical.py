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
import re
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

#: Lines that differ between mariadb-dump patch versions of the same data, left out of the digest: the
#: sandbox-mode first line (10.5.25+/10.6.18+/10.11.8+, ``/*!999999\\- ...`` then ``/*M!999999\\- ...``) and
#: whole-line versioned session settings such as ``/*M!100616 SET NOTE_VERBOSITY=@OLD_NOTE_VERBOSITY */;``.
#: A statement that carries data (CREATE, INSERT, a trigger) never starts with ``/*M!nnnnn SET``.
VERSION_SPECIFIC_LINE = re.compile(rb"/\*M?!999999\\- enable the sandbox mode \*/"
                                   rb"|/\*M?!\d{5,6} SET [^\n]*\*/ ?;")


class DumpScanner:
    """Reads a mariadb-dump stream: the databases it creates, in order, and a content digest.

    The digest hashes every line except ``-- `` comment lines (mariadb-dump writes the server version
    and the host there) and the version-specific lines above, so a dump of restored databases can be
    compared with the snapshot's dump even when another patch version of mariadb-dump made it. Lines
    are never held whole: only the first bytes of a line are kept to recognise it.
    """

    _KEEP = 512

    def __init__(self) -> None:
        self.databases: List[str] = []
        self.content = hashlib.sha256()
        self._head = b""  # first bytes of the current (unfinished) line
        self._skip: Optional[bool] = None  # is the current line left out? None: not known yet
        self._pending = b""  # bytes of the current line not hashed while that is unknown

    def feed(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end + 1
            piece = data[start:stop]
            if len(self._head) < self._KEEP:
                self._head += piece[:self._KEEP - len(self._head)]
            if self._skip is None:
                self._skip = self._decide(end >= 0)
                if self._skip is None:
                    self._pending += piece
                else:
                    if not self._skip:
                        self.content.update(self._pending + piece)
                    self._pending = b""
            elif not self._skip:
                self.content.update(piece)
            if end < 0:
                return
            self._end_line()
            start = stop

    def _decide(self, line_ended: bool) -> Optional[bool]:
        """Whether the current line is left out, or None while its first bytes cannot tell yet."""
        head = self._head
        if head.startswith(b"-- "):
            return True
        if head.startswith(b"/*M!") or head.startswith(b"/*!"):
            if not line_ended and len(head) < self._KEEP:
                return None  # a versioned comment: known once the line ends
            return line_ended and VERSION_SPECIFIC_LINE.fullmatch(head.rstrip(b"\r\n ")) is not None
        could_be = any(prefix.startswith(head) for prefix in (b"-- ", b"/*M!", b"/*!"))
        if len(head) >= 4 or line_ended or not could_be:
            return False
        return None

    def _end_line(self) -> None:
        match = CREATE_DATABASE.match(self._head)
        if match:
            self.databases.append(match.group(1).decode("utf-8", "replace"))
        self._head = b""
        self._pending = b""
        self._skip = None

    def finish(self) -> str:
        if self._head:  # a last line without a newline
            if self._skip is None:
                self._skip = self._decide(True)
            if not self._skip:
                self.content.update(self._pending)
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
