# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming writer and reader of snapshot objects, format "segura.backup/1".

Object = age(zstd(tar)): a PAX tar written in stream mode, compressed as one zstd frame, then
age-encrypted (X25519 recipients or a passphrase) unless encryption is explicitly turned off.
Members, in order: ``snapshot.json``, ``db/dump.sql.NNNNNN`` chunks, ``files/...``, and
``manifest.json`` last (sizes and sha256 of every member, only known once they are written).

Nothing is staged: the writer holds at most one stream chunk in memory, the reader none.
A disaster recovery needs only standard tools: ``age -d -i key | zstd -d | tar -x``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ansible_collections.segura.backup.plugins.module_utils import age
from ansible_collections.segura.backup.plugins.module_utils.errors import (
    ApplianceError,
    ArchiveError,
    ConfigError,
    IntegrityError,
)

try:
    import zstandard

    HAS_ZSTANDARD = True
    _ZSTD_ERRORS: Tuple[type, ...] = (zstandard.ZstdError, EOFError)
except ImportError:  # reported by _require_zstandard() so modules fail with a clear message
    HAS_ZSTANDARD = False
    _ZSTD_ERRORS = (EOFError,)


def _require_zstandard() -> None:
    if not HAS_ZSTANDARD:
        raise ArchiveError("the Python package 'zstandard' is missing on this host "
                           "(the segura.backup.runtime role installs it)")


FORMAT = "segura.backup/1"
SNAPSHOT_MEMBER = "snapshot.json"
MANIFEST_MEMBER = "manifest.json"
DB_PREFIX = "db/dump.sql"
DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
SUFFIX_ENCRYPTED = ".tar.zst.age"
SUFFIX_PLAIN = ".tar.zst"

_COPY_BLOCK = 256 * 1024  # tar copy buffer and stream-mode record buffer
_MAX_JSON_BYTES = 256 * 1024 * 1024  # snapshot.json / manifest.json are parsed in memory
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_JOB_SIZE = 4 * 1024 * 1024
_MAX_AUTO_THREADS = 4  # zstd_threads=-1: one worker per CPU, but a backup must not take over the appliance


# --------------------------------------------------------------------------------------------------
# encryption options
# --------------------------------------------------------------------------------------------------


class Encryption:
    """How to encrypt an archive: X25519 recipients, a passphrase, or (explicitly) not at all."""

    def __init__(self, mode: str, recipients: Sequence[age.Recipient] = (), passphrase: Optional[str] = None,
                 work_factor: int = age.DEFAULT_WORK_FACTOR):
        self.mode = mode
        self.recipients = list(recipients)
        self._passphrase = passphrase
        self.work_factor = work_factor

    @classmethod
    def recipients_of(cls, entries: Union[str, Sequence[str]]) -> "Encryption":
        """Recipients (``age1...``), one per entry or per line of a recipients-file text."""
        return cls("recipients", recipients=age.parse_recipients(entries))

    # ``Encryption.recipients([...])`` reads better at call sites; keep both spellings.
    @classmethod
    def passphrase(cls, passphrase: str, work_factor: int = age.DEFAULT_WORK_FACTOR) -> "Encryption":
        age._passphrase_bytes(passphrase)  # validates (non-empty) without echoing it
        return cls("passphrase", passphrase=passphrase, work_factor=work_factor)

    @classmethod
    def none(cls) -> "Encryption":
        return cls("none")

    @classmethod
    def from_options(cls, mode: Optional[str] = None, recipients: Optional[Sequence[str]] = None,
                     passphrase: Optional[str] = None) -> "Encryption":
        """From module options; ``mode`` is 'recipients', 'passphrase', 'none' or None (inferred)."""
        if mode is None:
            if recipients and passphrase:
                raise ConfigError("give either age recipients or a passphrase, not both")
            mode = "recipients" if recipients else "passphrase" if passphrase else None
            if mode is None:
                raise ConfigError("no encryption configured: give age recipients or a passphrase "
                                  "(or set encryption mode 'none' explicitly)")
        if mode == "recipients":
            if passphrase:
                raise ConfigError("encryption mode 'recipients' does not take a passphrase")
            if not recipients:
                raise ConfigError("encryption mode 'recipients' needs at least one age recipient")
            return cls.recipients_of(recipients)
        if mode == "passphrase":
            if recipients:
                raise ConfigError("encryption mode 'passphrase' does not take recipients")
            if not passphrase:
                raise ConfigError("encryption mode 'passphrase' needs a passphrase")
            return cls.passphrase(passphrase)
        if mode == "none":
            if recipients or passphrase:
                raise ConfigError("encryption mode 'none' contradicts the recipients/passphrase given")
            return cls.none()
        raise ConfigError("unknown encryption mode %r (use recipients, passphrase or none)" % (mode,))

    @property
    def encrypted(self) -> bool:
        return self.mode != "none"

    @property
    def suffix(self) -> str:
        return SUFFIX_ENCRYPTED if self.encrypted else SUFFIX_PLAIN

    def recipient_strings(self) -> List[str]:
        """Public keys, for the sidecar (safe to publish)."""
        return [str(r) for r in self.recipients]

    def open_encryptor(self, sink) -> Optional[age.Encryptor]:
        if self.mode == "recipients":
            return age.Encryptor(sink, recipients=self.recipients)
        if self.mode == "passphrase":
            return age.Encryptor(sink, passphrase=self._passphrase, work_factor=self.work_factor)
        return None

    def __repr__(self) -> str:
        if self.mode == "recipients":
            return "Encryption(recipients=%s)" % self.recipient_strings()
        return "Encryption(%s)" % self.mode


