# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one interface every backup target (smb, nfs, path) implements.

Paths given to a Target are relative POSIX paths ('a/b/c', '/'-separated, no '..', no leading '/')
below the target's root (share + path, export + path, or local directory). Implementations map them
to their protocol and turn protocol errors into the errors of ``errors.py``.
"""

from __future__ import annotations

import abc
import concurrent.futures
import posixpath
from dataclasses import dataclass
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, TargetError, TargetExists

#: Suffix of a file being written; renamed to its final name only once whole.
UPLOAD_SUFFIX = ".partial"


class AtomicRenameUnsupported(TargetError):
    """The server cannot rename without replacing atomically (e.g. NFS without LINK); nothing was renamed."""


@dataclass
class Capabilities:
    """What a target can do, so callers check a capability instead of working around a client's quirk.

    ``atomic_no_replace_rename`` may turn False on the first attempt that finds the server lacking it
    (it cannot be known before trying): see ``rename_into_place``.
    """

    atomic_no_replace_rename: bool = True


@dataclass(frozen=True)
class Entry:
    """One directory entry on a target."""

    name: str
    is_dir: bool
    size: int
    mtime: float  # seconds since the epoch, UTC


def clean_relpath(relpath: str) -> str:
    """Normalise a target-relative path and refuse anything that could escape the root."""
    if not isinstance(relpath, str) or "\x00" in relpath:
        raise ConfigError("invalid target path %r" % (relpath,))
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ConfigError("target path %r must not contain '..'" % (relpath,))
    return "/".join(parts)


@dataclass
class Upload:
    """One small file for ``Target.put_files``: ``data`` becomes ``remote``, through ``remote + '.partial'``.

    ``replace``: an existing ``remote`` is replaced; else it is left alone and reported (TargetExists).
    ``tag`` is the caller's own bookkeeping, handed back untouched.
    """

    remote: str
    data: bytes
    replace: bool = False
    tag: Any = None


class WriteHandle:
    """Context manager of a target's write handle: ``close()`` (durable) on success, ``abort()`` on error."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class ReadHandle:
    """Context manager of a target's read handle: ``close()`` on leaving."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Target(abc.ABC):
    """A place where snapshots are stored. Use as a context manager; ``close()`` releases connections."""

    #: 'smb', 'nfs' or 'path'
    kind = ""

    @property
    def capabilities(self) -> Capabilities:
        """This target's capabilities (one object per target, created on first use)."""
        found = self.__dict__.get("_capabilities")
        if found is None:
            found = self.__dict__["_capabilities"] = Capabilities()
        return found

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this target points, for messages (e.g. 'smb://host:445/share/path'); never secrets."""

    @abc.abstractmethod
    def open_write(self, relpath: str, exclusive: bool = False) -> BinaryIO:
        """Open a file for writing, creating parent directories; truncates unless ``exclusive``.

        With ``exclusive`` the call fails with TargetExists if the file exists (atomic create, used
        for locks). The returned object has ``write(bytes) -> int`` and ``close()``, and works as a
        context manager. Data is durable on the server when ``close()`` returns.
        """

    @abc.abstractmethod
    def open_read(self, relpath: str) -> BinaryIO:
        """Open a file for reading: ``read(n) -> bytes`` (b'' at the end) and ``close()``."""

    @abc.abstractmethod
    def stat(self, relpath: str) -> Entry:
        """Entry for one path; TargetNotFound if it does not exist."""

    @abc.abstractmethod
    def listdir(self, relpath: str) -> List[Entry]:
        """Entries of one directory (no '.' or '..'); TargetNotFound if it does not exist."""

    @abc.abstractmethod
    def makedirs(self, relpath: str) -> None:
        """Create a directory and its parents; no error if it exists."""

    @abc.abstractmethod
    def remove(self, relpath: str) -> None:
        """Remove one file; TargetNotFound if it does not exist."""

    @abc.abstractmethod
    def rmdir(self, relpath: str) -> None:
        """Remove one empty directory."""

    @abc.abstractmethod
    def rename(self, src: str, dst: str, replace: bool = False) -> None:
        """Rename a file. Without ``replace``, fails with TargetExists if ``dst`` exists, atomically, or
        with AtomicRenameUnsupported (renaming nothing) where the server cannot; callers use
        ``rename_into_place`` rather than calling this with ``replace=False`` directly."""

    @abc.abstractmethod
    def free_space(self) -> Optional[int]:
        """Bytes available to us below the root, or None if the protocol cannot tell."""

    def check_writable(self, relpath: str) -> bool:
        """Ask the server, writing nothing, whether we may create and remove entries in folder ``relpath``.

        True when it said yes; False when the protocol cannot tell without a write. A refusal raises TargetError.
        Check mode asks this instead of writing a probe file, which would change the folder (its mtime).
        """
        return False

    def close(self) -> None:
        """Release connections. Safe to call twice."""

    # Helpers built on the primitives above; implementations may override them for speed.

    def exists(self, relpath: str) -> bool:
        from ansible_collections.segura.backup.plugins.module_utils._engine.errors import TargetNotFound

        try:
            self.stat(relpath)
        except TargetNotFound:
            return False
        return True

    def read_bytes(self, relpath: str, limit: int = 16 * 1024 * 1024) -> bytes:
        """Whole content of a small file (sidecars, locks); refuses files larger than ``limit``."""
        chunks = []
        total = 0
        with self.open_read(relpath) as handle:
            while True:
                data = handle.read(1024 * 1024)
                if not data:
                    break
                total += len(data)
                if total > limit:
                    from ansible_collections.segura.backup.plugins.module_utils._engine.errors import IntegrityError

                    raise IntegrityError("%s is larger than %d bytes" % (self.describe_path(relpath), limit))
                chunks.append(data)
        return b"".join(chunks)

    def write_bytes(self, relpath: str, data: bytes, exclusive: bool = False) -> None:
        with self.open_write(relpath, exclusive=exclusive) as handle:
            handle.write(data)

    def put_files(self, uploads: Iterable[Upload]) -> Iterator[Tuple[Upload, Optional[TargetExists]]]:
        """Write many small files, each whole under its name or not at all.

        Each ``Upload`` is written to ``remote.partial`` (parent folders created), checked to hold
        ``len(data)`` bytes, then renamed into place. Yields ``(upload, None)`` once an upload is in
        place, or ``(upload, TargetExists)`` when ``replace`` is False and ``remote`` exists (its
        partial removed). Any other error raises, after removing the partials still in flight (best
        effort). ``uploads`` is consumed lazily; implementations may keep several uploads in flight
        (bounded in count and bytes) and yield them in another order than given.

        This default sends one file at a time; SMB pipelines compound requests, NFS and path run
        several of these one-file sequences at once (``put_files_concurrently``).
        """
        for upload in uploads:
            yield upload, self.put_one(upload)

    def put_one(self, upload: Upload) -> Optional[TargetExists]:
        """One upload of ``put_files``: None once in place, TargetExists (partial removed) if refused."""
        partial = upload.remote + UPLOAD_SUFFIX
        try:
            with self.open_write(partial) as out:
                out.write(upload.data)
            stored = self.stat(partial).size
            if stored != len(upload.data):
                raise TargetError("%s holds %d bytes after writing %d" % (self.describe_path(partial), stored, len(upload.data)))
            try:
                rename_into_place(self, partial, upload.remote, replace=upload.replace)
            except TargetExists as exc:  # only the rename's "exists" is this upload's; any other is an error
                self._remove_quietly(partial)
                return exc
        except BaseException:
            self._remove_quietly(partial)
            raise
        return None

    def _remove_quietly(self, relpath: str) -> None:
        try:
            self.remove(relpath)
        except Exception:  # noqa: BLE001 - best effort: prune removes stale partial uploads later
            pass

    def describe_path(self, relpath: str) -> str:
        return posixpath.join(self.describe(), clean_relpath(relpath))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def put_files_concurrently(target: Target, uploads: Iterable[Upload], workers: int = 8,
                           max_bytes: int = 16 * 1024 * 1024) -> Iterator[Tuple[Upload, Optional[TargetExists]]]:
    """``target.put_one`` on up to ``workers`` uploads at once (threads: the protocol clients wait
    without the GIL), at most ``max_bytes`` of data held (one larger upload alone); results in
    completion order. On an error, or when the caller stops early, the uploads in flight finish
    first (each removes its own partial if it fails), then the error is raised."""
    pending: Dict[Any, Upload] = {}
    held = 0
    source = iter(uploads)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="put_files") as pool:
        try:
            for upload in source:
                while pending and (len(pending) >= workers or held + len(upload.data) > max_bytes):
                    finished_futures = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)[0]
                    for future in finished_futures:
                        finished = pending.pop(future)
                        held -= len(finished.data)
                        yield finished, future.result()
                pending[pool.submit(target.put_one, upload)] = upload
                held += len(upload.data)
            for future in concurrent.futures.as_completed(list(pending)):
                finished = pending.pop(future)
                yield finished, future.result()
        finally:
            concurrent.futures.wait(pending)  # nothing is left running behind the caller's back


def rename_into_place(target: Target, src: str, dst: str, replace: bool = False) -> None:
    """Rename ``src`` to ``dst``: over it with ``replace``; else unless ``dst`` exists (TargetExists),
    atomically where the target can.

    Where it cannot (capability ``atomic_no_replace_rename`` False): look, then rename. That is racy
    only against another writer creating ``dst`` in between; runs on one appliance are serialised by
    its lock and snapshot names are unique, so it is acceptable, and the capability says it happened.
    """
    if replace:
        target.rename(src, dst, replace=True)
        return
    if target.capabilities.atomic_no_replace_rename:
        try:
            target.rename(src, dst, replace=False)
            return
        except AtomicRenameUnsupported:
            target.capabilities.atomic_no_replace_rename = False
    if target.exists(dst):
        raise TargetExists("cannot rename %s: %s already exists" % (target.describe_path(src), target.describe_path(dst)))
    target.rename(src, dst, replace=True)
