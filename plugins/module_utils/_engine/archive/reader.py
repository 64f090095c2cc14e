# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Reading one snapshot object as a stream, member by member, checked against its manifest."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tarfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from ansible_collections.segura.backup.plugins.module_utils._engine import age
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import (
    COPY_BLOCK,
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
#: Members an object may hold at most, whatever its sidecar claims. A snapshot holds its config and
#: secrets files and one member per 16 MiB (at least 1 MiB) of database: thousands, not millions.
#: Each member read costs ~90 bytes of bookkeeping (its name and a packed record) until the manifest,
#: which comes last, is compared.
MAX_MEMBERS = 1000000
_TYPES = ("file", "dir", "symlink")
# type index, mode, size, sha256 of the content (files), sha256 of the link target (symlinks)
_RECORD = struct.Struct("<BIQ32s32s")
_NO_DIGEST = bytes(32)


class _MemberReader:
    """File-like view of one member's content that hashes everything read (and what is drained)."""

    def __init__(self, fileobj, keep: bool, also=None):
        self._fileobj = fileobj
        self._also = also  # a second hash fed the same bytes (the whole db dump)
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self._kept: Optional[bytearray] = bytearray() if keep else None

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
            self._kept += data
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(COPY_BLOCK):
            pass

    def content(self) -> bytearray:
        kept, self._kept = self._kept, None
        return kept if kept is not None else bytearray()


@dataclass
class _DbChunks:
    """The database members seen so far, as counters: their names must run .000000, .000001, ..."""

    prefixes: set
    count: int = 0
    bytes: int = 0
    in_order: bool = True

    def add(self, prefix: str, name: str, size: int) -> None:
        self.prefixes.add(prefix)
        if name != "%s.%06d" % (prefix, self.count):
            self.in_order = False
        self.count += 1
        self.bytes += size


def member_limit(counted: Optional[int]) -> int:
    """The members an object may hold: what its sidecar counted (the writer counts them exactly,
    manifest.json included), never more than MAX_MEMBERS; MAX_MEMBERS when it counted nothing."""
    if isinstance(counted, int) and not isinstance(counted, bool) and 0 < counted < MAX_MEMBERS:
        return counted
    return MAX_MEMBERS


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

    def __init__(self, source, decryption: Decryption, max_content_bytes: Optional[int] = None,
                 max_members: Optional[int] = None):
        """``max_content_bytes``: the content bytes the object may hold at most (the sidecar's
        ``bytes_in``); a member whose header declares more is refused before it is decompressed.
        ``max_members``: the members it may hold (the sidecar's ``counts.members``, see
        ``member_limit``); one more is refused before its content is read."""
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
        #: the age header's and payload nonce's sha256 (None unencrypted): see Decryptor.prelude_sha256
        self.prelude_sha256: Optional[str] = getattr(self._plain, "prelude_sha256", None)
        # The stub asks for IO[bytes]; zstandard only calls read() on the source.
        self._zstd = zstandard.ZstdDecompressor().stream_reader(self._plain, read_size=COPY_BLOCK,  # type: ignore[arg-type]
                                                                read_across_frames=True, closefd=False)
        try:
            self._tar = tarfile.open(fileobj=self._zstd, mode="r|", bufsize=COPY_BLOCK, tarinfo=BoundedTarInfo)
        except (tarfile.TarError,) + ZSTD_ERRORS as exc:
            raise IntegrityError("archive is corrupt: %s" % exc)
        self.snapshot: Optional[Dict[str, Any]] = None
        self.manifest: Optional[Dict[str, Any]] = None
        # What each member was, kept compact until the manifest (last) can be compared: the names
        # in one buffer, one packed record each, and a keyed 8-byte digest of each name for the
        # duplicate check (a collision is confirmed against the names before it is reported).
        self._names = bytearray()
        self._records = bytearray()
        self._name_keys: set = set()
        self._name_key = os.urandom(16)
        self.member_count = 0  # members read, manifest.json included
        self.content_bytes = 0  # their content bytes, manifest.json excluded
        self.max_members = member_limit(max_members)
        self._db_chunks = _DbChunks(set())
        self._db = hashlib.sha256()
        self.manifest_bytes = 0
        self._after_manifest: List[str] = []
        self._after_manifest_count = 0
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
            # In stream mode tarfile keeps every TarInfo it read (TarFile.members), a kilobyte each.
            self._tar.members.clear()  # type: ignore[attr-defined]
            self.member_count += 1
            if self.member_count > self.max_members:
                raise IntegrityError("the object holds more than %d members (%s); refusing to read further"
                                     % (self.max_members, "as many as its sidecar counts"
                                        if self.max_members < MAX_MEMBERS else "the most a snapshot may hold"))
            info = member_info(tarinfo)
            self._content_declared += info.size
            if self._max_content is not None and self._content_declared > self._max_content:
                raise IntegrityError("archive member %s declares %d bytes, more than the %d content bytes the "
                                     "snapshot holds in all; refusing to read it" % (info.name, info.size,
                                                                                     self._max_content))
            self._check_new_name(info.name)
            if self.manifest is not None:
                self._after_manifest_count += 1
                if len(self._after_manifest) < 10:
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
                self._remember(info, content.sha256.digest() if info.type == "file" else None)
                if is_db:
                    self._db_chunks.add(_db_prefix(info.name) or "", info.name, info.size)
        self._finish_stream()
        if strict:
            problems = self.problems()
            if problems:
                raise IntegrityError("archive does not match its manifest: " + "; ".join(problems))

    def _check_new_name(self, name: str) -> None:
        key = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8, key=self._name_key).digest()
        if key in self._name_keys and name in self._names.decode("utf-8", "surrogateescape").split("\x00"):
            raise IntegrityError("archive member %s appears twice" % name)
        self._name_keys.add(key)

    def _remember(self, info: MemberInfo, sha256: Optional[bytes]) -> None:
        if not 0 <= info.mode <= 0xFFFFFFFF or not 0 <= info.size < 1 << 63:
            raise IntegrityError("archive member %s has an impossible mode or size" % info.name)
        self._records += _RECORD.pack(_TYPES.index(info.type), info.mode, info.size, sha256 or _NO_DIGEST,
                                      _link_digest(info.linkname))
        if self._names:
            self._names += b"\x00"
        self._names += info.name.encode("utf-8", "surrogateescape")
        self.content_bytes += info.size

    def _seen(self) -> Iterator[Tuple[str, Dict[str, Any]]]:
        """(name, what was read) of every member but manifest.json, in archive order."""
        if not self._names:
            return
        start = index = 0
        while start <= len(self._names):  # one name decoded at a time: no list of them all
            end = self._names.find(b"\x00", start)
            end = len(self._names) if end < 0 else end
            name = self._names[start:end].decode("utf-8", "surrogateescape")
            kind, mode, size, sha256, link = _RECORD.unpack_from(self._records, index * _RECORD.size)
            start, index = end + 1, index + 1
            yield name, {"type": _TYPES[kind], "size": size, "sha256": sha256.hex() if _TYPES[kind] == "file" else None,
                         "mode": mode, "link": link}

    def _parse_json(self, name: str, data: bytearray) -> None:
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError):
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
        first = bytes(self._names[:len(SNAPSHOT_MEMBER) + 1])
        if first not in (SNAPSHOT_MEMBER.encode(), SNAPSHOT_MEMBER.encode() + b"\x00"):
            out.append("%s is not the first member" % SNAPSHOT_MEMBER)
        if self.manifest is None:
            out.append("%s is missing (archive truncated?)" % MANIFEST_MEMBER)
            return out
        if self._after_manifest:
            out.append("members after %s: %s%s" % (MANIFEST_MEMBER, ", ".join(self._after_manifest),
                                                   " (%d in all)" % self._after_manifest_count
                                                   if self._after_manifest_count > len(self._after_manifest) else ""))
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
        if len(listed) > self.max_members:
            out.append("manifest.json lists %d members, more than the %d the object may hold"
                       % (len(listed), self.max_members))
            return out
        expected = {m["name"]: m for m in listed}  # what is left of it once read is what is missing
        extra: List[str] = []
        differs: List[str] = []
        for name, got in self._seen():
            want = expected.pop(name, None)
            if want is None:
                if len(extra) < 20:
                    extra.append(name)
                continue
            link = got.pop("link")
            if got["type"] == "symlink":
                wanted_link = want.get("linkname")
                got["linkname"] = wanted_link if isinstance(wanted_link, str) and \
                    _link_digest(wanted_link) == link else "(another target)"
            diffs = [k for k, v in got.items() if want.get(k) != v]
            if diffs:
                differs.append("member %s differs from the manifest in %s" % (name, ", ".join(diffs)))
        if expected:
            out.append("missing members: %s" % ", ".join(list(expected)[:20]))
        if extra:
            out.append("members not in the manifest: %s" % ", ".join(extra))
        out.extend(differs)
        out.extend(self._db_problems())
        return out

    def _db_problems(self) -> List[str]:
        db = self.manifest.get("db") if self.manifest else None
        chunks = self._db_chunks
        if len(chunks.prefixes) > 1:
            return ["the object holds both a database dump and a physical backup"]
        if db is None:
            return ["db chunks present but manifest.json has no 'db' entry"] if chunks.count else []
        if not isinstance(db, dict):
            return ["manifest.json 'db' entry is not an object"]
        if not chunks.in_order:
            return ["db chunks are not numbered consecutively in order"]
        # Chunks arrived in order (checked above), so the running hash is that of `cat db/dump.sql.*`.
        whole_hex = self._db.hexdigest()
        total = chunks.bytes
        out = []
        if db.get("chunks") != chunks.count:
            out.append("db has %d chunks, manifest.json says %r" % (chunks.count, db.get("chunks")))
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


def verify(source, decryption: Decryption, max_content_bytes: Optional[int] = None,
           max_members: Optional[int] = None) -> VerifyReport:
    """Deep-verify an object in one streaming pass: every member against manifest.json.

    A wrong key or passphrase raises ArchiveError (nothing can be verified); corruption, tampering,
    truncation and mismatches are reported in ``problems``.
    """
    counted = HashingReader(source)
    try:
        reader = ArchiveReader(counted, decryption, max_content_bytes=max_content_bytes, max_members=max_members)
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
                        members=reader.member_count,
                        bytes=reader.content_bytes + reader.manifest_bytes,
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


def _link_digest(linkname: str) -> bytes:
    return hashlib.sha256(linkname.encode("utf-8", "surrogateescape")).digest() if linkname else _NO_DIGEST


def _db_prefix(name: str) -> Optional[str]:
    """The database stream a member belongs to (``db/dump.sql`` or ``db/backup.mbstream``), or None."""
    for prefix in DB_PREFIXES:
        if name.startswith(prefix + ".") and len(name) == len(prefix) + 7:
            return prefix
    return None
