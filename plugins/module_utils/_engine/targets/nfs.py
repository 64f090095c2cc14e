# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Target on an NFS export through the userspace client nfs-rs (NFSv3 or NFSv4.1, no mount).

nfs-rs has no exclusive create and its RENAME replaces an existing destination, so both atomic
operations are built on LINK, which the server refuses atomically when the destination exists:
- exclusive create: create a private temporary name, LINK it to the wanted name, drop the temporary;
- rename without replace: LINK src to dst, then REMOVE src.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple, Type

from ansible_collections.segura.backup.plugins.module_utils._engine import deps
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    BackupError,
    ConfigError,
    TargetError,
    TargetExists,
    TargetFull,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.streams import ReadMixin
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import (
    AtomicRenameUnsupported,
    Entry,
    ReadHandle,
    Target,
    WriteHandle,
    clean_relpath,
    put_files_concurrently,
)

try:
    import nfs_rs

    HAS_NFS_RS = True
except ImportError:  # reported by NfsTarget() so modules can fail with a clear message
    HAS_NFS_RS = False

# nfs-rs COMMITs every write() call, so each call should carry a lot: at least 4 MiB, and enough
# to keep its 8 concurrent WRITE chunks busy.
MIN_WRITE_BATCH = 4 * 1024 * 1024
MAX_WRITE_BATCH = 16 * 1024 * 1024

_FULL_CODES = ("NFS3ERR_NOSPC", "NFS4ERR_NOSPC", "NFS3ERR_DQUOT", "NFS4ERR_DQUOT")
_NOT_EMPTY_CODES = ("NFS3ERR_NOTEMPTY", "NFS4ERR_NOTEMPTY")
_NO_LINK_CODES = ("NFS3ERR_NOTSUPP", "NFS4ERR_NOTSUPP", "NFS3ERR_MLINK", "NFS4ERR_MLINK")


# Retry-safe replies come in bursts when the server is busy: five quick tries over one second ran out
# now and then on a loaded CI machine (load 5-9), so back off 0.1, 0.2, 0.4, 0.8, 1, 1, 1 s: at most
# seven retries and about 4.5 s before the error is reported.
_RETRIES = 8
_MAX_BACKOFF = 1.0

if HAS_NFS_RS:
    # nfs-rs reports "may or may not have happened" two ways: NfsRetryableError (a protocol reply such
    # as NFS4ERR_RETRY_UNCACHED_REP) and NfsUncertainOutcomeError (an NfsOperationOutcomeError, e.g.
    # for an OPEN, which it calls replay-sensitive). Both carry `outcome`; timeouts and lost
    # connections are separate classes and are never retried here.
    _OUTCOME_ERRORS: Tuple[Type[BaseException], ...] = (nfs_rs.NfsRetryableError, nfs_rs.NfsOperationOutcomeError)
else:
    _OUTCOME_ERRORS = ()


def _is_uncertain(exc: BaseException) -> bool:
    return isinstance(exc, _OUTCOME_ERRORS) and getattr(exc, "outcome", None) == nfs_rs.OperationOutcome.UNCERTAIN


def _close_was_uncertain(exc: BaseException) -> bool:
    """An UNCERTAIN close: reported as such, or as an NfsFileCloseError carrying an UNCERTAIN outcome
    (itself or among the errors it wraps). Every batch was written durably before, so it loses nothing."""
    if _is_uncertain(exc):
        return True
    if not HAS_NFS_RS or not isinstance(exc, nfs_rs.NfsFileCloseError):
        return False
    uncertain = nfs_rs.OperationOutcome.UNCERTAIN
    return getattr(exc, "outcome", None) == uncertain or any(
        getattr(inner, "outcome", None) == uncertain for inner in getattr(exc, "errors", None) or ())


def _backoff(attempt: int) -> None:
    time.sleep(min(_MAX_BACKOFF, 0.1 * 2 ** attempt))