Encryption.recipients = Encryption.recipients_of  # type: ignore[assignment]


class Decryption:
    """How to open an archive: identities, a passphrase, or none (unencrypted archives)."""

    def __init__(self, mode: str, identities: Sequence[age.Identity] = (), passphrase: Optional[str] = None,
                 max_work_factor: int = age.DEFAULT_MAX_WORK_FACTOR):
        self.mode = mode
        self.identities = list(identities)
        self._passphrase = passphrase
        self.max_work_factor = max_work_factor

    @classmethod
    def identities_of(cls, entries: Union[str, Sequence[str]]) -> "Decryption":
        """Identities (``AGE-SECRET-KEY-1...``), one per entry or per line of a key-file text."""
        return cls("identities", identities=age.parse_identities(entries))

    @classmethod
    def identity_file(cls, path: str) -> "Decryption":
        """Identities from a key file as ``age-keygen`` writes it (comments allowed)."""
        try:
            with open(path, "r", encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError("cannot read identity file %s: %s" % (path, exc.strerror))
        except UnicodeDecodeError:
            raise ConfigError("identity file %s is not a text file" % path)
        try:
            return cls.identities_of(text)
        except ConfigError as exc:
            raise ConfigError("identity file %s: %s" % (path, exc))

    @classmethod
    def passphrase(cls, passphrase: str, max_work_factor: int = age.DEFAULT_MAX_WORK_FACTOR) -> "Decryption":
        age._passphrase_bytes(passphrase)
        return cls("passphrase", passphrase=passphrase, max_work_factor=max_work_factor)

    @classmethod
    def none(cls) -> "Decryption":
        return cls("none")

    @classmethod
    def from_options(cls, mode: Optional[str] = None, identities: Optional[Sequence[str]] = None,
                     identity_file: Optional[str] = None, passphrase: Optional[str] = None) -> "Decryption":
        """From module options; ``mode`` is 'identities', 'passphrase', 'none' or None (inferred)."""
        given = [n for n, v in (("identities", identities), ("identity_file", identity_file),
                                ("passphrase", passphrase)) if v]
        if mode is None:
            if len(given) > 1:
                raise ConfigError("give only one of %s" % ", ".join(given))
            if not given:
                return cls.none()
            mode = "passphrase" if given[0] == "passphrase" else "identities"
        if mode == "identities":
            if passphrase:
                raise ConfigError("decryption with identities does not take a passphrase")
            if identities and identity_file:
                raise ConfigError("give either identities or identity_file, not both")
            if identity_file:
                return cls.identity_file(identity_file)
            if not identities:
                raise ConfigError("decryption with identities needs at least one age identity")
            return cls.identities_of(identities)
        if mode == "passphrase":
            if identities or identity_file:
                raise ConfigError("decryption with a passphrase does not take identities")
            if not passphrase:
                raise ConfigError("decryption with a passphrase needs the passphrase")
            return cls.passphrase(passphrase)
        if mode == "none":
            if given:
                raise ConfigError("decryption mode 'none' contradicts the %s given" % ", ".join(given))
            return cls.none()
        raise ConfigError("unknown decryption mode %r (use identities, passphrase or none)" % (mode,))

    def open_decryptor(self, source) -> age.Decryptor:
        if self.mode == "identities":
            return age.Decryptor(source, identities=self.identities)
        if self.mode == "passphrase":
            return age.Decryptor(source, passphrase=self._passphrase, max_work_factor=self.max_work_factor)
        raise ArchiveError("this archive is age-encrypted: give identities or a passphrase to open it")

    def __repr__(self) -> str:
        if self.mode == "identities":
            return "Decryption(identities=%s)" % [str(i.recipient) for i in self.identities]
        return "Decryption(%s)" % self.mode


Decryption.identities = Decryption.identities_of  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# small stream helpers
# --------------------------------------------------------------------------------------------------


class _CountingSink:
    """Write-through wrapper: counts and hashes what reaches the sink; goes silent after abort()."""

    def __init__(self, sink):
        self._sink = sink
        self.bytes = 0
        self.sha256 = hashlib.sha256()
        self.dead = False

    def write(self, data) -> int:
        if self.dead:  # late writes from objects being torn down after abort()
            return len(data)
        self._sink.write(data)
        self.bytes += len(data)
        self.sha256.update(data)
        return len(data)

    def flush(self) -> None:
        """Flushing happens once, in finish(): the sink may be a network file."""


class HashingReader:
    """Read-through wrapper: counts and hashes what is read from a source (used by restore too)."""

    def __init__(self, source):
        self._source = source
        self.bytes = 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.bytes += len(data)
        self.sha256.update(data)
        return data


class _PrefixedSource:
    """A source with some already-read bytes put back in front."""

    def __init__(self, prefix: bytes, source):
        self._prefix = prefix
        self._source = source

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size is None or size < 0:
                data, self._prefix = self._prefix + self._source.read(), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._source.read(size)


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


def check_member_name(name: str) -> str:
    """A safe relative member name ('a/b/c') or IntegrityError: no absolute paths, '..', NUL."""
    if not isinstance(name, str) or not name:
        raise IntegrityError("unsafe archive member: empty name")
    if "\x00" in name:
        raise IntegrityError("unsafe archive member %r: NUL in name" % name)
    if name.startswith("/"):
        raise IntegrityError("unsafe archive member %r: absolute path" % name)
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise IntegrityError("unsafe archive member %r: empty, '.' or '..' path component" % name)
    return name


# --------------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------------


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
    the object as it reached the sink; members: tar members including manifest.json.
    """

    bytes_in: int
    bytes_out: int
    sha256: str
    members: int
    manifest: Dict[str, Any]


class ArchiveWriter:
    """Writes one snapshot object into ``sink`` (anything with ``write``); never closes the sink.

    ``zstd_threads``: 0 compresses in the calling thread; N > 0 uses N workers; -1 one per CPU, at
    most 4. Each worker adds roughly 20 MiB of memory.

    Call ``add_json("snapshot.json", ...)`` first, then add streams/files/dirs/symlinks, then
    ``finish()``. After any error the object is incomplete: call ``abort()`` and discard it.
    """

    def __init__(self, sink, encryption: Encryption, zstd_level: int = 3, zstd_threads: int = 0,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        if not isinstance(encryption, Encryption):
            raise ConfigError("encryption must be an Encryption (use Encryption.none() explicitly)")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError("chunk_size must be a positive integer")
        _require_zstandard()
        if not isinstance(zstd_level, int) or not -7 <= zstd_level <= 22:
            raise ConfigError("zstd level must be an integer from -7 to 22, not %r" % (zstd_level,))
        if not isinstance(zstd_threads, int) or zstd_threads < -1:
            raise ConfigError("zstd threads must be 0 (single-threaded), -1 (automatic) or a positive count")
        if zstd_threads == -1:
            zstd_threads = min(os.cpu_count() or 1, _MAX_AUTO_THREADS)
        # Multi-threaded zstd buffers whole jobs per worker; smaller jobs keep memory at ~20 MiB a worker.
        params = zstandard.ZstdCompressionParameters.from_level(
            zstd_level, threads=zstd_threads, job_size=_ZSTD_JOB_SIZE if zstd_threads else 0)
        compressor = zstandard.ZstdCompressor(compression_params=params)
        self.chunk_size = chunk_size
        self._out = _CountingSink(sink)
        self._encryptor = encryption.open_encryptor(self._out)
        self._zstd = compressor.stream_writer(self._encryptor or self._out, closefd=False)
        self._tar = tarfile.open(fileobj=self._zstd, mode="w|", format=tarfile.PAX_FORMAT,
                                 bufsize=_COPY_BLOCK, copybufsize=_COPY_BLOCK)
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
            # O_NONBLOCK: opening a FIFO by mistake must not hang; it is refused below.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ApplianceError("file %s vanished before it could be read" % path)
        except OSError as exc:
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
        ``cat prefix.*`` always has something to read.
        """
        self._begin(prefix + ".000000")
        if prefix in self._streams:
            raise ArchiveError("stream %s was already added" % prefix)
        buffer = bytearray(self.chunk_size)
        view = memoryview(buffer)
        whole = hashlib.sha256()
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
            whole.update(chunk)
            info = tarfile.TarInfo(name)
            info.size = filled
            info.mode = 0o600
            info.mtime = self._now
            self._write(info, _BufferReader(chunk))
            self._record(info, "file", hashlib.sha256(chunk).hexdigest())
            total += filled
            index += 1
            if filled < self.chunk_size:
                break
        result = StreamInfo(chunks=index, bytes=total, sha256=whole.hexdigest())
        self._streams[prefix] = result
        return result

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
        if DB_PREFIX in self._streams:
            manifest["db"] = self._streams[DB_PREFIX].as_dict()
        manifest.update(manifest_extra or {})
        manifest["format"] = FORMAT
        manifest["members"] = list(self._members)
        try:
            data = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"
        except (TypeError, ValueError) as exc:
            self._state = "failed"
            raise ArchiveError("cannot encode the manifest as JSON: %s" % exc)
        self._bytes_member(MANIFEST_MEMBER, data)
        try:
            self._tar.close()
            self._zstd.close()
            if self._encryptor is not None:
                self._encryptor.close()
            flush = getattr(self._out._sink, "flush", None)
            if flush is not None:
                flush()
        except BaseException:
            self._state = "failed"
            raise
        self._state = "finished"
        return ArchiveResult(bytes_in=self._bytes_in, bytes_out=self._out.bytes,
                             sha256=self._out.sha256.hexdigest(), members=len(self._members) + 1,
                             manifest=manifest)

    def abort(self) -> None:
        """Give up: nothing more reaches the sink (an encrypted object then lacks its final chunk)."""
        if self._state == "finished":
            return
        self._state = "aborted"
        self._out.dead = True
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


# --------------------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------------------


@dataclass
class MemberInfo:
    """One archive member as read from its tar header."""

    name: str
    type: str  # file | dir | symlink
    size: int
    mode: int
    mtime: float
    uid: int
    gid: int
    linkname: str = ""


_MAX_EXTENDED_HEADER = 1024 * 1024  # pax / GNU long-name headers: ours are a few hundred bytes
_MAX_TRAILING_BYTES = 1024 * 1024  # after the tar's end: its zero padding (one 10 KiB record)
_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                   tarfile.GNUTYPE_LONGLINK)


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a pax or GNU long-name header's whole content into memory: a zstd bomb there
    (a few KiB expanding to gigabytes) would exhaust memory before any check runs. Refuse big ones."""

    # The parameter keeps tarfile.TarInfo's own name, which shadows the module.
    def _proc_member(self, tarfile):  # pylint: disable=redefined-outer-name
        if self.type in _EXTENDED_TYPES and self.size > _MAX_EXTENDED_HEADER:
            raise IntegrityError("archive header %r declares %d bytes of extended header; refusing more than %d"
                                 % (self.name, self.size, _MAX_EXTENDED_HEADER))
        return super()._proc_member(tarfile)


_MEMBER_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
                 tarfile.SYMTYPE: "symlink"}


def _member_info(tarinfo: tarfile.TarInfo) -> MemberInfo:
    """Check a tar header for safety; restore relies on these refusals."""
    name = tarinfo.name
    kind = _MEMBER_TYPES.get(tarinfo.type)
    if kind is None or tarinfo.sparse is not None:
        what = {tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                tarfile.FIFOTYPE: "fifo"}.get(tarinfo.type, "member type %r" % tarinfo.type)
        raise IntegrityError("unsafe archive member %r: %s not allowed" % (name, what))
    check_member_name(name)
    if "\x00" in tarinfo.linkname:
        raise IntegrityError("unsafe archive member %r: NUL in link target" % name)
    return MemberInfo(name=name, type=kind, size=tarinfo.size if kind == "file" else 0, mode=tarinfo.mode,
                      mtime=tarinfo.mtime, uid=tarinfo.uid, gid=tarinfo.gid,
                      linkname=tarinfo.linkname if kind == "symlink" else "")


class _MemberReader:
    """File-like view of one member's content that hashes everything read (and what is drained)."""

    def __init__(self, fileobj, keep: bool, also=None):
        self._fileobj = fileobj
        self._also = also  # a second hash fed the same bytes (the whole db dump)
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self._kept: Optional[List[bytes]] = [] if keep else None

    def read(self, size: int = -1) -> bytes:
        if self._fileobj is None:
            return b""
        try:
            data = self._fileobj.read(size)
        except (tarfile.TarError,) + _ZSTD_ERRORS as exc:
            raise IntegrityError("archive is corrupt: %s" % exc)
        self.sha256.update(data)
        if self._also is not None:
            self._also.update(data)
        self.bytes += len(data)
        if self._kept is not None:
            if self.bytes > _MAX_JSON_BYTES:
                raise IntegrityError("archive member too large to be metadata")
            self._kept.append(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(_COPY_BLOCK):
            pass

    def content(self) -> bytes:
        return b"".join(self._kept or [])


@dataclass
class _Seen:
    info: MemberInfo
    sha256: Optional[str]


@dataclass
class VerifyReport:
    """Result of a deep verification: ``ok`` is True only when ``problems`` is empty."""

    ok: bool
    problems: List[str]
    manifest: Optional[Dict[str, Any]]
    snapshot: Optional[Dict[str, Any]]
    members: int
    bytes: int  # content bytes of all members, manifest.json included (as ArchiveResult.bytes_in)
    object_bytes: int  # bytes of the stored object that were read
    object_sha256: str  # sha256 of those bytes (compare with the sidecar)


class ArchiveReader:
    """Reads a snapshot object member by member, in order, without holding whole members.

    ``for info, content in reader: ...`` yields (MemberInfo, file-like) pairs; ``content`` is valid
    until the next iteration (the rest is drained and hashed). Unsafe members raise IntegrityError
    when reached. When the iteration ends, every member is checked against manifest.json (which
    comes last) and IntegrityError lists the problems, so whatever was consumed must be treated as
    unverified until the loop has completed. ``snapshot`` is available after the first member.
    """

    def __init__(self, source, decryption: Decryption, max_content_bytes: Optional[int] = None):
        """``max_content_bytes``: the content bytes the object may hold at most (the sidecar's
        ``bytes_in``); a member whose header declares more is refused before it is decompressed."""
        if not isinstance(decryption, Decryption):
            raise ConfigError("decryption must be a Decryption (use Decryption.none() for plain archives)")
        _require_zstandard()
        self._raw = HashingReader(source)
        head = self._raw.read(len(age.INTRO))
        while len(head) < len(age.INTRO):
            more = self._raw.read(len(age.INTRO) - len(head))
            if not more:
                break
            head += more
        plain_source = _PrefixedSource(head, self._raw)
        if age.looks_like_age(head):
            self.encrypted = True
            self._plain = decryption.open_decryptor(plain_source)
        elif head.startswith(_ZSTD_MAGIC):
            self.encrypted = False
            if decryption.mode != "none":
                raise ArchiveError("this archive is not encrypted, yet %s were given to open it; refusing "
                                   "to trust an unencrypted object in place of an encrypted one"
                                   % decryption.mode)
            self._plain = plain_source
        else:
            raise IntegrityError("not a segura.backup archive (neither age-encrypted nor zstd)")
        self._zstd = zstandard.ZstdDecompressor().stream_reader(self._plain, read_size=_COPY_BLOCK,
                                                                read_across_frames=True, closefd=False)
        try:
            self._tar = tarfile.open(fileobj=self._zstd, mode="r|", bufsize=_COPY_BLOCK, tarinfo=_BoundedTarInfo)
        except (tarfile.TarError,) + _ZSTD_ERRORS as exc:
            raise IntegrityError("archive is corrupt: %s" % exc)
        self.snapshot: Optional[Dict[str, Any]] = None
        self.manifest: Optional[Dict[str, Any]] = None
        self.seen: List[_Seen] = []
        self._names: set = set()
        self._db = hashlib.sha256()
        self.manifest_bytes = 0
        self._after_manifest: List[str] = []
        self._trailing = False
        self._iterated = False
        self._max_content = max_content_bytes
        self._content_declared = 0

    def __iter__(self) -> Iterator[Tuple[MemberInfo, BinaryIO]]:
        return self.members(strict=True)

    def members(self, strict: bool = True) -> Iterator[Tuple[MemberInfo, BinaryIO]]:
        """The member iterator; with ``strict=False`` manifest mismatches are left to ``problems()``."""
        if self._iterated:
            raise ArchiveError("an archive can be read only once (it is a stream)")
        self._iterated = True
        while True:
            try:
                tarinfo = self._tar.next()
            except (tarfile.TarError,) + _ZSTD_ERRORS as exc:
                raise IntegrityError("archive is corrupt: %s" % exc)
            if tarinfo is None:
                break
            info = _member_info(tarinfo)
            self._content_declared += info.size
            if self._max_content is not None and self._content_declared > self._max_content:
                raise IntegrityError("archive member %s declares %d bytes, more than the %d content bytes the "
                                     "snapshot holds in all; refusing to read it" % (info.name, info.size,
                                                                                     self._max_content))
            if info.name in self._names:
                raise IntegrityError("archive member %s appears twice" % info.name)
            self._names.add(info.name)
            if self.manifest is not None:
                self._after_manifest.append(info.name)
            is_json = info.name in (SNAPSHOT_MEMBER, MANIFEST_MEMBER)
            is_db = info.name.startswith(DB_PREFIX + ".") and info.type == "file"
            content = _MemberReader(self._tar.extractfile(tarinfo) if info.type == "file" else None, is_json,
                                    self._db if is_db else None)
            if info.name != MANIFEST_MEMBER:
                yield info, content
            content.drain()
            if content.bytes != info.size:
                raise IntegrityError("archive member %s is truncated" % info.name)
            if is_json:
                self._parse_json(info.name, content.content())
            if info.name == MANIFEST_MEMBER:
                self.manifest_bytes = info.size
            if info.name != MANIFEST_MEMBER:
                self.seen.append(_Seen(info, content.sha256.hexdigest() if info.type == "file" else None))
        self._finish_stream()
        if strict:
            problems = self.problems()
            if problems:
                raise IntegrityError("archive does not match its manifest: " + "; ".join(problems))

    def _parse_json(self, name: str, data: bytes) -> None:
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise IntegrityError("archive member %s is not valid JSON" % name)
        if not isinstance(obj, dict):
            raise IntegrityError("archive member %s is not a JSON object" % name)
        if name == SNAPSHOT_MEMBER:
            self.snapshot = obj
        else:
            self.manifest = obj

    def _finish_stream(self) -> None:
        """Read to the very end so age checks its final chunk and nothing hides after the tar."""
        trailing = 0
        try:
            while True:
                data = self._zstd.read(_COPY_BLOCK)
                if not data:
                    break
                trailing += len(data)
                if data.strip(b"\x00"):
                    self._trailing = True
                if trailing > _MAX_TRAILING_BYTES:
                    raise IntegrityError("archive holds more than %d bytes after the end of the tar archive"
                                         % _MAX_TRAILING_BYTES)
            while self._raw.read(_COPY_BLOCK):
                pass
        except _ZSTD_ERRORS as exc:
            raise IntegrityError("archive is corrupt after the last member: %s" % exc)

    def problems(self) -> List[str]:
        """Differences between what was read and manifest.json (call after a full iteration)."""
        out: List[str] = []
        names = [s.info.name for s in self.seen]
        if not names or names[0] != SNAPSHOT_MEMBER:
            out.append("%s is not the first member" % SNAPSHOT_MEMBER)
        if self.manifest is None:
            out.append("%s is missing (archive truncated?)" % MANIFEST_MEMBER)
            return out
        if self._after_manifest:
            out.append("members after %s: %s" % (MANIFEST_MEMBER, ", ".join(self._after_manifest[:10])))
        if self._trailing:
            out.append("data after the end of the tar archive")
        if self.manifest.get("format") != FORMAT:
            out.append("unknown format %r (expected %s)" % (self.manifest.get("format"), FORMAT))
        if self.snapshot is not None:
            for key in ("id", "appliance"):
                if self.snapshot.get(key) != self.manifest.get(key):
                    out.append("snapshot.json and manifest.json disagree on %r" % key)
        listed = self.manifest.get("members")
        if not isinstance(listed, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str)
                                                   for m in listed):
            out.append("manifest.json has no valid member list")
            return out
        expected = {m["name"]: m for m in listed}
        actual = {s.info.name: s for s in self.seen}
        missing = [n for n in expected if n not in actual]
        extra = [n for n in actual if n not in expected]
        if missing:
            out.append("missing members: %s" % ", ".join(missing[:20]))
        if extra:
            out.append("members not in the manifest: %s" % ", ".join(extra[:20]))
        for name, seen in actual.items():
            want = expected.get(name)
            if want is None:
                continue
            info = seen.info
            got = {"type": info.type, "size": info.size, "sha256": seen.sha256, "mode": info.mode}
            if info.type == "symlink":
                got["linkname"] = info.linkname
            diffs = [k for k, v in got.items() if want.get(k) != v]
            if diffs:
                out.append("member %s differs from the manifest in %s" % (name, ", ".join(diffs)))
        out.extend(self._db_problems())
        return out

    def _db_problems(self) -> List[str]:
        db = self.manifest.get("db") if self.manifest else None
        chunks = [s for s in self.seen if s.info.name.startswith(DB_PREFIX + ".")]
        if db is None:
            return ["db chunks present but manifest.json has no 'db' entry"] if chunks else []
        if not isinstance(db, dict):
            return ["manifest.json 'db' entry is not an object"]
        names = [s.info.name for s in chunks]
        if names != ["%s.%06d" % (DB_PREFIX, i) for i in range(len(names))]:
            return ["db chunks are not numbered consecutively in order"]
        # Chunks arrived in order (checked above), so the running hash is that of `cat db/dump.sql.*`.
        whole_hex = self._db.hexdigest()
        total = sum(s.info.size for s in chunks)
        out = []
        if db.get("chunks") != len(chunks):
            out.append("db has %d chunks, manifest.json says %r" % (len(chunks), db.get("chunks")))
        if db.get("bytes") != total:
            out.append("db has %d bytes, manifest.json says %r" % (total, db.get("bytes")))
        if db.get("sha256") != whole_hex:
            out.append("db dump sha256 differs from manifest.json")
        return out

    def close(self) -> None:
        """Release the decompressor; does not close the source."""
        try:
            self._zstd.close()
        except Exception:  # noqa: BLE001 - best effort release
            pass


