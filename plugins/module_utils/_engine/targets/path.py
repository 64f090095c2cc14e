# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Target on a local directory: a plain disk, or a kernel CIFS/NFS mount made by the ``mount`` role."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat as stat_module
from typing import List, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, TargetError, TargetExists, TargetFull, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import (
    AtomicRenameUnsupported,
    Entry,
    Target,
    WriteHandle,
    clean_relpath,
    put_files_concurrently,
)

DEFAULT_FILE_MODE = 0o640
DEFAULT_DIR_MODE = 0o750

_RENAME_NOREPLACE = 1  # from <linux/fs.h>
_AT_FDCWD = -100


def map_os_error(exc: OSError, where: str) -> Exception:
    """Turn an OSError into the engine's error naming ``where`` (a path or 'a -> b')."""
    code = exc.errno
    reason = os.strerror(code) if code else str(exc)
    if code == errno.ENOENT:
        return TargetNotFound("%s does not exist" % where)
    if code == errno.EEXIST:
        return TargetExists("%s already exists" % where)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return TargetFull("no space left on %s (%s)" % (where, reason))
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return TargetError("permission denied on %s (%s)" % (where, reason))
    return TargetError("%s: %s" % (where, reason))


def _load_renameat2():
    """libc's renameat2, or None when this libc lacks it (glibc < 2.28, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def _fsync_dir(folder: str) -> None:
    """fsync a directory; filesystems that cannot (EINVAL and the like on some mounts) are left as they are."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise map_os_error(exc, folder) from None
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EROFS):
            raise map_os_error(exc, folder) from None
    finally:
        os.close(fd)


class _LocalWriter(WriteHandle):
    """Write handle: loops over short writes, maps errors, fsyncs on close so data is durable."""

    def __init__(self, fd: int, where: str):
        self._fd = fd
        self._where = where
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise map_os_error(exc, self._where) from None
        return total

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            os.fsync(self._fd)
        except OSError as exc:
            # EINVAL: some filesystems cannot fsync; the data is still written
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                os.close(self._fd)
                raise map_os_error(exc, self._where) from None
        try:
            os.close(self._fd)
        except OSError as exc:
            raise map_os_error(exc, self._where) from None

    def abort(self) -> None:
        """Close without fsync (after a failure)."""
        if not self.closed:
            self.closed = True
            try:
                os.close(self._fd)
            except OSError:
                pass


# Kernel SMB mounts decide access(2) on the client (uid/gid/file_mode options); the server may still refuse.
_CLIENT_SIDE_PERMISSION_MOUNTS = ("cifs", "smb3", "smbfs")


def _mount_type(path: str) -> str:
    """The file system type of the mount holding ``path`` (/proc/self/mounts); "" when it cannot be told."""
    real = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return ""
    return kind