def _retrying(function, *args, _idempotent=False, _done=None, **kwargs):
    """Call an nfs-rs function, repeating it when the library says that is safe: the one retry loop
    of this target (never nested around itself: one call costs at most _RETRIES attempts, plus the
    lookups ``_done`` makes to check an uncertain one).

    ganesha sometimes answers an NFSv4.1 request with NFS4ERR_RETRY_UNCACHED_REP (measured in the
    lab, a few times per hundred operations, more under load); nfs-rs reports outcome SAFE_TO_RETRY
    when the server did nothing, and UNCERTAIN for a replay-sensitive operation (mkdir, OPEN) that the
    server may or may not have done. ``_idempotent=True`` callers (lookups, opens of an existing
    file, mkdir with exist_ok, positional writes) retry that too: doing it twice equals doing it once.
    For the others, ``_done()`` (when given) is asked after an UNCERTAIN reply whether the call
    happened, as nfs-rs asks (VerifyThenResume): if it did, that is success; if not, it is tried again.
    """
    for attempt in range(_RETRIES):
        try:
            return function(*args, **kwargs)
        except _OUTCOME_ERRORS as exc:
            if attempt + 1 == _RETRIES:
                raise
            if _is_uncertain(exc) and not _idempotent:
                if _done is None:
                    raise
                if _done():
                    return None
            elif exc.outcome != nfs_rs.OperationOutcome.SAFE_TO_RETRY and not _is_uncertain(exc):
                raise
            _backoff(attempt)
    raise AssertionError("unreachable")


class _NfsWriter(WriteHandle):
    """Buffers writes into large batches (nfs-rs makes each write() call durable, one COMMIT each)."""

    def __init__(self, target: "NfsTarget", handle, where: str, batch: int):
        self._target = target
        self._handle = handle
        self._where = where
        self._batch = batch
        self._buffer = bytearray()
        self._offset = 0
        self.closed = False

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed file")
        self._buffer += data
        if len(self._buffer) >= self._batch:
            self._drain(keep_tail=True)
        return len(data)

    def _drain(self, keep_tail: bool) -> None:
        size = len(self._buffer) - (len(self._buffer) % self._batch if keep_tail else 0)
        if not size:
            return
        view = memoryview(self._buffer)
        try:
            offset = 0
            while offset < size:
                # positional writes: a retried batch (even an UNCERTAIN one) lands where it belongs
                written = _retrying(self._handle.write_at, view[offset:size], self._offset, _idempotent=True)
                if not written:
                    raise TargetError("the NFS server accepted no data for %s" % self._where)
                offset += written
                self._offset += written
        except BaseException as exc:
            view.release()
            self.abort()
            raise self._target.map_error(exc, self._where) from None
        view.release()
        del self._buffer[:size]

    def flush(self) -> None:
        pass  # close() writes the rest; every batch is committed when it is written

    def close(self) -> None:
        if self.closed:
            return
        self._drain(keep_tail=False)
        self.closed = True
        try:
            _retrying(self._handle.close)
        except BaseException as exc:
            # Every batch was already written durably, so an UNCERTAIN close loses nothing: at worst the
            # server keeps an open state until the client's lease ends.
            if not _close_was_uncertain(exc):
                raise self._target.map_error(exc, self._where) from None

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._buffer = bytearray()
        try:
            self._handle.close()
        except Exception:  # noqa: BLE001 - the first error is already being reported
            pass


class _NfsReader(ReadMixin, ReadHandle):
    """Reads ahead in large blocks: one small READ per caller's read() would be latency bound."""

    def __init__(self, target: "NfsTarget", handle, where: str, block: int):
        self._target = target
        self._handle = handle
        self._where = where
        self._block = block
        self._buffer = b""
        self._position = 0
        self._offset = 0

    def _fill(self) -> bytes:
        try:
            data = _retrying(self._handle.read_at, self._offset, self._block, _idempotent=True)
            self._offset += len(data)
            return data
        except BaseException as exc:
            raise self._target.map_error(exc, self._where) from None

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buffer[self._position:]]
            while True:
                data = self._fill()
                if not data:
                    break
                parts.append(data)
            self._buffer, self._position = b"", 0
            return b"".join(parts)
        if self._position >= len(self._buffer):
            self._buffer, self._position = self._fill(), 0
        data = self._buffer[self._position:self._position + size]
        self._position += len(data)
        return data

    def close(self) -> None:
        try:
            self._handle.close()
        except Exception:  # noqa: BLE001 - closing a read handle cannot lose data
            pass


