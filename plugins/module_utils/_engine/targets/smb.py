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
import functools
import importlib.metadata
import inspect
import itertools
import os
import posixpath
import socket
import stat as stat_module
import struct
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Set, Tuple, Union

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    BackupError,
    ConfigError,
    TargetAuthError,
    TargetError,
    TargetExists,
    TargetFull,
    TargetInUse,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import smb_dirs
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import (
    UPLOAD_SUFFIX,
    Entry,
    ReadHandle,
    Target,
    Upload,
    WriteHandle,
    clean_relpath,
)

try:
    import smbclient
    from cryptography.hazmat.primitives import cmac
    from cryptography.hazmat.primitives.ciphers import aead, algorithms
    from smbclient import _pool as smb_pool
    from smbprotocol.connection import Ciphers, Commands, Connection, Dialects, Request, SigningAlgorithms
    from smbprotocol.exceptions import SMBAuthenticationError, SMBException, SMBOSError, SMBResponseException
    from smbprotocol.file_info import FileAttributes
    from smbprotocol.header import NtStatus, SMB2HeaderRequest
    from smbprotocol.open import CreateDisposition, CreateOptions, DirectoryAccessMask, FilePipePrinterAccessMask, ShareAccess, SMB2WriteRequest

    _SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
    HAS_SMBPROTOCOL = True
except ImportError:  # reported by SmbTarget() so modules can fail with a clear message
    HAS_SMBPROTOCOL = False

# The smbprotocol releases the fast paths below were tested with (requirements.txt's floor 1.16.1 and the
# CI pin 1.17.0): outside this range, or when a capability check fails, the generic smbprotocol calls are used.
# The fast paths use smbprotocol internals, so a new minor release is let in only once it has been tested.
SMBPROTOCOL_FAST_PATHS = ((1, 16, 1), (1, 18, 0))


@functools.lru_cache(maxsize=1)
def _smbprotocol_version() -> Tuple[int, ...]:
    try:
        return tuple(int(part) for part in importlib.metadata.version("smbprotocol").split(".")[:3])
    except (importlib.metadata.PackageNotFoundError, ValueError):  # absent, or not plain numbers (1.18.0rc1)
        return ()


def fast_paths_allowed() -> bool:
    """Whether the installed smbprotocol is one the hand-built SMB2 frames were tested with."""
    low, high = SMBPROTOCOL_FAST_PATHS
    return HAS_SMBPROTOCOL and low <= _smbprotocol_version() < high


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


def _status_of(exc: Optional[BaseException]) -> Optional[int]:
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


# SMB2 wire layouts used by the write fast path ([MS-SMB2] 2.2.1.2, 2.2.21, 2.2.41).
_SMB2_HEADER = struct.Struct("<4sHHHHHHIIQIIQ16s")  # sync request header, 64 bytes
_SMB2_WRITE = struct.Struct("<HHIQ16sIIHHI")  # WRITE request up to its Buffer, 48 bytes
_SMB2_TRANSFORM = struct.Struct("<4s16s16sIHHQ")  # transform header, 52 bytes
_FRAME_HEAD = 4 + 64 + 48  # Direct TCP length + header + WRITE fixed part, then the payload
_SMB2_WRITE_COMMAND = 9
_FLAG_SIGNED = 0x00000008
_FLAG_RELATED = 0x00000004
_FLAG_DFS = 0x10000000