def verify(source, decryption: Decryption, max_content_bytes: Optional[int] = None) -> VerifyReport:
    """Deep-verify an object in one streaming pass: every member against manifest.json.

    A wrong key or passphrase raises ArchiveError (nothing can be verified); corruption, tampering,
    truncation and mismatches are reported in ``problems``.
    """
    counted = HashingReader(source)
    try:
        reader = ArchiveReader(counted, decryption, max_content_bytes=max_content_bytes)
    except IntegrityError as exc:
        return VerifyReport(ok=False, problems=[str(exc)], manifest=None, snapshot=None, members=0, bytes=0,
                            object_bytes=counted.bytes, object_sha256=counted.sha256.hexdigest())
    problems: List[str] = []
    try:
        for _info, _content in reader.members(strict=False):
            pass  # the reader drains and hashes every member itself
        problems = reader.problems()
    except IntegrityError as exc:
        problems = [str(exc)]
    finally:
        reader.close()
    return VerifyReport(ok=not problems, problems=problems, manifest=reader.manifest, snapshot=reader.snapshot,
                        members=len(reader.seen) + (1 if reader.manifest is not None else 0),
                        bytes=sum(s.info.size for s in reader.seen) + reader.manifest_bytes,
                        object_bytes=counted.bytes, object_sha256=counted.sha256.hexdigest())


def read_metadata(source, decryption: Decryption) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(snapshot.json, manifest.json) of an object, streaming through it once.

    IntegrityError if the object is corrupt or either document is missing; member contents are
    hashed on the way but not compared (use ``verify`` for that).
    """
    reader = ArchiveReader(source, decryption)
    try:
        for _info, _content in reader.members(strict=False):
            pass
    finally:
        reader.close()
    if reader.snapshot is None or reader.manifest is None:
        raise IntegrityError("archive lacks %s" % (SNAPSHOT_MEMBER if reader.snapshot is None else MANIFEST_MEMBER))
    return reader.snapshot, reader.manifest