class NfsTarget(Target):
    """A directory on an NFS export: nfs://server/export/path."""

    kind = "nfs"

    def __init__(
        self,
        server: str,
        export: str,
        path: str = "",
        version: str = "4.1",
        port: Optional[int] = None,
        uid: int = 0,
        gid: int = 0,
        timeout: int = 30,
        file_mode: int = 0o640,
        dir_mode: int = 0o750,
    ):
        if not HAS_NFS_RS:
            raise ConfigError(deps.nfs_unavailable())
        if not server or not export:
            raise ConfigError("an NFS target needs a server and an export")
        if str(version) not in ("3", "4.1"):
            raise ConfigError("NFS version must be '3' or '4.1', got %r" % (version,))
        self.server = server
        self.export = "/" + export.strip("/")
        self.version = str(version)
        self.port = port
        self.base = clean_relpath(path or "")
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self._client: Optional["nfs_rs.Client"] = None
        host = "[%s]" % server if ":" in server else server
        url = "nfs://%s%s" % (host, self.export)
        options: Dict[str, Any] = {
            "versions": [self.version],
            "uid": uid,
            "gid": gid,
            "connect_timeout": float(timeout),
            "operation_timeout": float(timeout),
        }
        if port:
            options["nfs_port"] = port
        try:
            self._client = nfs_rs.Client.connect(url, **options)
        except BaseException as exc:
            raise self._connect_error(exc) from None
        self._batch = min(MAX_WRITE_BATCH, max(MIN_WRITE_BATCH, 8 * self._live.io_limits.max_write))

    @property
    def _live(self) -> "nfs_rs.Client":
        """The connected client; TargetError once closed."""
        if self._client is None:
            raise TargetError("%s is closed" % self.describe())
        return self._client

    def __repr__(self):
        return "NfsTarget(%s, version=%s)" % (self.describe(), self.version)

    def describe(self) -> str:
        port = ":%d" % self.port if self.port else ""
        return "nfs://%s%s%s%s" % (self.server, port, self.export, "/" + self.base if self.base else "")

    # -- errors -------------------------------------------------------------------------------------

    def _connect_error(self, exc: BaseException) -> BaseException:
        server = "%s%s" % (self.server, ":%d" % self.port if self.port else "")
        if isinstance(exc, (nfs_rs.NfsMountError, nfs_rs.NfsNotFoundError)):
            return TargetNotFound(
                "export %s not found on NFS server %s (or this host may not mount it): %s" % (self.export, server, exc)
            )
        if isinstance(exc, nfs_rs.NfsPermissionError):
            return TargetError("the NFS server %s refused access to export %s: %s" % (server, self.export, exc))
        if isinstance(exc, (nfs_rs.NfsError, OSError)):
            return TargetError("cannot reach NFS server %s for export %s: %s" % (server, self.export, exc))
        return exc

    def map_error(self, exc: BaseException, where: str) -> BaseException:
        if isinstance(exc, BackupError) or not HAS_NFS_RS:
            return exc
        code = getattr(exc, "code_name", None) or ""
        if isinstance(exc, nfs_rs.NfsNotFoundError):
            return TargetNotFound("%s does not exist" % where)
        if isinstance(exc, nfs_rs.NfsAlreadyExistsError):
            return TargetExists("%s already exists" % where)
        if code in _FULL_CODES:
            return TargetFull("no space left on %s (%s)" % (where, code))
        if isinstance(exc, nfs_rs.NfsPermissionError):
            return TargetError("permission denied on %s (%s)" % (where, code or exc))
        if code in _NOT_EMPTY_CODES:
            return TargetError("directory %s is not empty" % where)
        if isinstance(exc, (nfs_rs.NfsTimeoutError, nfs_rs.NfsConnectionError)):
            return TargetError("lost the NFS server %s (export %s) at %s: %s" % (self.server, self.export, where, exc))
        if isinstance(exc, (nfs_rs.NfsError, OSError)):
            return TargetError("%s: %s" % (where, exc))
        return exc

    # -- paths --------------------------------------------------------------------------------------

    def _inside(self, relpath: str) -> str:
        """Export-relative path ('' for the export root)."""
        relpath = clean_relpath(relpath)
        if self.base and relpath:
            return self.base + "/" + relpath
        return self.base or relpath

    def _url(self, relpath: str) -> str:
        inside = self._inside(relpath)
        return "nfs://%s%s%s" % (self.server, self.export, "/" + inside if inside else "")

    def _call(self, where: str, function, *args, **kwargs):
        try:
            return _retrying(function, *args, **kwargs)
        except BaseException as exc:
            raise self.map_error(exc, where) from None

    def _call_idempotent(self, where: str, function, *args):
        """For calls that have the same effect done twice (lookups, opens, chmod): retry UNCERTAIN too."""
        return self._call(where, function, *args, _idempotent=True)

    def _call_verified(self, where: str, function, args: tuple, done) -> None:
        """A replay-sensitive call (unlink, rename): on an UNCERTAIN reply, ``done()`` tells whether it
        happened; if not, it is tried again."""
        self._call(where, function, *args, _done=done)

    # -- Target -------------------------------------------------------------------------------------

    def put_files(self, uploads):
        """Several one-file sequences at once: nfs-rs waits for the server without the GIL, so eight
        files in flight hide most of the round trips each one needs (measured in benchmarks/run.py)."""
        return put_files_concurrently(self, uploads)

    def open_write(self, relpath: str, exclusive: bool = False):
        inside = self._inside(relpath)
        where = self._url(relpath)
        if not inside:
            raise ConfigError("cannot write to the export root itself")
        self._makedirs_inside(posixpath.dirname(inside))
        if exclusive:
            self._create_exclusive(inside, where)
            handle = self._call_idempotent(where, self._live.open, inside, "r+b")
        else:
            existed = self._call_idempotent(where, self._live.exists, inside)
            handle = self._call_idempotent(where, self._live.open, inside, "wb")
            if not existed:
                self._call_idempotent(where, self._live.chmod, inside, self.file_mode)
        return _NfsWriter(self, handle, where, self._batch)

    def _create_exclusive(self, inside: str, where: str) -> None:
        """Atomic create-if-absent: LINK fails on the server when the name exists."""
        temporary = posixpath.join(posixpath.dirname(inside), ".%s.%s.creating" % (posixpath.basename(inside), uuid.uuid4().hex))
        if self._call_idempotent(where, self._live.exists, inside):
            raise TargetExists("%s already exists" % where)
        # A fresh uniquely named, empty file: creating or chmod-ing it twice does no harm, and an
        # UNCERTAIN close leaves at most an open state that the lease ends.
        handle = self._call_idempotent(where, self._live.open, temporary, "wb")
        try:
            _retrying(handle.close)
        except BaseException as exc:
            if not _close_was_uncertain(exc):
                raise self.map_error(exc, where) from None
        try:
            self._call_idempotent(where, self._live.chmod, temporary, self.file_mode)
            try:
                self._link_verified(temporary, inside)  # an UNCERTAIN LINK is checked, not failed
            except BaseException as exc:
                raise self.map_error(exc, where) from None
        finally:
            try:
                self._live.unlink(temporary, missing_ok=True)
            except Exception:  # noqa: BLE001 - a leftover '.creating' name is harmless
                pass

    def open_read(self, relpath: str):
        where = self._url(relpath)
        handle = self._call_idempotent(where, self._live.open, self._inside(relpath), "rb")
        return _NfsReader(self, handle, where, self._batch)

    def check_writable(self, relpath: str) -> bool:
        # NFS ACCESS (MODIFY, EXTEND, DELETE): the server's answer for our credentials, nothing written.
        where = self._url(relpath)
        if not self._call_idempotent(where, self._live.access, self._inside(relpath) or ".", os.W_OK | os.X_OK):
            raise TargetError("the NFS server %s refused write access to %s" % (self.server, where))
        return True

    def stat(self, relpath: str) -> Entry:
        inside = self._inside(relpath)
        where = self._url(relpath)
        info = self._call_idempotent(where, self._live.stat, inside or ".")
        is_dir = info.type == nfs_rs.FileType.DIRECTORY
        return Entry(posixpath.basename(inside) or self.export, is_dir, 0 if is_dir else info.size, info.mtime / 1e9)

    def listdir(self, relpath: str) -> List[Entry]:
        inside = self._inside(relpath)
        where = self._url(relpath)
        entries = []
        try:
            # a listing is a read: repeating it after an "uncertain" reply is harmless
            for item in _retrying(lambda: list(self._live.scandir(inside or ".")), _idempotent=True):
                if item.name in (".", ".."):
                    continue
                is_dir = item.info.type == nfs_rs.FileType.DIRECTORY
                entries.append(Entry(item.name, is_dir, 0 if is_dir else item.info.size, item.info.mtime / 1e9))
        except BaseException as exc:
            if not inside and getattr(exc, "code_name", "") == "NFS4ERR_BADNAME":
                # nfs-rs 0.8 cannot list an NFSv4.1 export root; subdirectories list fine.
                raise TargetError(
                    "cannot list the root of export %s over NFSv4.1 with nfs-rs; set target.path to a "
                    "directory inside the export or use version 3" % self.export
                ) from None
            raise self.map_error(exc, where) from None
        return entries

    def makedirs(self, relpath: str) -> None:
        self._makedirs_inside(self._inside(relpath))

    def _makedirs_inside(self, inside: str) -> None:
        if not inside:
            return
        where = "nfs://%s%s/%s" % (self.server, self.export, inside)
        try:
            _retrying(self._live.mkdir, inside, self.dir_mode, parents=True, exist_ok=True, _idempotent=True)
        except BaseException as exc:
            if isinstance(exc, _OUTCOME_ERRORS) and self._is_directory(inside):
                return  # an UNCERTAIN reply (seen after a ganesha restart); verified: the folder is there
            mapped = self.map_error(exc, where)
            if isinstance(mapped, TargetExists):
                mapped = TargetExists("%s (or a parent) exists and is not a directory" % where)
            raise mapped from None

    def _exists(self, inside: str) -> bool:
        """A lookup for verifying an UNCERTAIN mutation; itself retried (it is only a lookup)."""
        return _retrying(self._live.exists, inside, _idempotent=True)

    def _is_directory(self, inside: str) -> bool:
        try:
            return _retrying(self._live.stat, inside).type == nfs_rs.FileType.DIRECTORY
        except nfs_rs.NfsError:
            return False

    def remove(self, relpath: str) -> None:
        where = self._url(relpath)
        inside = self._inside(relpath)
        self._call_verified(where, self._live.unlink, (inside,), lambda: not self._exists(inside))

    def rmdir(self, relpath: str) -> None:
        where = self._url(relpath)
        if not clean_relpath(relpath):
            raise ConfigError("refusing to remove the target root %s" % where)
        self._call(where, self._live.rmdir, self._inside(relpath))

    def rename(self, src: str, dst: str, replace: bool = False) -> None:
        inside_src, inside_dst = self._inside(src), self._inside(dst)
        where = "%s -> %s" % (self._url(src), self._url(dst))
        if not self._call_idempotent(where, self._live.exists, inside_src):
            raise TargetNotFound("%s does not exist" % self._url(src))
        self._makedirs_inside(posixpath.dirname(inside_dst))
        if replace:
            self._call_verified(where, self._live.rename, (inside_src, inside_dst),
                                lambda: not self._exists(inside_src) and self._exists(inside_dst))
            return
        # NFS RENAME replaces silently, so claim dst with LINK (refused atomically if it exists).
        try:
            self._link_verified(inside_src, inside_dst)
        except BaseException as exc:
            if getattr(exc, "code_name", "") in _NO_LINK_CODES:
                raise AtomicRenameUnsupported("%s: the server has no hard links (LINK)" % where) from None
            mapped = self.map_error(exc, where)
            if isinstance(mapped, TargetExists):
                mapped = TargetExists("cannot rename %s: %s already exists" % (self._url(src), self._url(dst)))
            raise mapped from None
        self._call_verified(where, self._live.unlink, (inside_src,), lambda: not self._exists(inside_src))

    def _link_verified(self, inside_src: str, inside_dst: str) -> None:
        """LINK src to dst; a reply nfs-rs calls UNCERTAIN is verified, as it asks (VerifyThenResume).

        Measured after a ganesha restart: the LINK of the next run's object came back UNCERTAIN. If
        dst is now the same file as src, the LINK happened; if dst is absent, it did not: try again;
        if dst is another file, the name is taken.
        """

        def linked() -> bool:
            try:
                dst_id = _retrying(self._live.stat, inside_dst, _idempotent=True).fileid
            except nfs_rs.NfsError:
                return False  # dst absent (or unreadable): the LINK did not happen
            if dst_id != _retrying(self._live.stat, inside_src, _idempotent=True).fileid:
                raise TargetExists("%s already exists" % inside_dst)
            return True

        _retrying(self._live.link, inside_src, inside_dst, _done=linked)

    def free_space(self) -> Optional[int]:
        return self._call_idempotent(self.describe(), self._live.fs_stat).available_bytes

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