class _Seal:
    """Signing and SMB3 encryption of messages built by hand, as the session requires them.

    ``sign(message, message_id)`` is None where the session does not sign; ``wrap(message)`` gives
    the parts to send (Direct TCP length, then the transform header and the ciphertext when the
    session is encrypted, else the message). ``size`` bounds one (compound) message; ``wrap`` of a
    larger one allocates.
    """

    def __init__(self, connection, session, tree, size: int):
        self._connection, self._session = connection, session
        self.sign = self._signer()
        self.cipher: Optional[Union[aead.AESGCM, aead.AESCCM]] = None
        self._nonce_size = 0
        self._sealed = bytearray(0)
        self._transform = bytearray(4 + 52)
        self._prefix = bytearray(4)
        if session.encrypt_data or tree.encrypt_data:
            self._setup_encryption(size)

    def _signer(self):
        session, connection = self._session, self._connection
        if not (session.signing_required and session.signing_key):
            return None
        key = session.signing_key
        algorithm = connection.signing_algorithm_id if connection.dialect >= Dialects.SMB_3_1_1 else None
        if algorithm is None or algorithm == SigningAlgorithms.AES_CMAC:
            def cmac_signature(message, message_id):
                mac = cmac.CMAC(algorithms.AES(key))
                mac.update(message)
                return mac.finalize()
            return cmac_signature
        if algorithm == SigningAlgorithms.AES_GMAC:
            gmac = aead.AESGCM(key)

            def gmac_signature(message, message_id):
                return gmac.encrypt(message_id.to_bytes(8, "little") + b"\x00\x00\x00\x00", b"", message)
            return gmac_signature
        raise _NotCovered("signing algorithm %r" % (algorithm,))

    def _setup_encryption(self, size: int) -> None:
        connection = self._connection
        cipher_id = connection.cipher_id if connection.dialect >= Dialects.SMB_3_1_1 else Ciphers.AES_128_CCM
        if cipher_id in (Ciphers.AES_128_GCM, Ciphers.AES_256_GCM):
            self.cipher, self._nonce_size = aead.AESGCM(self._session.encryption_key), 12
        elif cipher_id in (Ciphers.AES_128_CCM, Ciphers.AES_256_CCM):
            self.cipher, self._nonce_size = aead.AESCCM(self._session.encryption_key), 11
        else:
            raise _NotCovered("cipher %r" % (cipher_id,))
        if not hasattr(self.cipher, "encrypt_into"):  # cryptography < 44 (the newest for Python 3.9.0/3.9.1 is 43)
            raise _NotCovered("cryptography without AEAD encrypt_into")
        self._sealed = bytearray(size + 16)

    def wrap(self, message: memoryview) -> List[memoryview]:
        """The parts to send for ``message`` (valid until the next call)."""
        size = len(message)
        if self.cipher is None:
            struct.pack_into(">I", self._prefix, 0, size)
            return [memoryview(self._prefix), message]
        nonce = os.urandom(self._nonce_size)
        transform = self._transform
        struct.pack_into(">I", transform, 0, 52 + size)
        _SMB2_TRANSFORM.pack_into(transform, 4, b"\xfdSMB", bytes(16), nonce.ljust(16, b"\x00"), size, 0, 1,
                                  self._session.session_id)
        if len(self._sealed) < size + 16:
            self._sealed = bytearray(size + 16)
        sealed = memoryview(self._sealed)[:size + 16]
        self.cipher.encrypt_into(nonce, message, bytes(transform[24:56]), sealed)
        transform[8:24] = sealed[size:]
        return [memoryview(transform), sealed[:size]]

    def send(self, parts: List[memoryview]) -> None:
        connection = self._connection
        connection._check_worker_running()  # pylint: disable=protected-access
        transport = connection.transport
        with transport._sock_lock:  # pylint: disable=protected-access
            _send_all(transport._sock, parts)  # pylint: disable=protected-access


class _FastWrites:
    """SMB2 WRITE requests built in reused buffers and sent with one scatter-gather call.

    smbprotocol's generic send path copies every payload about ten times (Structure.pack builds
    bytes by concatenation, signing slices the whole message twice, the transform header and the
    Direct TCP prefix concatenate again, partial socket sends slice the rest); with fresh 1 MiB
    allocations each time that was most of this writer's CPU (benchmarks/results/smb-profile.md).
    Here the payload is copied once into the frame (and encrypted once into a second buffer); the
    wire format, the credit and message-id bookkeeping (under smbprotocol's sequence lock) and the
    response handling (smbprotocol's receiver thread and Open._write_response) stay smbprotocol's.
    ``usable()`` is False for anything this does not cover; the writer then uses Open.write().
    """

    def __init__(self, raw_open, chunk: int):
        self._open = raw_open
        self._connection = raw_open.connection
        self._session = raw_open.tree_connect.session
        self._tree = raw_open.tree_connect
        self.frame = bytearray(_FRAME_HEAD + chunk)
        self._seal = _Seal(self._connection, self._session, self._tree, 64 + 48 + chunk)
        self._sign = self._seal.sign

    @staticmethod
    def usable(raw_open) -> bool:
        connection = getattr(raw_open, "connection", None)
        transport = getattr(connection, "transport", None)
        file_id = getattr(raw_open, "file_id", None)
        return (fast_paths_allowed() and connection is not None and hasattr(connection, "sequence_lock")
                and hasattr(connection, "outstanding_requests") and hasattr(transport, "_sock")
                and hasattr(transport, "_sock_lock") and hasattr(raw_open, "_write_response")
                and isinstance(file_id, bytes) and len(file_id) == 16
                and connection.dialect >= Dialects.SMB_3_0_0)

    def send(self, length: int, offset: int):
        """Send frame[_FRAME_HEAD:_FRAME_HEAD + length] as a WRITE at ``offset``; return its Request."""
        connection, session = self._connection, self._session
        charge = (max(length, 1) - 1) // 65536 + 1
        with connection.sequence_lock:
            window = connection.sequence_window
            if charge > window["high"] - window["low"]:
                raise TargetError("SMB write needs %d credits but only %d are granted"
                                  % (charge, window["high"] - window["low"]))
            message_id = window["low"]
            window["low"] += charge
        flags = _FLAG_DFS if self._tree.is_dfs_share else 0
        if self._sign is not None:
            flags |= _FLAG_SIGNED
        frame = self.frame
        _SMB2_HEADER.pack_into(frame, 4, b"\xfeSMB", 64, charge, 0, 0, _SMB2_WRITE_COMMAND, charge, flags, 0,
                               message_id, 0, self._tree.tree_connect_id, session.session_id, bytes(16))
        _SMB2_WRITE.pack_into(frame, 68, 49, 64 + 48, length, offset, self._open.file_id, 0, 0, 0, 0, 0)
        message = memoryview(frame)[4:_FRAME_HEAD + length]
        if self._sign is not None:
            frame[4 + 48:4 + 64] = self._sign(message, message_id)

        # Registered before sending: the receiver thread may see the response at once.
        header = SMB2HeaderRequest()
        header["credit_charge"] = charge
        header["command"] = Commands.SMB2_WRITE
        header["credit_request"] = charge
        header["message_id"] = message_id
        header["tree_id"] = self._tree.tree_connect_id
        header["session_id"] = session.session_id
        request = Request(header, SMB2WriteRequest, connection, session_id=session.session_id)
        connection.outstanding_requests[message_id] = request

        self._seal.send(self._seal.wrap(message))
        return request


