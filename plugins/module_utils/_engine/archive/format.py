# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""What a snapshot object is made of, and the rules every member must follow.

Object = age(zstd(tar)): a PAX tar written in stream mode, compressed as one zstd frame, then
age-encrypted (X25519 recipients or a passphrase) unless encryption is explicitly turned off.
Members, in order: ``snapshot.json``, the database members under ``db/``, ``files/...``, and
``manifest.json`` last (sizes and sha256 of every member, only known once they are written).
A disaster recovery needs only standard tools: ``age -d -i key | zstd -d | tar -x``.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import Tuple, Type

from ansible_collections.segura.backup.plugins.module_utils._engine.constants import FORMAT, MiB
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ArchiveError, IntegrityError

try:
    import zstandard

    HAS_ZSTANDARD = True
    ZSTD_ERRORS: Tuple[Type[BaseException], ...] = (zstandard.ZstdError, EOFError)
except ImportError:  # reported by require_zstandard() so modules fail with a clear message
    HAS_ZSTANDARD = False
    ZSTD_ERRORS = (EOFError,)

__all__ = ["FORMAT", "SNAPSHOT_MEMBER", "MANIFEST_MEMBER", "DB_PREFIX", "PHYSICAL_PREFIX", "DB_PREFIXES", "MemberInfo",
           "check_member_name"]

SNAPSHOT_MEMBER = "snapshot.json"
MANIFEST_MEMBER = "manifest.json"
DB_PREFIX = "db/dump.sql"  # the logical method: a mariadb-dump stream
PHYSICAL_PREFIX = "db/backup.mbstream"  # the physical method: a mariadb-backup mbstream
DB_PREFIXES = (DB_PREFIX, PHYSICAL_PREFIX)  # a snapshot holds one of them, cut into chunks
DEFAULT_CHUNK_SIZE = 16 * MiB
MAX_CHUNK_SIZE = 256 * MiB  # the largest database member a snapshot writes (chunk_size_mb at most 256)
SUFFIX_ENCRYPTED = ".tar.zst.age"
SUFFIX_PLAIN = ".tar.zst"
COPY_BLOCK = 256 * 1024  # tar copy buffer and stream-mode record buffer
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def require_zstandard() -> None:
    if not HAS_ZSTANDARD:
        raise ArchiveError("the Python package 'zstandard' is missing on this host "
                           "(the segura.backup.runtime role installs it)")


MAX_NAME_COMPONENT = 255  # NAME_MAX
MAX_MEMBER_NAME = 4096 + len("files/")  # PATH_MAX below the member prefix


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
    # What no Linux file system can hold (NAME_MAX, PATH_MAX): refused by name, not by an OSError later.
    if len(name.encode("utf-8", "surrogateescape")) > MAX_MEMBER_NAME or \
            any(len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_COMPONENT for p in parts):
        raise IntegrityError("unsafe archive member %r...: a name longer than %d bytes or a path component longer "
                             "than %d bytes" % (name[:60], MAX_MEMBER_NAME, MAX_NAME_COMPONENT))
    return name


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
_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                   tarfile.GNUTYPE_LONGLINK)


class BoundedTarInfo(tarfile.TarInfo):
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


def member_info(tarinfo: tarfile.TarInfo) -> MemberInfo:
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