class PathTarget(Target):
    """A local directory. The root must already exist: an absent mount must not fill the local disk."""

    kind = "path"

    def __init__(self, root: str, file_mode: int = DEFAULT_FILE_MODE, dir_mode: int = DEFAULT_DIR_MODE):
        if not root or not os.path.isabs(root):
            raise ConfigError("target path must be an absolute local directory, got %r" % (root,))
        self.root = os.path.normpath(root)
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        if not os.path.isdir(self.root):
            raise TargetNotFound("target directory %s does not exist (is the share mounted?)" % self.root)

    def describe(self) -> str:
        return self.root

    def _local(self, relpath: str) -> str:
        relpath = clean_relpath(relpath)
        return os.path.join(self.root, relpath) if relpath else self.root

    def put_files(self, uploads):
        """Several one-file sequences at once: each waits on its fsyncs (a kernel CIFS/NFS mount: on the
        server) without the GIL."""
        return put_files_concurrently(self, uploads)

    def open_write(self, relpath: str, exclusive: bool = False):
        local = self._local(relpath)
        self._make_parent(local)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        flags |= os.O_EXCL if exclusive else os.O_TRUNC
        try:
            fd = os.open(local, flags, self.file_mode)
        except OSError as exc:
            raise map_os_error(exc, local) from None
        return _LocalWriter(fd, local)

    def open_read(self, relpath: str):
        local = self._local(relpath)
        try:
            return open(local, "rb")
        except OSError as exc:
            raise map_os_error(exc, local) from None

    def check_writable(self, relpath: str) -> bool:
        local = self._local(relpath)
        if _mount_type(local) in _CLIENT_SIDE_PERMISSION_MOUNTS:
            return False  # access(2) answers from the mount options there (noperm: always yes), not the server
        if not os.access(local, os.W_OK | os.X_OK):
            raise TargetError("permission denied on %s: this user may not create files there" % local)
        return True

    def stat(self, relpath: str) -> Entry:
        local = self._local(relpath)
        try:
            result = os.stat(local)
        except OSError as exc:
            raise map_os_error(exc, local) from None
        return Entry(
            name=os.path.basename(local),
            is_dir=stat_module.S_ISDIR(result.st_mode),
            size=result.st_size,
            mtime=result.st_mtime,
        )

    def listdir(self, relpath: str) -> List[Entry]:
        local = self._local(relpath)
        entries = []
        try:
            with os.scandir(local) as iterator:
                for item in iterator:
                    try:
                        result = item.stat()
                    except FileNotFoundError:
                        continue  # removed while we listed
                    entries.append(Entry(item.name, stat_module.S_ISDIR(result.st_mode), result.st_size, result.st_mtime))
        except OSError as exc:
            raise map_os_error(exc, local) from None
        return entries

    def makedirs(self, relpath: str) -> None:
        # Our own walk, because os.makedirs applies ``mode`` to the last directory only.
        current = self.root
        for part in clean_relpath(relpath).split("/"):
            if not part:
                continue
            current = os.path.join(current, part)
            try:
                os.mkdir(current, self.dir_mode)
            except FileExistsError:
                if not os.path.isdir(current):
                    raise TargetExists("%s exists and is not a directory" % current) from None
            except OSError as exc:
                raise map_os_error(exc, current) from None

    def _make_parent(self, local: str) -> None:
        parent = os.path.dirname(local)
        if parent != self.root and not os.path.isdir(parent):
            self.makedirs(os.path.relpath(parent, self.root).replace(os.sep, "/"))

    def remove(self, relpath: str) -> None:
        local = self._local(relpath)
        try:
            os.unlink(local)
        except OSError as exc:
            raise map_os_error(exc, local) from None

    def rmdir(self, relpath: str) -> None:
        local = self._local(relpath)
        if local == self.root:
            raise ConfigError("refusing to remove the target root %s" % local)
        try:
            os.rmdir(local)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise TargetError("directory %s is not empty" % local) from None
            raise map_os_error(exc, local) from None

    def rename(self, src: str, dst: str, replace: bool = False) -> None:
        local_src = self._local(src)
        local_dst = self._local(dst)
        where = "%s -> %s" % (local_src, local_dst)
        self._make_parent(local_dst)
        try:
            if replace:
                os.replace(local_src, local_dst)
            else:
                self._rename_noreplace(local_src, local_dst)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise TargetExists("cannot rename %s: %s already exists" % (local_src, local_dst)) from None
            if exc.errno == errno.ENOENT and not os.path.lexists(local_src):
                raise TargetNotFound("%s does not exist" % local_src) from None
            raise map_os_error(exc, where) from None
        # A rename is durable once its directories are: without this a crash can lose a published name.
        for folder in sorted({os.path.dirname(local_dst), os.path.dirname(local_src)}):
            _fsync_dir(folder)

    @staticmethod
    def _rename_noreplace(local_src: str, local_dst: str) -> None:
        """Atomic no-replace rename, with fallbacks for filesystems that lack RENAME_NOREPLACE.

        1. renameat2(RENAME_NOREPLACE): ext4, xfs, btrfs, tmpfs and kernel CIFS mounts support it.
        2. link + unlink: kernel NFS mounts (no renameat2 flags) support hard links; atomic as well.
        Filesystems with neither (e.g. CIFS without unix extensions refusing links) get
        AtomicRenameUnsupported, and ``rename_into_place`` falls back to look-then-rename.
        """
        if _renameat2 is not None:
            result = _renameat2(_AT_FDCWD, os.fsencode(local_src), _AT_FDCWD, os.fsencode(local_dst), _RENAME_NOREPLACE)
            if result == 0:
                return
            code = ctypes.get_errno()
            if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                raise OSError(code, os.strerror(code), local_src)
        try:
            os.link(local_src, local_dst)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV, errno.ENOSYS):
                raise
        else:
            os.unlink(local_src)
            return
        raise AtomicRenameUnsupported("%s: the filesystem has neither RENAME_NOREPLACE nor hard links" % local_dst)

    def free_space(self) -> Optional[int]:
        try:
            result = os.statvfs(self.root)
        except OSError as exc:
            raise map_os_error(exc, self.root) from None
        return result.f_bavail * result.f_frsize