class _NotCovered(Exception):
    """The fast write path does not handle this connection; Open.write() is used instead."""


def _send_all(sock, parts) -> None:
    while parts:
        sent = sock.sendmsg(parts)
        while sent:
            if sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            else:
                parts[0] = parts[0][sent:]
                sent = 0


class _SmbWriter(WriteHandle):
    """Pipelined writer: several WRITE requests in flight, FLUSH + CLOSE on close (durable)."""

    def __init__(self, target: "SmbTarget", raw, where: str):
        self._target = target
        self._raw = raw
        self._open = raw.fd
        self._connection = raw.fd.connection
        self._where = where
        self._offset = 0
        self._pending: Deque[Tuple[Any, Any, int]] = collections.deque()  # (request, receive_function, length)
        # A request may not cost more credits (64 KiB each) than the server granted: half the window.
        credit_bytes = max(1, self._credits_available() // 2) * 65536
        self._chunk = max(64 * 1024, min(WRITE_CHUNK, self._connection.max_write_size, credit_bytes))
        self._fast = None
        if _FastWrites.usable(self._open):
            try:
                self._fast = _FastWrites(self._open, self._chunk)
            except _NotCovered:
                self._fast = None
        # Data waiting for a whole chunk: inside the fast path's frame, else a bytearray.
        self._buffer = memoryview(self._fast.frame)[_FRAME_HEAD:] if self._fast else memoryview(bytearray(self._chunk))
        self._filled = 0
        self.closed = False

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed file")
        view = memoryview(data).cast("B")
        try:
            while view:
                take = min(len(view), self._chunk - self._filled)
                self._buffer[self._filled:self._filled + take] = view[:take]
                self._filled += take
                view = view[take:]
                if self._filled == self._chunk:
                    self._send_buffer()
        except BaseException as exc:
            self.abort()
            raise self._target.map_error(exc, self._where) from None
        return len(data)

    def _credits_available(self) -> int:
        window = self._connection.sequence_window
        return window["high"] - window["low"]

    def _send_buffer(self) -> None:
        length = self._filled
        charge = (max(length, 1) - 1) // 65536 + 1
        # Keep at most WRITES_IN_FLIGHT outstanding and never ask for more credits than we hold.
        while self._pending and (len(self._pending) >= WRITES_IN_FLIGHT or self._credits_available() < charge):
            self._receive_oldest()
        if self._fast is not None:
            sent = self._fast.send(length, self._offset)
            receive = self._open._write_response  # pylint: disable=protected-access
        else:
            request, receive = self._open.write(bytes(self._buffer[:length]), self._offset, send=False)
            session = self._open.tree_connect.session
            sent = self._connection.send(request, session.session_id, self._open.tree_connect.tree_connect_id)
        self._pending.append((sent, receive, length))
        self._offset += length
        self._filled = 0

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
            if self._filled:
                self._send_buffer()
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
        self._filled = 0
        while self._pending:
            try:
                self._receive_oldest()
            except Exception:  # noqa: BLE001 - the first error is already being reported
                pass
        try:
            self._raw.close()
        except Exception:  # noqa: BLE001
            pass


class _SmbReader(ReadHandle):
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


# -- many small files: pipelined related compounds (SmbTarget.put_files) ----------------------------

# Tested with smbprotocol 1.17.0 against Samba 4.17 (Debian 12). Request bodies are packed here
# (_Packed); headers, credits, signing, encryption and the receiver thread stay smbprotocol's
# (Connection.send_compound / receive). usable() checks that API; the first upload of each target goes
# alone, as a behavioural probe, and a server or library that does not follow the related chain turns
# the target to the generic Target.put_files for good.
PUT_FILES_IN_FLIGHT = 32
PUT_BYTES_IN_FLIGHT = 16 * 1024 * 1024
PUT_CREDITS_WANTED = 512  # asked of the server (ECHO with a credit request) when it granted fewer
_CREDIT_RESERVE = 8  # credits the pipeline leaves to requests sent beside it (mkdir, remove)
_CHAIN_FILE_ID = b"\xff" * 16  # [MS-SMB2] 3.2.4.1.4: the file the previous CREATE of the chain opened
_CHAIN_REFUSED = ("STATUS_INVALID_PARAMETER", "STATUS_FILE_CLOSED", "STATUS_INVALID_HANDLE",
                  "STATUS_NOT_SUPPORTED", "STATUS_INVALID_DEVICE_REQUEST")


class _NoChain(Exception):
    """The server did not handle a related compound as one file's chain: put_files falls back."""


class _Field:
    """What smbprotocol's credit charge reads of a WRITE: message['length'].get_value()."""

    __slots__ = ("value",)

    def __init__(self, value: int):
        self.value = value

    def get_value(self) -> int:
        return self.value


class _Packed:
    """An SMB2 request body packed once with struct, for Connection.send_compound.

    smbprotocol's Structure classes cost ~100 us per message to build and pack (most of put_files'
    CPU, profiled); send_compound only needs COMMAND, len(), pack() and, for a WRITE, the length.
    """

    __slots__ = ("COMMAND", "body", "length")

    def __init__(self, command: int, body: bytes, length: int = 0):
        self.COMMAND = command
        self.body = body
        self.length = length

    def __len__(self) -> int:
        return len(self.body)

    def pack(self) -> bytes:
        return self.body

    def __getitem__(self, key: str) -> _Field:
        return _Field(self.length if key == "length" else 0)


# [MS-SMB2] 2.2.13 CREATE, 2.2.17 FLUSH / 2.2.15 CLOSE, 2.2.39 SET_INFO request bodies (up to their buffers).
_SMB2_CREATE = struct.Struct("<HBBIQQIIIIIHHII")
_SMB2_FLUSH_CLOSE = struct.Struct("<HHI16s")
_SMB2_SET_INFO = struct.Struct("<HBBIHHI16s")
_CLOSE_POSTQUERY = 0x0001
_IMPERSONATION = 2  # ImpersonationLevel.Impersonation


def _create(name: bytes, access: int, share: int, disposition: int, options: int) -> _Packed:
    body = _SMB2_CREATE.pack(57, 0, 0, _IMPERSONATION, 0, 0, access, FileAttributes.FILE_ATTRIBUTE_NORMAL, share,
                             disposition, options, 64 + 56, len(name), 0, 0)
    return _Packed(Commands.SMB2_CREATE, body + (name or b"\x00"))


def _write(data: bytes, offset: int) -> _Packed:
    body = _SMB2_WRITE.pack(49, 64 + 48, len(data), offset, _CHAIN_FILE_ID, 0, 0, 0, 0, 0)
    return _Packed(Commands.SMB2_WRITE, body + data, len(data))


class _HeaderView:
    """The fields smbprotocol reads of a registered request's header (command, message_id, reserved)."""

    __slots__ = ("command", "message_id")

    def __init__(self, command: int, message_id: int):
        self.command = command
        self.message_id = message_id

    def __getitem__(self, key: str) -> _Field:
        return _Field(self.command if key == "command" else self.message_id if key == "message_id" else 0)


def _close(file_id: bytes, flags: int = 0) -> _Packed:
    return _Packed(Commands.SMB2_CLOSE, _SMB2_FLUSH_CLOSE.pack(24, flags, 0, file_id))


class _Flight:
    """One upload in flight: its phase ('write', 'rename' or 'remove') and its compound's requests."""

    __slots__ = ("upload", "partial", "phase", "requests", "retried", "file_id")

    def __init__(self, upload: Upload):
        self.upload = upload
        self.partial = upload.remote + UPLOAD_SUFFIX
        self.phase = "write"
        self.requests: List[Any] = []  # smbprotocol Requests of the compound in flight
        self.retried = False
        self.file_id = b""  # of the partial, held open from the write to the rename


class _CompoundPuts:
    """SmbTarget.put_files: each file is two compounds (five requests), many files in flight.

    1. related: CREATE ``x.partial`` (overwrite, write + delete access, others may only read) +
       WRITE(s) + FLUSH (durable); the handle stays open;
    2. only once 1 all succeeded and the server wrote every byte: SET_INFO FileRenameInformation on
       that handle + CLOSE with post-query (the stored size, checked once more). Not related: the
       CLOSE runs whatever the rename did. After a refused no-replace rename, CREATE (delete on
       close) + CLOSE removes the partial; after a failed write, the handle is closed and the
       partial removed.
    Requests go through Connection.send_compound: signing and encryption stay smbprotocol's. In
    flight: at most PUT_FILES_IN_FLIGHT files and PUT_BYTES_IN_FLIGHT bytes (one larger file alone),
    and never more credits than the server granted (minus a reserve).
    """

    def __init__(self, target: "SmbTarget"):
        self._target = target
        tree, head = smb_pool.get_smb_tree(target._share_unc(), **target._kwargs())
        self._tree, self._head = tree, head  # head: 'server\\share' on a DFS share, else ''
        self._connection = tree.session.connection
        if not isinstance(getattr(self._connection, "sequence_window", None), dict):
            raise _NoChain("no credit window")
        self._sid, self._tid = tree.session.session_id, tree.tree_connect_id
        self._max_write = max(64 * 1024, min(self._connection.max_write_size, 8 * 1024 * 1024))
        try:  # frames built here; else smbprotocol's send_compound (same wire, ~100 us more a message)
            self._seal: Optional[_Seal] = _Seal(self._connection, tree.session, tree, 2 * 1024 * 1024)
        except _NotCovered:
            self._seal = None
        self._flags = _FLAG_DFS if tree.is_dfs_share else 0
        if self._seal is not None and self._seal.cipher is not None:
            # [MS-SMB2] 3.2.4.1.1: an encrypted message is not signed (the transform authenticates it)
            self._seal.sign = None
        if self._seal is not None and self._seal.sign is not None:
            self._flags |= _FLAG_SIGNED
        self._flights: Deque[_Flight] = collections.deque()
        self._done: Deque[Tuple[Upload, Optional[TargetExists]]] = collections.deque()
        self._bytes = 0
        self._made: Set[str] = set()
        self._orphans: List[str] = []
        self.max_files = 0  # the most files and bytes seen in flight (tests)
        self.max_bytes = 0

    @staticmethod
    def usable() -> bool:
        if not fast_paths_allowed():
            return False
        try:
            return ("related" in inspect.signature(Connection.send_compound).parameters
                    and "resolve_symlinks" in inspect.signature(Connection.receive).parameters
                    and callable(getattr(Connection, "_calculate_credit_charge", None)))
        except (AttributeError, TypeError, ValueError):
            return False

    def run(self, uploads: Iterable[Upload]) -> Iterator[Tuple[Upload, Optional[TargetExists]]]:
        source = iter(uploads)
        held: Optional[Upload] = None
        exhausted = False
        rest: List[Upload] = []  # set when the server refuses the chain: these go the generic way
        try:
            self._ask_credits()
            while True:
                while not exhausted and held is None and len(self._flights) < self._window():
                    held = next(source, None)
                    exhausted = held is None
                    if held is not None and (not self._flights or self._bytes + len(held.data) <= PUT_BYTES_IN_FLIGHT):
                        self._admit(held)
                        held = None
                if not self._flights:
                    if held is None:  # exhausted, and every result is out
                        return
                    self._admit(held)
                    held = None
                self._settle(self._flights.popleft())
                while self._done:
                    yield self._done.popleft()
        except _NoChain as exc:  # the loop ends only here, by return, or by an error
            rest = [exc.args[0]] + ([held] if held is not None else [])
        except BaseException as exc:
            self._abandon()
            raise self._target.map_error(exc, self._target._url("")) from None
        self._target._put_mode = "generic"
        yield from Target.put_files(self._target, itertools.chain(rest, source))

    def _window(self) -> int:
        return PUT_FILES_IN_FLIGHT if self._target._put_mode == "compound" else 1

    def _admit(self, upload: Upload) -> None:
        self._bytes += len(upload.data)
        self.max_bytes = max(self.max_bytes, self._bytes)
        self._send_write(_Flight(upload))

    def _finish(self, flight: _Flight, exists: Optional[TargetExists]) -> None:
        self._bytes -= len(flight.upload.data)
        self._done.append((flight.upload, exists))

    # -- sending ------------------------------------------------------------------------------------

    def _available(self) -> int:
        window = self._connection.sequence_window
        return window["high"] - window["low"]

    def _ask_credits(self) -> None:
        """Ask the server for a wider credit window once, if it granted less than we want (one ECHO)."""
        missing = PUT_CREDITS_WANTED - self._available()
        if missing > PUT_CREDITS_WANTED // 2:
            self._connection.echo(sid=self._sid, timeout=self._target.timeout, credit_request=missing)

    def _charge(self, message: _Packed) -> int:
        if message.COMMAND == Commands.SMB2_WRITE and self._connection.supports_multi_credit:
            return (max(message.length, 1) - 1) // 65536 + 1
        return 1

    def _send(self, flight: _Flight, phase: str, messages: List[_Packed], related: bool = True) -> None:
        need = sum(self._charge(message) for message in messages) + _CREDIT_RESERVE
        for older in self._flights:  # credits come back with responses: wait for the oldest ones
            if self._available() >= need:
                break
            for request in older.requests:
                request.response_event.wait()
        if self._available() < need:
            raise TargetError("%s: one file needs %d SMB credits, the server granted %d"
                              % (self._target._url(flight.partial), need, self._available()))
        if self._seal is not None:
            flight.requests = self._send_chain(messages, related)
        else:
            flight.requests = self._connection.send_compound(messages, self._sid, self._tid, related=related)
        flight.phase = phase
        self._flights.append(flight)
        self.max_files = max(self.max_files, len(self._flights))

    def _send_chain(self, messages: List[_Packed], related: bool) -> List[Any]:
        """One related compound framed, signed and sealed here, its requests registered with smbprotocol
        (whose receiver thread matches the responses). Credits were checked by ``_send``."""
        connection, seal = self._connection, self._seal
        if seal is None:
            raise AssertionError("_send_chain without a seal")
        charges = [self._charge(message) for message in messages]
        with connection.sequence_lock:
            window = connection.sequence_window
            message_id = window["low"]
            window["low"] += sum(charges)
        frame = bytearray()
        requests = []
        for index, (message, charge) in enumerate(zip(messages, charges)):
            start = len(frame)
            last = index == len(messages) - 1
            size = 64 + len(message.body)
            padding = 0 if last else -size % 8  # each message of a compound starts on 8 bytes
            flags = self._flags | (_FLAG_RELATED if index and related else 0)
            frame += _SMB2_HEADER.pack(b"\xfeSMB", 64, charge, 0, 0, message.COMMAND, charge, flags,
                                       0 if last else size + padding, message_id, 0, self._tid, self._sid, bytes(16))
            frame += message.body
            frame += bytes(padding)
            if seal.sign is not None:  # over the message and its padding, as smbprotocol signs
                frame[start + 48:start + 64] = seal.sign(bytes(frame[start:]), message_id)
            # Registered before sending: the receiver thread may see the response at once.
            request = Request(_HeaderView(message.COMMAND, message_id), None, connection, session_id=self._sid)
            connection.outstanding_requests[message_id] = request
            requests.append(request)
            message_id += charge
        seal.send(seal.wrap(memoryview(frame)))
        return requests

    def _name(self, relpath: str) -> bytes:
        inside = self._target._inside(relpath).replace("/", "\\")
        return (self._head + "\\" + inside if self._head else inside).encode("utf-16-le")

    def _send_write(self, flight: _Flight) -> None:
        access = (FilePipePrinterAccessMask.FILE_WRITE_DATA | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
                  | FilePipePrinterAccessMask.DELETE)
        messages = [_create(self._name(flight.partial), access, ShareAccess.FILE_SHARE_READ,
                            CreateDisposition.FILE_OVERWRITE_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)]
        data, step = flight.upload.data, self._max_write
        for offset in range(0, len(data), step):
            messages.append(_write(data if len(data) <= step else data[offset:offset + step], offset))
        # FLUSH, not WRITE_THROUGH: Samba runs a FLUSH's fsync in its thread pool while the other files
        # go on, but a write-through WRITE's inline (measured: 1.2 s against 1.6 s for 1,000 files).
        messages.append(_Packed(Commands.SMB2_FLUSH, _SMB2_FLUSH_CLOSE.pack(24, 0, 0, _CHAIN_FILE_ID)))
        self._send(flight, "write", messages)

    def _send_rename(self, flight: _Flight) -> None:
        # FileRenameInformation ([MS-FSCC] 2.4.37.2): the share-relative new name, like smbclient.rename
        name = self._target._inside(flight.upload.remote).replace("/", "\\").encode("utf-16-le")
        info = struct.pack("<B7xQI", 1 if flight.upload.replace else 0, 0, len(name)) + name
        body = _SMB2_SET_INFO.pack(33, 1, 10, len(info), 64 + 32, 0, 0, flight.file_id)
        set_info = _Packed(Commands.SMB2_SET_INFO, body + info)
        self._send(flight, "rename", [set_info, _close(flight.file_id, _CLOSE_POSTQUERY)], related=False)

    def _send_remove(self, flight: _Flight) -> None:
        create = _create(self._name(flight.partial), FilePipePrinterAccessMask.DELETE, _SHARE_ALL,
                         CreateDisposition.FILE_OPEN,
                         CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_DELETE_ON_CLOSE)
        self._send(flight, "remove", [create, _close(_CHAIN_FILE_ID)])

    # -- receiving ----------------------------------------------------------------------------------

    def _receive(self, flight: _Flight) -> Tuple[List[bytes], List[Optional[BaseException]]]:
        """Every response body of the flight's compound (all are received, whatever fails), and errors."""
        bodies: List[bytes] = []
        errors: List[Optional[BaseException]] = []
        requests, flight.requests = flight.requests, []
        for request in requests:
            try:
                bodies.append(self._connection.receive(request, resolve_symlinks=False)["data"].get_value())
                errors.append(None)
            except SMBResponseException as exc:
                bodies.append(b"")
                errors.append(exc)
        return bodies, errors

    def _close_leftover(self, file_id: bytes) -> None:
        try:
            self._connection.receive(self._connection.send(_close(file_id), self._sid, self._tid))
        except Exception:  # noqa: BLE001 - best effort: the first error is the one reported
            pass

    def _settle(self, flight: _Flight) -> None:
        if flight.phase == "write":
            self._settle_write(flight)
        elif flight.phase == "rename":
            self._settle_rename(flight)
        else:
            self._receive(flight)  # best effort, like Target._remove_quietly
            self._finish(flight, TargetExists("cannot rename %s: %s already exists" % (
                self._target._url(flight.partial), self._target._url(flight.upload.remote))))

    def _settle_write(self, flight: _Flight) -> None:
        bodies, errors = self._receive(flight)
        where = self._target._url(flight.partial)
        if errors[0] is not None:
            if _status_name(_status_of(errors[0])) == "STATUS_OBJECT_PATH_NOT_FOUND" and not flight.retried:
                flight.retried = True
                parent = posixpath.dirname(self._target._inside(flight.upload.remote))
                if parent not in self._made:
                    self._target._makedirs_inside(parent)
                    self._made.add(parent)
                self._send_write(flight)
                return
            raise self._target.map_error(errors[0], where)
        flight.file_id = bodies[0][64:80]  # CREATE response FileId: the handle stays open for the rename
        failed: Optional[BaseException] = next((error for error in errors[1:] if error is not None), None)
        if failed is None:
            written = sum(struct.unpack_from("<I", body, 4)[0] for body in bodies[1:-1])
            if written == len(flight.upload.data):
                self._target._put_mode = "compound"
                self._send_rename(flight)
                return
            failed = TargetError("%s: the server wrote %d of %d bytes" % (where, written, len(flight.upload.data)))
        self._close_leftover(flight.file_id)
        self._orphans.append(flight.partial)
        if self._target._put_mode is None and (isinstance(failed, TargetError)
                                               or _status_name(_status_of(failed)) in _CHAIN_REFUSED):
            self._remove_orphans()
            raise _NoChain(flight.upload)
        raise self._target.map_error(failed, where)

    def _settle_rename(self, flight: _Flight) -> None:
        bodies, errors = self._receive(flight)
        where = "%s -> %s" % (self._target._url(flight.partial), self._target._url(flight.upload.remote))
        renamed, closed = errors[0] is None, errors[1] is None
        if renamed and closed:
            stored = struct.unpack_from("<Q", bodies[1], 48)[0]  # CLOSE response EndofFile (post-query)
            if stored != len(flight.upload.data):  # the share mode let nobody else write: cannot happen
                raise TargetError("%s holds %d bytes after writing %d" % (self._target._url(flight.upload.remote),
                                                                          stored, len(flight.upload.data)))
            self._finish(flight, None)
            return
        if not closed:
            self._close_leftover(flight.file_id)
        if not renamed:
            if _status_name(_status_of(errors[0])) == "STATUS_OBJECT_NAME_COLLISION" and not flight.upload.replace:
                self._send_remove(flight)
                return
            self._orphans.append(flight.partial)
        raise self._target.map_error(errors[0] or errors[1] or TargetError("%s: failed" % where), where)

    # -- failure --------------------------------------------------------------------------------------

    def _abandon(self) -> None:
        """Settle every compound in flight, close what is open, remove the partials created (best effort)."""
        flights, self._flights = list(self._flights), collections.deque()
        for flight in flights:
            try:
                bodies, errors = self._receive(flight)
            except Exception:  # noqa: BLE001 - connection gone: the partials stay for prune
                continue
            if flight.phase == "write" and errors[0] is None:
                self._close_leftover(bodies[0][64:80])
                self._orphans.append(flight.partial)
            elif flight.phase == "rename":
                if errors[1] is not None:
                    self._close_leftover(flight.file_id)
                self._orphans.append(flight.partial)  # after a rename that went through: not found, ignored
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        orphans, self._orphans = self._orphans, []
        for relpath in orphans:
            self._target._remove_quietly(relpath)


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
        self._connections: Dict[str, Any] = {}  # private pool: never shared with other targets
        self._put_mode: Optional[str] = None  # put_files: None (first upload probes), 'compound' or 'generic'
        self._list_mode: Optional[str] = None  # listdir: None (decided at the first), 'fast' or 'generic'
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
        if status == "STATUS_SHARING_VIOLATION":
            return TargetInUse("%s is open by another client (%s)" % (where, status))
        if status == "STATUS_DELETE_PENDING":  # removed, but a reader still holds it open: gone once it closes
            return TargetInUse("%s is being removed while another client holds it open (%s)" % (where, status))
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
            # Share read, write and delete, as readers on NFS and local paths never stand in a writer's
            # way: the holder of a lock we are reading renames or removes it meanwhile.
            handle = smbclient.open_file(self._unc(relpath), mode="rb", share_access="rwd", **self._kwargs())
        except BaseException as exc:
            raise self.map_error(exc, where) from None
        return _SmbReader(self, handle, where)

    def check_writable(self, relpath: str) -> bool:
        # Opening the folder for the rights to add files and folders is checked by the server against the share
        # and the file system, and writes nothing; a refusal is STATUS_ACCESS_DENIED. Not FILE_DELETE_CHILD:
        # NTFS's usual "Modify" grant lacks it, and our removals use each file's own DELETE right instead.
        where = self._url(relpath)
        rights = (DirectoryAccessMask.FILE_ADD_FILE | DirectoryAccessMask.FILE_ADD_SUBDIRECTORY
                  | DirectoryAccessMask.FILE_LIST_DIRECTORY)
        try:
            with smbclient.open_file(self._unc(relpath), mode="rb", buffering=0, file_type="dir", desired_access=rights,
                                     share_access="rwd", **self._kwargs()):
                return True
        except BaseException as exc:
            raise self.map_error(exc, where) from None

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
        if self._list_mode is None:
            self._list_mode = "fast" if fast_paths_allowed() and smb_dirs.usable() else "generic"
        if self._list_mode == "fast":
            try:
                return [Entry(*item) for item in smb_dirs.scan(self._unc(relpath), self._kwargs())]
            except (smb_dirs.NotCovered, AttributeError, TypeError):  # a reply, a DFS link or internals it does not cover
                self._list_mode = "generic"  # smbprotocol's own calls from now on, starting with this folder
            except BaseException as exc:
                raise self.map_error(exc, where) from None
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
        """Create a share-relative directory and its missing parents (smbclient.makedirs hides the real error).

        The deepest folder is tried first and the walk goes up only while the parent is missing: a new
        folder under an existing one (a new day of session recordings) costs one round trip instead
        of two per level of the path.
        """
        parts = [part for part in inside.split("/") if part]
        depth = len(parts)
        while depth > 0 and self._mkdir_one("/".join(parts[:depth])) == "parent missing":
            depth -= 1
        if depth == 0 and parts:
            raise TargetNotFound("cannot create %s: its parent does not exist" % self._where_inside(parts[0]))
        for level in range(depth + 1, len(parts) + 1):
            current = "/".join(parts[:level])
            if self._mkdir_one(current) == "parent missing":  # removed meanwhile by someone else
                raise TargetNotFound("cannot create %s: its parent vanished" % self._where_inside(current))

    def _where_inside(self, current: str) -> str:
        return "smb://%s:%d/%s/%s" % (self.server, self.port, self.share, current)

    def _mkdir_one(self, current: str) -> str:
        """mkdir one share-relative folder: 'created', 'exists' (a directory) or 'parent missing'."""
        unc = self._share_unc() + "\\" + current.replace("/", "\\")
        where = self._where_inside(current)
        try:
            smbclient.mkdir(unc, **self._kwargs())
            return "created"
        except SMBOSError as exc:
            status = _status_name(exc.ntstatus)
            if status in ("STATUS_OBJECT_PATH_NOT_FOUND", "STATUS_OBJECT_NAME_NOT_FOUND"):
                return "parent missing"
            if status != "STATUS_OBJECT_NAME_COLLISION":
                raise self.map_error(exc, where) from None
            try:
                is_dir = stat_module.S_ISDIR(smbclient.stat(unc, **self._kwargs()).st_mode)
            except BaseException as stat_exc:
                raise self.map_error(stat_exc, where) from None
            if not is_dir:
                raise TargetExists("%s exists and is not a directory" % where) from None
            return "exists"
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
            if status == "STATUS_ACCESS_DENIED" and replace:
                # Samba refuses to rename over a file that any client holds open, whatever it shares.
                raise TargetInUse("cannot replace %s: another client holds it open, or user %s may not replace it (%s)"
                                  % (self._url(dst), self.username, status)) from None
            raise self.map_error(exc, where) from None
        except BaseException as exc:
            raise self.map_error(exc, where) from None

    def put_files(self, uploads: Iterable[Upload]) -> Iterator[Tuple[Upload, Optional[TargetExists]]]:
        """Target.put_files with many files in flight, two related compounds each (_CompoundPuts)."""
        puts = None
        if self._put_mode != "generic" and _CompoundPuts.usable():
            try:
                puts = _CompoundPuts(self)
            except _NoChain:
                self._put_mode = "generic"
            except BaseException as exc:
                raise self.map_error(exc, self._url("")) from None
        if puts is None:
            yield from Target.put_files(self, uploads)
        else:
            yield from puts.run(uploads)

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
