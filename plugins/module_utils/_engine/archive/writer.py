# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Writing one snapshot object as a stream: members in, age(zstd(tar)) bytes out to any sink.

Nothing is staged: the writer holds at most one stream chunk in memory.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tarfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import (
    COPY_BLOCK,
    DB_PREFIXES,
    DEFAULT_CHUNK_SIZE,
    FORMAT,
    MANIFEST_MEMBER,
    SNAPSHOT_MEMBER,
    check_member_name,
    require_zstandard,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ArchiveError, ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.pipeline import ChunkHasher
from ansible_collections.segura.backup.plugins.module_utils._engine.streams import ChunkReader, CountingWriter, json_chunks

try:
    import zstandard
except ImportError:  # require_zstandard() says so
    pass

_ZSTD_JOB_SIZE = 4 * 1024 * 1024
_MAX_AUTO_THREADS = 4  # zstd_threads=-1: one worker per CPU, but a backup must not take over the appliance
ZSTD_LEVELS = (-7, 22)
MAX_ZSTD_THREADS = 256  # zstd's own limit (more are silently cut to it)


def check_compression(level: Any, threads: Any, names: Tuple[str, str] = ("zstd level", "zstd threads")) -> None:
    """ConfigError unless ``level`` and ``threads`` are what the writer takes; ``names`` say which options
    they came from (the module options are checked with this before check mode's preflight)."""
    if isinstance(level, bool) or not isinstance(level, int) or not ZSTD_LEVELS[0] <= level <= ZSTD_LEVELS[1]:
        raise ConfigError("%s must be an integer from %d to %d, not %r"
                          % (names[0], ZSTD_LEVELS[0], ZSTD_LEVELS[1], level))
    if isinstance(threads, bool) or not isinstance(threads, int) or not -1 <= threads <= MAX_ZSTD_THREADS:
        raise ConfigError("%s must be 0 (single-threaded), -1 (automatic) or a count up to %d, not %r"
                          % (names[1], MAX_ZSTD_THREADS, threads))


class _FileReader:
    """Feeds exactly ``size`` bytes of an open file to tarfile, hashing them.

    The tar header holds the size before the data, so a file that shrinks or grows while being read
    cannot be archived consistently: both raise ApplianceError naming the file.
    """

    def __init__(self, handle, size: int, path: str):
        self._handle = handle
        self._left = size
        self._path = path
        self.sha256 = hashlib.sha256()

    def read(self, size: int) -> bytes:
        want = min(size, self._left)
        data = self._handle.read(want) if want else b""
        while len(data) < want:
            more = self._handle.read(want - len(data))
            if not more:
                raise ApplianceError("file %s shrank while it was being read" % self._path)
            data += more
        self._left -= len(data)
        self.sha256.update(data)
        if self._left == 0 and self._handle.read(1):
            raise ApplianceError("file %s grew while it was being read" % self._path)
        return data


class _BufferReader:
    """Reads a filled prefix of a reusable buffer without copying it first."""

    def __init__(self, view: memoryview):
        self._view = view
        self._pos = 0

    def read(self, size: int) -> bytes:
        data = self._view[self._pos:self._pos + size].tobytes()
        self._pos += len(data)
        return data


@dataclass
class StreamInfo:
    """What ``add_stream`` wrote: number of chunk members, total bytes, sha256 of the whole stream."""

    chunks: int
    bytes: int
    sha256: str

    def as_dict(self) -> Dict[str, Any]:
        return {"chunks": self.chunks, "bytes": self.bytes, "sha256": self.sha256}


@dataclass
class ArchiveResult:
    """What ``finish`` wrote.

    bytes_in: content bytes of all members (the payload before tar/zstd/age); bytes_out and sha256:
    the object as it reached the sink (sha256 None unless the writer was asked to hash: a sink that
    hashes itself, such as an atomic upload, saves a second pass); members: tar members including
    manifest.json.
    """

    bytes_in: int
    bytes_out: int
    sha256: Optional[str]
    members: int
    manifest: Dict[str, Any]
    prelude_sha256: Optional[str] = None  # the age header's and nonce's (age.Encryptor.prelude_sha256)


class ArchiveWriter:
    """Writes one snapshot object into ``sink`` (anything with ``write``); never closes the sink.

    ``zstd_threads``: 0 compresses in the calling thread; N > 0 uses N workers; -1 one per CPU, at
    most 4. Each worker adds roughly 20 MiB of memory.

    Call ``add_json("snapshot.json", ...)`` first, then add streams/files/dirs/symlinks, then
    ``finish()``. After any error the object is incomplete: call ``abort()`` and discard it.
    ``hash_output``: also sha256 the object as written (``ArchiveResult.sha256``).
    """

    def __init__(self, sink, encryption: Encryption, zstd_level: int = 3, zstd_threads: int = 0,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, hash_output: bool = True):
        if not isinstance(encryption, Encryption):
            raise ConfigError("encryption must be an Encryption (use Encryption.none() explicitly)")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError("chunk_size must be a positive integer")
        require_zstandard()
        check_compression(zstd_level, zstd_threads)
        if zstd_threads == -1:
            zstd_threads = min(os.cpu_count() or 1, _MAX_AUTO_THREADS)
        # Multi-threaded zstd buffers whole jobs per worker; smaller jobs keep memory at ~20 MiB a worker.
        params = zstandard.ZstdCompressionParameters.from_level(
            zstd_level, threads=zstd_threads, job_size=_ZSTD_JOB_SIZE if zstd_threads else 0)
        compressor = zstandard.ZstdCompressor(compression_params=params)
        self.chunk_size = chunk_size
        self._sink = sink
        self._out = CountingWriter(sink, hashed=hash_output)
        self._encryptor = encryption.open_encryptor(self._out)
        # The stub asks for IO[bytes]; zstandard only calls write() (and flush()) on the writer.
        self._zstd = compressor.stream_writer(self._encryptor or self._out, closefd=False)  # type: ignore[arg-type]
        # typeshed's tarfile.open lacks copybufsize, which it passes on to TarFile (Python 3.8+).
        self._tar = tarfile.open(fileobj=self._zstd, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                                 bufsize=COPY_BLOCK, copybufsize=COPY_BLOCK)
        self._members: List[Dict[str, Any]] = []
        self._names: set = set()
        self._streams: Dict[str, StreamInfo] = {}
        self._snapshot: Optional[Dict[str, Any]] = None
        self._bytes_in = 0
        self._now = int(time.time())
        self._state = "open"  # open | failed | finished | aborted

    # -- members -----------------------------------------------------------------------------------

    def _begin(self, name: str) -> None:
        if self._state != "open":
            raise ArchiveError("archive writer is %s; no more members can be added" % self._state)
        check_member_name(name)
        if name == MANIFEST_MEMBER:
            raise ArchiveError("%s is written by finish(), not added by hand" % MANIFEST_MEMBER)
        if name in self._names:
            raise ArchiveError("duplicate archive member %s" % name)

    def _write(self, info: tarfile.TarInfo, reader=None) -> None:
        """Write one member; any failure leaves the tar stream cut, so the writer becomes failed."""
        try:
            self._tar.addfile(info, reader)
        except BaseException:
            self._state = "failed"
            raise
        self._bytes_in += info.size if info.isreg() else 0

    def _record(self, info: tarfile.TarInfo, kind: str, sha256: Optional[str]) -> None:
        entry = {"name": info.name, "type": kind, "size": info.size if kind == "file" else 0,
                 "sha256": sha256, "mode": info.mode, "mtime": info.mtime, "uid": info.uid, "gid": info.gid}
        if kind == "symlink":
            entry["linkname"] = info.linkname
        self._members.append(entry)
        self._names.add(info.name)

    def _bytes_member(self, name: str, data: bytes, mode: int = 0o644) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = self._now
        self._write(info, io.BytesIO(data))
        return info

    def add_json(self, name: str, obj: Any) -> None:
        """A small JSON member (``snapshot.json``), built in memory."""
        self._begin(name)
        try:
            data = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"
        except (TypeError, ValueError) as exc:
            raise ArchiveError("cannot encode %s as JSON: %s" % (name, exc))
        info = self._bytes_member(name, data)
        self._record(info, "file", hashlib.sha256(data).hexdigest())
        if name == SNAPSHOT_MEMBER and isinstance(obj, dict):
            self._snapshot = obj

    def add_file(self, name: str, path: str) -> None:
        """A regular file streamed from disk (mode, mtime, numeric uid/gid kept)."""
        self._begin(name)
        try:
            # O_NONBLOCK: opening a FIFO by mistake must not hang; it is refused below. O_NOFOLLOW: the
            # caller's lstat saw a file; one swapped for a symlink since is refused, never followed.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ApplianceError("file %s vanished before it could be read" % path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ApplianceError("file %s became a symbolic link while it was collected; refusing to follow it"
                                     % path)
            raise ApplianceError("cannot read file %s: %s" % (path, exc.strerror))
        with os.fdopen(fd, "rb", buffering=0) as handle:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise ApplianceError("%s is not a regular file" % path)
            info = self._tarinfo(name, before, tarfile.REGTYPE)
            info.size = before.st_size
            reader = _FileReader(handle, before.st_size, path)
            try:
                self._write(info, reader)
            except OSError as exc:
                raise ApplianceError("cannot read file %s: %s" % (path, exc.strerror))
            after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            self._state = "failed"
            raise ApplianceError("file %s changed while it was being read" % path)
        self._record(info, "file", reader.sha256.hexdigest())

    def add_dir(self, name: str, path: str) -> None:
        """A directory entry (not its contents) with the mode, mtime and owner of ``path``."""
        self._begin(name)
        st = self._lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise ApplianceError("%s is not a directory" % path)
        info = self._tarinfo(name, st, tarfile.DIRTYPE)
        self._write(info)
        self._record(info, "dir", None)

    def add_symlink(self, name: str, path: str) -> None:
        """A symbolic link, stored as such (its target is not followed)."""
        self._begin(name)
        st = self._lstat(path)
        if not stat.S_ISLNK(st.st_mode):
            raise ApplianceError("%s is not a symbolic link" % path)
        try:
            target = os.readlink(path)
        except OSError as exc:
            raise ApplianceError("cannot read symbolic link %s: %s" % (path, exc.strerror))
        info = self._tarinfo(name, st, tarfile.SYMTYPE)
        info.linkname = target
        self._write(info)
        self._record(info, "symlink", None)

    def add_stream(self, prefix: str, reader) -> StreamInfo:
        """Cut a stream of unknown length into ``prefix.000000``, ``prefix.000001``, ... members.

        Only one chunk is buffered. An empty stream still gives one empty member, so
        ``cat prefix.*`` always has something to read. The chunk's sha256 and the whole stream's are
        taken on a thread of their own while the chunk goes through tar, zstd and age here.
        """
        self._begin(prefix + ".000000")
        if prefix in self._streams:
            raise ArchiveError("stream %s was already added" % prefix)
        buffer = bytearray(self.chunk_size)
        view = memoryview(buffer)
        hasher = ChunkHasher()
        try:
            total, index = self._add_chunks(prefix, reader, view, hasher)
        finally:
            hasher.close()
        result = StreamInfo(chunks=index, bytes=total, sha256=hasher.hexdigest())
        self._streams[prefix] = result
        return result

    def _add_chunks(self, prefix: str, reader, view: memoryview, hasher: ChunkHasher) -> Tuple[int, int]:
        """add_stream's loop: (bytes, chunks) written."""
        total = 0
        index = 0
        readinto = getattr(reader, "readinto", None)
        while True:
            filled = 0
            while filled < self.chunk_size:
                if readinto is not None:
                    got = readinto(view[filled:])
                else:
                    data = reader.read(min(self.chunk_size - filled, 1024 * 1024))
                    got = len(data)
                    view[filled:filled + got] = data
                if not got:
                    break
                filled += got
            if filled == 0 and index > 0:
                break
            name = "%s.%06d" % (prefix, index)
            self._begin(name)
            chunk = view[:filled]
            hasher.start(chunk)  # read, never changed, until its result() below
            info = tarfile.TarInfo(name)
            info.size = filled
            info.mode = 0o600
            info.mtime = self._now
            self._write(info, _BufferReader(chunk))
            self._record(info, "file", hasher.result())
            total += filled
            index += 1
            if filled < self.chunk_size:
                break
        return total, index

    # -- end ---------------------------------------------------------------------------------------

    def finish(self, manifest_extra: Optional[Dict[str, Any]] = None) -> ArchiveResult:
        """Write manifest.json last and close tar, zstd and age (not the sink)."""
        if self._state != "open":
            raise ArchiveError("archive writer is %s; it cannot be finished" % self._state)
        manifest: Dict[str, Any] = {"format": FORMAT}
        if self._snapshot is not None:
            for key in ("id", "appliance"):
                if key in self._snapshot:
                    manifest[key] = self._snapshot[key]
        for prefix in DB_PREFIXES:
            if prefix in self._streams:
                manifest["db"] = self._streams[prefix].as_dict()
        manifest.update(manifest_extra or {})
        manifest["format"] = FORMAT
        manifest["members"] = list(self._members)
        # Encoded in pieces, twice (its size goes first in the tar header): with 100,000 recordings the
        # manifest is 14 MB, and json.dumps(indent=...) built 75 MB of small strings to make it.
        try:
            size = sum(len(chunk) for chunk in json_chunks(manifest, "sessions"))
        except (TypeError, ValueError) as exc:
            self._state = "failed"
            raise ArchiveError("cannot encode the manifest as JSON: %s" % exc)
        info = tarfile.TarInfo(MANIFEST_MEMBER)
        info.size, info.mode, info.mtime = size, 0o644, self._now
        self._write(info, io.BufferedReader(ChunkReader(json_chunks(manifest, "sessions"))))
        try:
            self._tar.close()
            self._zstd.close()
            if self._encryptor is not None:
                self._encryptor.close()
            flush = getattr(self._sink, "flush", None)
            if flush is not None:
                flush()
        except BaseException:
            self._state = "failed"
            raise
        self._state = "finished"
        return ArchiveResult(bytes_in=self._bytes_in, bytes_out=self._out.bytes,
                             sha256=self._out.sha256.hexdigest() if self._out.sha256 else None, members=len(self._members) + 1,
                             manifest=manifest,
                             prelude_sha256=self._encryptor.prelude_sha256 if self._encryptor is not None else None)

    def abort(self) -> None:
        """Give up: nothing more reaches the sink (an encrypted object then lacks its final chunk)."""
        if self._state == "finished":
            return
        self._state = "aborted"
        self._out.silence()
        if self._encryptor is not None:
            self._encryptor.abort()
        # Keep tarfile from writing its end blocks when garbage-collected.
        self._tar.closed = True
        self._tar.fileobj.closed = True

    def __enter__(self) -> "ArchiveWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._state != "finished":
            self.abort()

    # -- helpers -----------------------------------------------------------------------------------

    def _lstat(self, path: str) -> os.stat_result:
        try:
            return os.lstat(path)
        except FileNotFoundError:
            raise ApplianceError("%s vanished before it could be read" % path)
        except OSError as exc:
            raise ApplianceError("cannot read %s: %s" % (path, exc.strerror))

    def _tarinfo(self, name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        info.uid = st.st_uid
        info.gid = st.st_gid
        return info
