# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Target on an SMB 2/3 share through smbprotocol (no kernel mount).

Security: signing is always required; with ``encrypt`` (the default) the whole session is SMB3
encrypted and a server that cannot encrypt is refused. Each SmbTarget owns a private connection cache,
so two targets with different credentials never share a session through smbclient's global pool.
"""

from __future__ import annotations

import collections
import datetime
import posixpath
import socket
import stat as stat_module
from typing import List, Optional

from ansible_collections.segura.backup.plugins.module_utils.errors import (
    BackupError,
    ConfigError,
    TargetAuthError,
    TargetError,
    TargetExists,
    TargetFull,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils.targets.base import Entry, Target, clean_relpath

try:
    import smbclient
    from smbclient import _pool as smb_pool
    from smbprotocol.exceptions import SMBAuthenticationError, SMBException, SMBOSError, SMBResponseException
    from smbprotocol.header import NtStatus

    HAS_SMBPROTOCOL = True
except ImportError:  # reported by SmbTarget() so modules can fail with a clear message
    HAS_SMBPROTOCOL = False

# Bytes per WRITE request and how many may be in flight; bounded further by max_write_size and by
# the credits the server grants (Samba grants 64 x 64 KiB at first, more as the session is used).
WRITE_CHUNK = 1024 * 1024
WRITES_IN_FLIGHT = 8

_AUTH_STATUSES = (
    "STATUS_LOGON_FAILURE",
    "STATUS_WRONG_PASSWORD",
    "STATUS_PASSWORD_EXPIRED",
    "STATUS_ACCOUNT_DISABLED",
    "STATUS_ACCOUNT_LOCKED_OUT",
    "STATUS_ACCOUNT_RESTRICTION",
    "STATUS_PASSWORD_MUST_CHANGE",
)
_NOT_FOUND_STATUSES = (
    "STATUS_OBJECT_NAME_NOT_FOUND",
    "STATUS_OBJECT_PATH_NOT_FOUND",
    "STATUS_NO_SUCH_FILE",
    "STATUS_NOT_FOUND",
)
_FULL_STATUSES = ("STATUS_DISK_FULL", "STATUS_QUOTA_EXCEEDED")
_FILETIME_EPOCH = 116444736000000000  # 1601-01-01 -> 1970-01-01 in 100 ns units


# Statuses smbprotocol's NtStatus does not name.
_EXTRA_STATUS_NAMES = {0xC0000044: "STATUS_QUOTA_EXCEEDED", 0xC0000072: "STATUS_ACCOUNT_DISABLED", 0xC0000234: "STATUS_ACCOUNT_LOCKED_OUT"}


def _status_name(code: Optional[int]) -> str:
    if code is None:
        return ""
    if code in _EXTRA_STATUS_NAMES:
        return _EXTRA_STATUS_NAMES[code]
    for name, value in vars(NtStatus).items():
        if name.startswith("STATUS_") and value == code:
            return name
    return "NT status 0x%08x" % code


def _status_of(exc: BaseException) -> Optional[int]:
    if isinstance(exc, SMBOSError):
        return exc.ntstatus
    if isinstance(exc, SMBResponseException):
        return exc.status
    return None


def _epoch(value) -> float:
    """smbprotocol gives FILETIME either as datetime or as 100 ns ticks since 1601."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    return (int(value) - _FILETIME_EPOCH) / 1e7


