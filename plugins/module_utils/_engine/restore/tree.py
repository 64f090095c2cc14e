# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The destination tree: writes that never follow a symlink inside the restored paths."""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import secrets
import stat as stat_module
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Literal, Optional, Sequence, Tuple, overload

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout, file_type
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ArchiveError, IntegrityError
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import BLOCK, is_within


@dataclass
class Wanted:
    """One filesystem entry the snapshot describes (from the manifest)."""

    relpath: str  # below the layout root
    type: str  # file | dir | symlink
    size: int
    sha256: Optional[str]
    mode: int
    mtime: int
    uid: int
    gid: int
    linkname: str = ""
    component: str = ""


class DestinationTree:
    """The appliance's filesystem below ``root``, restricted to ``allowed_roots`` (relative paths).

    Path components ABOVE an allowed root (``etc``, ``var/senhasegura``) belong to the system and are
    followed like any path; from the allowed root down, every component is opened with O_NOFOLLOW, so
    a symlink - old, or planted by an earlier member - is never written through. Files go to a
    temporary name in their directory, are hashed while written and renamed over the old entry.
    """

    def __init__(self, root: str, allowed_roots: Sequence[str]):
        self.root = root
        self.allowed_roots = sorted(set(allowed_roots), key=len, reverse=True)
        self.can_chown = hasattr(os, "geteuid") and os.geteuid() == 0

    def root_of(self, relpath: str) -> Optional[str]:
        for root in self.allowed_roots:
            if is_within(relpath, root):
                return root
        return None

    # -- directory walking -------------------------------------------------------------------------

    @overload
    def _open_parent(self, relpath: str, create: Literal[True], dir_mode: int = ...) -> Tuple[int, str]: ...

    @overload
    def _open_parent(self, relpath: str, create: bool, dir_mode: int = ...) -> Optional[Tuple[int, str]]: ...

    def _open_parent(self, relpath: str, create: bool, dir_mode: int = 0o700) -> Optional[Tuple[int, str]]:
        """(fd of the parent directory, base name); None when a parent is missing and not created."""
        allowed = self.root_of(relpath)
        if allowed is None:
            raise ArchiveError("refusing to restore %s: outside the restored paths" % self._local(relpath))
        parts = relpath.split("/")
        first_guarded = len(allowed.split("/")) - 1  # index of the allowed root's own component
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for index, part in enumerate(parts[:-1]):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                if index >= first_guarded:
                    flags |= os.O_NOFOLLOW
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(part, 0o755 if index < first_guarded else dir_mode, dir_fd=fd)
                    child = os.open(part, flags, dir_fd=fd)
                except OSError as exc:
                    where = self._local("/".join(parts[:index + 1]))
                    if os.path.islink(where):
                        raise ArchiveError("refusing to write through the symbolic link %s" % where) from None
                    raise ApplianceError("cannot open directory %s: %s" % (where, exc.strerror)) from None
                os.close(fd)
                fd = child
        except BaseException:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        return fd, parts[-1]

    def _local(self, relpath: str) -> str:
        return os.path.join(self.root, relpath)

    # -- comparing -------------------------------------------------------------------------------

    def state(self, wanted: Wanted) -> str:
        """'missing', 'same', 'metadata' (content equal, mode/owner/mtime not), 'differs' or 'conflict'."""
        opened = self._open_parent(wanted.relpath, create=False)
        if opened is None:
            return "missing"
        dfd, name = opened
        try:
            try:
                info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return "missing"
            kind = file_type(info.st_mode) or "other"
            if wanted.type == "dir":
                if kind != "dir":
                    return "conflict"
            elif kind == "dir":
                return "conflict"
            elif kind != wanted.type:
                return "differs"
            elif kind == "symlink":
                if os.readlink(name, dir_fd=dfd) != wanted.linkname:
                    return "differs"
            elif kind == "file":
                if info.st_size != wanted.size or _hash_at(dfd, name) != wanted.sha256:
                    return "differs"
            return "same" if self._same_metadata(info, wanted) else "metadata"
        finally:
            os.close(dfd)

    def _same_metadata(self, info: os.stat_result, wanted: Wanted) -> bool:
        if wanted.type != "symlink" and stat_module.S_IMODE(info.st_mode) != wanted.mode:
            return False
        if self.can_chown and (info.st_uid, info.st_gid) != (wanted.uid, wanted.gid):
            return False
        return int(info.st_mtime) == int(wanted.mtime)

    # -- writing ---------------------------------------------------------------------------------

    def write_file(self, wanted: Wanted, blocks: Iterator[bytes]) -> None:
        """Write to a temporary name, check size + sha256 against ``wanted``, then rename into place."""
        dfd, name = self._open_parent(wanted.relpath, create=True)
        temp = _temp_name(name)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
            try:
                digest = hashlib.sha256()
                size = 0
                for block in blocks:
                    view = memoryview(block)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    digest.update(block)
                    size += len(block)
                if size != wanted.size or digest.hexdigest() != wanted.sha256:
                    raise IntegrityError("%s: restored content (%d bytes) does not match the manifest; not "
                                         "renamed into place" % (self._local(wanted.relpath), size))
                self._apply_metadata_fd(fd, wanted)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._replace(dfd, temp, name, wanted)
        except BaseException:
            _unlink_quietly(temp, dfd)
            raise
        finally:
            os.close(dfd)

    def write_symlink(self, wanted: Wanted) -> None:
        dfd, name = self._open_parent(wanted.relpath, create=True)
        temp = _temp_name(name)
        try:
            os.symlink(wanted.linkname, temp, dir_fd=dfd)
            if self.can_chown:
                os.chown(temp, wanted.uid, wanted.gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(temp, (wanted.mtime, wanted.mtime), dir_fd=dfd, follow_symlinks=False)
            self._replace(dfd, temp, name, wanted)
        except BaseException:
            _unlink_quietly(temp, dfd)
            raise
        finally:
            os.close(dfd)

    def hard_link(self, first: str, wanted: Wanted) -> bool:
        """Make ``wanted`` another name of the file at ``first`` (both below the allowed roots), once
        that file is checked to hold ``wanted``'s content. False, with nothing changed, where the
        filesystem cannot (another filesystem, links not allowed): the caller then copies."""
        if self.state(Wanted(relpath=first, type="file", size=wanted.size, sha256=wanted.sha256, mode=wanted.mode,
                             mtime=0, uid=0, gid=0)) not in ("same", "metadata"):
            return False
        source = self._open_parent(first, create=False)
        if source is None:
            return False
        sdfd, sname = source
        try:
            dfd, name = self._open_parent(wanted.relpath, create=True)
            temp = _temp_name(name)
            try:
                try:
                    os.link(sname, temp, src_dir_fd=sdfd, dst_dir_fd=dfd, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                        return False
                    raise
                self._replace(dfd, temp, name, wanted)
            except BaseException:
                _unlink_quietly(temp, dfd)
                raise
            finally:
                os.close(dfd)
        finally:
            os.close(sdfd)
        return True

    def make_dir(self, wanted: Wanted) -> None:
        """Create the directory (metadata comes later, in ``set_dir_metadata``: entries change mtimes)."""
        dfd, name = self._open_parent(wanted.relpath, create=True)
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat_module.S_ISDIR(info.st_mode):
                    raise ArchiveError("%s exists and is not a directory; refusing to replace it"
                                       % self._local(wanted.relpath)) from None
        finally:
            os.close(dfd)

    def set_metadata(self, wanted: Wanted) -> None:
        """Mode, owner and mtime of an existing entry, without following a symlink."""
        opened = self._open_parent(wanted.relpath, create=False)
        if opened is None:
            raise ApplianceError("%s vanished during the restore" % self._local(wanted.relpath))
        dfd, name = opened
        try:
            if wanted.type == "symlink":
                if self.can_chown:
                    os.chown(name, wanted.uid, wanted.gid, dir_fd=dfd, follow_symlinks=False)
                os.utime(name, (wanted.mtime, wanted.mtime), dir_fd=dfd, follow_symlinks=False)
                return
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            if wanted.type == "dir":
                flags |= os.O_DIRECTORY
            fd = os.open(name, flags, dir_fd=dfd)
            try:
                self._apply_metadata_fd(fd, wanted)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    def _apply_metadata_fd(self, fd: int, wanted: Wanted) -> None:
        if self.can_chown:
            os.fchown(fd, wanted.uid, wanted.gid)  # before chmod: chown clears set-id bits
        os.fchmod(fd, wanted.mode)
        os.utime(fd, (wanted.mtime, wanted.mtime))

    def _replace(self, dfd: int, temp: str, name: str, wanted: Wanted) -> None:
        try:
            existing = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat_module.S_ISDIR(existing.st_mode):
            raise ArchiveError("%s is a directory where the snapshot has a %s; refusing to replace it"
                               % (self._local(wanted.relpath), wanted.type))
        os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # replaces a file or a symlink itself

    def fsync_dirs(self, relpaths: Sequence[str]) -> None:
        for relpath in relpaths:
            try:
                fd = os.open(self._local(relpath), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _temp_name(name: str) -> str:
    return ".%s.segura-restore-%s" % (name[:80], secrets.token_hex(4))


def _unlink_quietly(name: str, dfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def _hash_at(dfd: int, name: str) -> Optional[str]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def allowed_roots(layout: ApplianceLayout) -> Dict[str, str]:
    """Allowed root (relative path) -> component: the configured paths and the secrets folder."""
    roots = {entry.path: "config" for entry in layout.config_paths}
    roots[layout.secrets_dir] = "secrets"
    return roots


def component_of(relpath: str, roots: Dict[str, str]) -> Optional[str]:
    best = None
    for root, component in roots.items():
        if is_within(relpath, root) and (best is None or len(root) > len(best[0])):
            best = (root, component)
    return best[1] if best else None


def path_through_non_directory(entries: Iterable[Tuple[str, Any]]) -> Optional[Tuple[str, str, str]]:
    """(path, its ancestor, that ancestor's type) of the first entry that lies below an entry that is not
    a directory (a symlink or a file), None when there is none. ``entries``: (relpath, type) pairs."""
    kinds = dict(entries)
    for relpath in kinds:
        parts = relpath.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            kind = kinds.get(parent)
            if kind is not None and kind != "dir":
                return relpath, parent, str(kind)
    return None


def check_symlink_target(relpath: str, linkname: str, allowed_roots: Sequence[str]) -> Optional[str]:
    """None when a symlink at ``relpath`` pointing to ``linkname`` stays inside the restored paths.

    Absolute targets are read as paths on the appliance (``/`` = the layout root); relative ones are
    resolved from the link's folder. Either must land inside one of ``allowed_roots``.
    """
    if not linkname or "\x00" in linkname:
        return "empty or invalid link target"
    if linkname.startswith("/"):
        resolved = posixpath.normpath(linkname).lstrip("/")
    else:
        base = posixpath.dirname(relpath)
        joined = posixpath.join("/" + base, linkname)
        resolved = posixpath.normpath(joined).lstrip("/")
        # normpath("/..") is "/": climbing above the root must not be silently clipped
        depth = len([p for p in base.split("/") if p])
        for part in linkname.split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    return "target %r climbs above the appliance root" % linkname
            elif part not in ("", "."):
                depth += 1
    if not any(is_within(resolved, root) for root in allowed_roots):
        return "target %r points outside the restored paths" % linkname
    return None
