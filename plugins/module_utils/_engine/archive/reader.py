# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Reading one snapshot object as a stream, member by member, checked against its manifest."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from ansible_collections.segura.backup.plugins.module_utils._engine import age
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import (
    COPY_BLOCK,
    DB_PREFIX,
    DB_PREFIXES,
    FORMAT,
    MANIFEST_MEMBER,
    SNAPSHOT_MEMBER,
    ZSTD_ERRORS,
    ZSTD_MAGIC,
    BoundedTarInfo,
    MemberInfo,
    member_info,
    require_zstandard,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ArchiveError, ConfigError, IntegrityError
from ansible_collections.segura.backup.plugins.module_utils._engine.streams import ByteReader, HashingReader

try:
    import zstandard
except ImportError:  # require_zstandard() says so
    pass

_MAX_JSON_BYTES = 256 * 1024 * 1024  # snapshot.json / manifest.json are parsed in memory
_MAX_TRAILING_BYTES = 1024 * 1024  # after the tar's end: its zero padding (one 10 KiB record)


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
        except (tarfile.TarError,) + ZSTD_ERRORS as exc:
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
        while self.read(COPY_BLOCK):
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
        require_zstandard()
        self._raw = HashingReader(source)
        head = self._raw.read(len(age.INTRO))
        while len(head) < len(age.INTRO):
            more = self._raw.read(len(age.INTRO) - len(head))
            if not more:
                break
            head += more
        plain_source = HashingReader(self._raw, prefix=head, hashed=False)
        self._plain: Union[age.Decryptor, HashingReader]
        if age.looks_like_age(head):
            self.encrypted = True
            self._plain = decryption.open_decryptor(plain_source)
        elif head.startswith(ZSTD_MAGIC):
            self.encrypted = False
            if decryption.mode != "none":
                raise ArchiveError("this archive is not encrypted, yet %s were given to open it; refusing "
                                   "to trust an unencrypted object in place of an encrypted one"
                                   % decryption.mode)
            self._plain = plain_source
        else:
            raise IntegrityError("not a segura.backup archive (neither age-encrypted nor zstd)")
        # The stub asks for IO[bytes]; zstandard only calls read() on the source.
        self._zstd = zstandard.ZstdDecompressor().stream_reader(self._plain, read_size=COPY_BLOCK,  # type: ignore[arg-type]
                                                                read_across_frames=True, closefd=False)
        try:
            self._tar = tarfile.open(fileobj=self._zstd, mode="r|", bufsize=COPY_BLOCK, tarinfo=BoundedTarInfo)
        except (tarfile.TarError,) + ZSTD_ERRORS as exc:
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

    def __iter__(self) -> Iterator[Tuple[MemberInfo, ByteReader]]:
        return self.members(strict=True)

    def members(self, strict: bool = True) -> Iterator[Tuple[MemberInfo, ByteReader]]:
        """The member iterator; with ``strict=False`` manifest mismatches are left to ``problems()``."""
        if self._iterated:
            raise ArchiveError("an archive can be read only once (it is a stream)")
        self._iterated = True
        while True:
            try:
                tarinfo = self._tar.next()
            except (tarfile.TarError,) + ZSTD_ERRORS as exc:
                raise IntegrityError("archive is corrupt: %s" % exc)
            if tarinfo is None:
                break
            info = member_info(tarinfo)
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
            is_db = _db_prefix(info.name) is not None and info.type == "file"
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
                data = self._zstd.read(COPY_BLOCK)
                if not data:
                    break
                trailing += len(data)
                if data.strip(b"\x00"):
                    self._trailing = True
                if trailing > _MAX_TRAILING_BYTES:
                    raise IntegrityError("archive holds more than %d bytes after the end of the tar archive"
                                         % _MAX_TRAILING_BYTES)
            while self._raw.read(COPY_BLOCK):
                pass
        except ZSTD_ERRORS as exc:
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
        chunks = [s for s in self.seen if _db_prefix(s.info.name)]
        prefixes = {_db_prefix(s.info.name) for s in chunks}
        if len(prefixes) > 1:
            return ["the object holds both a database dump and a physical backup"]
        prefix = prefixes.pop() if prefixes else DB_PREFIX
        if db is None:
            return ["db chunks present but manifest.json has no 'db' entry"] if chunks else []
        if not isinstance(db, dict):
            return ["manifest.json 'db' entry is not an object"]
        names = [s.info.name for s in chunks]
        if names != ["%s.%06d" % (prefix, i) for i in range(len(names))]:
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
                            object_bytes=counted.bytes, object_sha256=counted.hexdigest())
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
                        object_bytes=counted.bytes, object_sha256=counted.hexdigest())


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


def _db_prefix(name: str) -> Optional[str]:
    """The database stream a member belongs to (``db/dump.sql`` or ``db/backup.mbstream``), or None."""
    for prefix in DB_PREFIXES:
        if name.startswith(prefix + ".") and len(name) == len(prefix) + 7:
            return prefix
    return None