class _SmbWriter:
    """Pipelined writer: several WRITE requests in flight, FLUSH + CLOSE on close (durable)."""

    def __init__(self, target: "SmbTarget", raw, where: str):
        self._target = target
        self._raw = raw
        self._open = raw.fd
        self._connection = raw.fd.connection
        self._where = where
        self._offset = 0
        self._buffer = bytearray()
        self._pending = collections.deque()  # (request, receive_function, length)
        # A request may not cost more credits (64 KiB each) than the server granted: half the window.
        credit_bytes = max(1, self._credits_available() // 2) * 65536
        self._chunk = max(64 * 1024, min(WRITE_CHUNK, self._connection.max_write_size, credit_bytes))
        self.closed = False

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed file")
        self._buffer += data
        try:
            while len(self._buffer) >= self._chunk:
                block = bytes(self._buffer[: self._chunk])
                del self._buffer[: self._chunk]
                self._send(block)
        except BaseException as exc:
            self.abort()
            raise self._target.map_error(exc, self._where) from None
        return len(data)

    def _credits_available(self) -> int:
        window = self._connection.sequence_window
        return window["high"] - window["low"]

    def _send(self, block: bytes) -> None:
        charge = (len(block) - 1) // 65536 + 1
        # Keep at most WRITES_IN_FLIGHT outstanding and never ask for more credits than we hold.
        while self._pending and (len(self._pending) >= WRITES_IN_FLIGHT or self._credits_available() < charge):
            self._receive_oldest()
        request, receive = self._open.write(block, self._offset, send=False)
        session = self._open.tree_connect.session
        sent = self._connection.send(request, session.session_id, self._open.tree_connect.tree_connect_id)
        self._pending.append((sent, receive, len(block)))
        self._offset += len(block)

    def _receive_oldest(self) -> None:
        sent, receive, length = self._pending.popleft()
        written = receive(sent)
        if written != length:
            raise TargetError("short write on %s: %d of %d bytes" % (self._where, written, length))

    def flush(self) -> None:
        pass  # data goes out in whole chunks; close() sends the rest and makes it durable

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._buffer:
                self._send(bytes(self._buffer))
                self._buffer = bytearray()
            while self._pending:
                self._receive_oldest()
            self._open.flush()
        except BaseException as exc:
            self.abort()
            raise self._target.map_error(exc, self._where) from None
        self.closed = True
        try:
            self._raw.close()
        except BaseException as exc:
            raise self._target.map_error(exc, self._where) from None

    def abort(self) -> None:
        """Drop unsent data, settle writes in flight, close the handle; errors are ignored."""
        if self.closed:
            return
        self.closed = True
        self._buffer = bytearray()
        while self._pending:
            try:
                self._receive_oldest()
            except Exception:  # noqa: BLE001 - the first error is already being reported
                pass
        try:
            self._raw.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class _SmbReader:
    """Read handle that maps protocol errors."""

    def __init__(self, target: "SmbTarget", handle, where: str):
        self._target = target
        self._handle = handle
        self._where = where

    def read(self, size: int = -1) -> bytes:
        try:
            return self._handle.read(size)
        except BaseException as exc:
            raise self._target.map_error(exc, self._where) from None

    def readinto(self, buffer) -> int:
        try:
            return self._handle.readinto(buffer)
        except BaseException as exc:
            raise self._target.map_error(exc, self._where) from None

    def close(self) -> None:
        try:
            self._handle.close()
        except Exception:  # noqa: BLE001 - closing a read handle cannot lose data
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class SmbTarget(Target):
    """A directory on an SMB share: ``\\\\server\\share\\path``."""

    kind = "smb"

    def __init__(
        self,
        server: str,
        share: str,
        username: str,
        password: str,
        path: str = "",
        domain: Optional[str] = None,
        port: int = 445,
        encrypt: bool = True,
        timeout: int = 30,
    ):
        if not HAS_SMBPROTOCOL:
            raise ConfigError("the Python library 'smbprotocol' is required for SMB targets")
        share = (share or "").strip("\\/")
        if not server or not share or "\\" in share or "/" in share:
            raise ConfigError("an SMB target needs a server and a share name without slashes (got share %r)" % (share,))
        self.server = server
        self.share = share
        self.port = int(port)
        self.encrypt = bool(encrypt)
        self.timeout = timeout
        self.username = "%s\\%s" % (domain, username) if domain else username
        self.base = clean_relpath((path or "").replace("\\", "/"))
        self._password = password
        self._connections = {}  # private pool: never shared with other targets
        self._connect()

    def __repr__(self):
        return "SmbTarget(%s, user=%s, encrypt=%s)" % (self.describe(), self.username, self.encrypt)

    def describe(self) -> str:
        root = "smb://%s:%d/%s" % (self.server, self.port, self.share)
        return root + ("/" + self.base if self.base else "")

    # -- connection and error mapping ---------------------------------------------------------------

    def _connect(self) -> None:
        where = "%s:%d" % (self.server, self.port)
        try:
            session = smb_pool.register_session(
                self.server,
                username=self.username,
                password=self._password,
                port=self.port,
                encrypt=self.encrypt,
                connection_timeout=self.timeout,
                connection_cache=self._connections,
                require_signing=True,
            )
        except BaseException as exc:
            self.close()
            raise self.map_error(exc, where) from None
        if self.encrypt and not session.encrypt_data:
            self.close()
            raise TargetError("the SMB server %s did not agree to encrypt the session (encrypt=true)" % where)
        # Fail now, with a clear message, if the share is missing or refused (the base path below it
        # may be missing: the first write creates it).
        try:
            smbclient.stat(self._share_unc(), **self._kwargs())
        except BaseException as exc:
            self.close()
            mapped = self.map_error(exc, self._share_unc())
            if isinstance(mapped, TargetNotFound):
                # smbclient reports a missing share as STATUS_NOT_FOUND after trying a DFS referral
                mapped = TargetNotFound("share %s not found on %s" % (self.share, where))
            raise mapped from None

    def map_error(self, exc: BaseException, where: str) -> BaseException:
        """The engine error for a protocol error at ``where``; never contains the password."""
        if isinstance(exc, BackupError):
            return exc
        host = "%s:%d" % (self.server, self.port)
        status = _status_name(_status_of(exc))
        if status in _AUTH_STATUSES:
            return TargetAuthError("the SMB server %s refused the credentials for user %s (%s)" % (host, self.username, status))
        if status == "STATUS_BAD_NETWORK_NAME":
            return TargetNotFound("share %s not found on %s" % (self.share, host))
        if status in _NOT_FOUND_STATUSES:
            return TargetNotFound("%s does not exist" % where)
        if status == "STATUS_OBJECT_NAME_COLLISION":
            return TargetExists("%s already exists" % where)
        if status in _FULL_STATUSES:
            return TargetFull("no space left on %s (%s)" % (where, status))
        if status == "STATUS_ACCESS_DENIED":
            return TargetError("permission denied on %s for user %s" % (where, self.username))
        if status == "STATUS_DIRECTORY_NOT_EMPTY":
            return TargetError("directory %s is not empty" % where)
        if status:
            return TargetError("%s: %s" % (where, status))
        if isinstance(exc, SMBAuthenticationError):
            return TargetAuthError("the SMB server %s refused the credentials for user %s" % (host, self.username))
        if isinstance(exc, SMBException) and "encryption" in str(exc):
            return TargetError("the SMB server %s cannot encrypt (encrypt=true requires SMB 3 encryption): %s" % (host, exc))
        if isinstance(exc, (ValueError, OSError, socket.timeout, SMBException)):
            return TargetError("cannot use the SMB server %s: %s" % (host, exc))
        return exc

    def _kwargs(self) -> dict:
        return {
            "username": self.username,
            "password": self._password,
            "port": self.port,
            "encrypt": self.encrypt,
            "connection_timeout": self.timeout,
            "connection_cache": self._connections,
        }

    def _share_unc(self) -> str:
        return "\\\\%s\\%s" % (self.server, self.share)

    def _inside(self, relpath: str) -> str:
        """Share-relative POSIX path of a target-relative path."""
        return posixpath.join(self.base, clean_relpath(relpath)).strip("/") if self.base else clean_relpath(relpath)

    def _unc(self, relpath: str) -> str:
        inside = self._inside(relpath)
        return self._share_unc() + ("\\" + inside.replace("/", "\\") if inside else "")

    def _url(self, relpath: str) -> str:
        inside = self._inside(relpath)
        return "smb://%s:%d/%s%s" % (self.server, self.port, self.share, "/" + inside if inside else "")

    # -- Target -------------------------------------------------------------------------------------

    def open_write(self, relpath: str, exclusive: bool = False):
        where = self._url(relpath)
        mode = "xb" if exclusive else "wb"
        try:
            try:
                raw = smbclient.open_file(self._unc(relpath), mode=mode, buffering=0, **self._kwargs())
            except SMBOSError as exc:
                if _status_name(exc.ntstatus) != "STATUS_OBJECT_PATH_NOT_FOUND":
                    raise
                self._makedirs_inside(posixpath.dirname(self._inside(relpath)))
                raw = smbclient.open_file(self._unc(relpath), mode=mode, buffering=0, **self._kwargs())
        except BaseException as exc:
            raise self.map_error(exc, where) from None
        return _SmbWriter(self, raw, where)

    def open_read(self, relpath: str):
        where = self._url(relpath)
        try:
            handle = smbclient.open_file(self._unc(relpath), mode="rb", share_access="r", **self._kwargs())
        except BaseException as exc:
            raise self.map_error(exc, where) from None
        return _SmbReader(self, handle, where)

    def stat(self, relpath: str) -> Entry:
        where = self._url(relpath)
        try:
            result = smbclient.stat(self._unc(relpath), **self._kwargs())
        except BaseException as exc:
            raise self.map_error(exc, where) from None
        name = posixpath.basename(self._inside(relpath)) or self.share
        return Entry(name, stat_module.S_ISDIR(result.st_mode), result.st_size, result.st_mtime)

    def listdir(self, relpath: str) -> List[Entry]:
        where = self._url(relpath)
        entries = []
        try:
            # entry.smb_info only: entry.stat() would open a new connection on port 445.
            for item in smbclient.scandir(self._unc(relpath), **self._kwargs()):
                info = item.smb_info
                is_dir = bool(info.file_attributes & 0x10)  # FILE_ATTRIBUTE_DIRECTORY
                entries.append(Entry(item.name, is_dir, 0 if is_dir else info.end_of_file, _epoch(info.last_write_time)))
        except BaseException as exc:
            raise self.map_error(exc, where) from None
        return entries

    def makedirs(self, relpath: str) -> None:
        self._makedirs_inside(self._inside(relpath))

    def _makedirs_inside(self, inside: str) -> None:
        """Create share-relative directories one by one (smbclient.makedirs hides the real error)."""
        current = ""
        for part in inside.split("/"):
            if not part:
                continue
            current = posixpath.join(current, part) if current else part
            unc = self._share_unc() + "\\" + current.replace("/", "\\")
            where = "smb://%s:%d/%s/%s" % (self.server, self.port, self.share, current)
            try:
                smbclient.mkdir(unc, **self._kwargs())
            except SMBOSError as exc:
                if _status_name(exc.ntstatus) != "STATUS_OBJECT_NAME_COLLISION":
                    raise self.map_error(exc, where) from None
                try:
                    is_dir = stat_module.S_ISDIR(smbclient.stat(unc, **self._kwargs()).st_mode)
                except BaseException as stat_exc:
                    raise self.map_error(stat_exc, where) from None
                if not is_dir:
                    raise TargetExists("%s exists and is not a directory" % where) from None
            except BaseException as exc:
                raise self.map_error(exc, where) from None

    def remove(self, relpath: str) -> None:
        where = self._url(relpath)
        try:
            smbclient.remove(self._unc(relpath), **self._kwargs())
        except BaseException as exc:
            raise self.map_error(exc, where) from None

    def rmdir(self, relpath: str) -> None:
        where = self._url(relpath)
        if not self._inside(relpath) or not clean_relpath(relpath):
            raise ConfigError("refusing to remove the target root %s" % where)
        try:
            smbclient.rmdir(self._unc(relpath), **self._kwargs())
        except BaseException as exc:
            raise self.map_error(exc, where) from None

    def rename(self, src: str, dst: str, replace: bool = False) -> None:
        # SMB2 SET_INFO FileRenameInformation with ReplaceIfExists: atomic on the server either way.
        where = "%s -> %s" % (self._url(src), self._url(dst))
        operation = smbclient.replace if replace else smbclient.rename
        try:
            try:
                operation(self._unc(src), self._unc(dst), **self._kwargs())
            except SMBOSError as exc:
                if _status_name(exc.ntstatus) != "STATUS_OBJECT_PATH_NOT_FOUND" or not self.exists(src):
                    raise
                self._makedirs_inside(posixpath.dirname(self._inside(dst)))
                operation(self._unc(src), self._unc(dst), **self._kwargs())
        except SMBOSError as exc:
            status = _status_name(exc.ntstatus)
            if status == "STATUS_OBJECT_NAME_COLLISION":
                raise TargetExists("cannot rename %s: %s already exists" % (self._url(src), self._url(dst))) from None
            if status in _NOT_FOUND_STATUSES:
                raise TargetNotFound("%s does not exist" % self._url(src)) from None
            raise self.map_error(exc, where) from None
        except BaseException as exc:
            raise self.map_error(exc, where) from None

    def free_space(self) -> Optional[int]:
        where = self._url("")
        try:
            # FileFsFullSizeInformation: caller_available honours per-user quotas.
            return smbclient.stat_volume(self._share_unc(), **self._kwargs()).caller_available_size
        except BaseException as exc:
            raise self.map_error(exc, where) from None

    def close(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            try:
                connection.disconnect(close=True)
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
