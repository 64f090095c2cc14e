# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SmbTarget.listdir's fast path: the QUERY_DIRECTORY responses parsed with ``struct``.

smbprotocol parses every directory entry through its generic Structure classes, ~150 us an entry:
3.3 s to list the 20,000 files of 10,000 snapshots on the lab. Parsed here, the same responses take
milliseconds. The directory is still opened by smbclient (DFS, sharing, errors stay its own) and the
requests go through smbprotocol's Connection (signing and encryption stay its own); only the reply's
buffer is read here, FILE_DIRECTORY_INFORMATION ([MS-FSCC] 2.4.10), and checked as it is read.
"""

from __future__ import annotations

import datetime
import inspect
import struct
from typing import Any, Iterator, Tuple

try:
    from smbclient._io import SMBDirectoryIO
    from smbprotocol.exceptions import NoMoreFiles, NoSuchFile, ObjectNameNotFound, ObjectPathNotFound, PathNotCovered
    from smbprotocol.file_info import FileInformationClass
    from smbprotocol.open import Open, QueryDirectoryFlags
except ImportError:  # SmbTarget reports a missing smbprotocol; this path is then never taken
    SMBDirectoryIO = None

# [MS-SMB2] 2.2.34 response: StructureSize, OutputBufferOffset (from the SMB2 header), OutputBufferLength
_RESPONSE = struct.Struct("<HHI")
_SMB2_HEADER_SIZE = 64
# [MS-FSCC] 2.4.10: NextEntryOffset, FileIndex, four FILETIMEs, EndOfFile, AllocationSize,
# FileAttributes, FileNameLength; then the UTF-16 name. Unsigned, as smbprotocol reads them.
_ENTRY = struct.Struct("<IIQQQQQQII")
_FILETIME_EPOCH = 116444736000000000
# smbprotocol turns a FILETIME outside datetime's years into datetime.max: the same here
_UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)
_MIN_MICROS = (datetime.datetime(1, 1, 1, tzinfo=_UTC) - _EPOCH) // datetime.timedelta(microseconds=1)
_MAX_MICROS = (datetime.datetime.max.replace(tzinfo=_UTC) - _EPOCH) // datetime.timedelta(microseconds=1)
_OUT_OF_RANGE = datetime.datetime.max.replace(tzinfo=_UTC).timestamp()
_ATTRIBUTE_DIRECTORY = 0x10
# Bytes asked for per response, in 64 KiB credits: up to 1 MiB (~5,000 entries) when the server's
# max transact size and the credits on hand allow, so a large snapshots/ folder is one round trip.
_CREDIT_BYTES = 64 * 1024
_MAX_CREDITS = 16


class NotCovered(Exception):
    """What the fast path does not handle: the caller lists the folder with smbprotocol's own calls."""


class MalformedListing(NotCovered):
    """A directory reply that does not parse."""


def usable() -> bool:
    """A behavioural check of what the fast path calls on smbprotocol (not only that the names exist)."""
    if SMBDirectoryIO is None:
        return False
    try:
        parameters = inspect.signature(Open.query_directory).parameters
    except (TypeError, ValueError):
        return False
    return {"send", "flags", "max_output"} <= set(parameters) and hasattr(FileInformationClass, "FILE_DIRECTORY_INFORMATION")


def scan(unc: str, kwargs: dict) -> Iterator[Tuple[str, bool, int, float]]:
    """(name, is_dir, size, mtime) of each entry of the directory ``unc``, '.' and '..' left out.

    ``mtime`` is computed as smbclient computes it (whole microseconds), so both paths give equal values.
    Raises MalformedListing on a reply that does not parse; smbprotocol's errors as they are.
    """
    with SMBDirectoryIO(unc, share_access="rwd", **kwargs) as directory:
        raw: Any = directory.fd
        connection = raw.connection
        session_id, tree_id = raw.tree_connect.session.session_id, raw.tree_connect.tree_connect_id
        flags = QueryDirectoryFlags.SMB2_RESTART_SCANS
        while True:
            query, dummy = raw.query_directory("*", FileInformationClass.FILE_DIRECTORY_INFORMATION, flags=flags,
                                               max_output=_output_size(connection), send=False)
            try:
                response = connection.receive(connection.send(query, session_id, tree_id))
            except (NoMoreFiles, NoSuchFile):  # [MS-SMB2] 3.3.5.18: both end an enumeration
                return
            except (PathNotCovered, ObjectNameNotFound, ObjectPathNotFound):
                # a DFS link met while enumerating: smbclient follows the referral, so it lists this one
                raise NotCovered("a DFS referral during the enumeration") from None
            flags = 0
            yield from _entries(response["data"].get_value())


def _output_size(connection: Any) -> int:
    if not connection.supports_multi_credit:  # a server without large MTU takes 64 KiB at most
        return _CREDIT_BYTES
    with connection.sequence_lock:
        on_hand = connection.sequence_window["high"] - connection.sequence_window["low"]
    credits = min(_MAX_CREDITS, on_hand // 2)  # half left for whatever else uses the connection meanwhile
    return max(1, min(credits, (connection.max_transact_size or _CREDIT_BYTES) // _CREDIT_BYTES)) * _CREDIT_BYTES


def _entries(body: bytes) -> Iterator[Tuple[str, bool, int, float]]:
    if len(body) < _RESPONSE.size:
        raise MalformedListing("a QUERY_DIRECTORY reply of %d bytes" % len(body))
    dummy, offset, length = _RESPONSE.unpack_from(body, 0)
    start = offset - _SMB2_HEADER_SIZE
    if length == 0:
        return
    if start < _RESPONSE.size or start + length > len(body):
        raise MalformedListing("a QUERY_DIRECTORY buffer outside its reply")
    buffer = memoryview(body)[start:start + length]
    position = 0
    while True:
        if position + _ENTRY.size > length:
            raise MalformedListing("a directory entry past the end of its buffer")
        following, dummy, dummy, dummy, written, dummy, size, dummy, attributes, name_length = _ENTRY.unpack_from(buffer, position)
        name_start = position + _ENTRY.size
        if name_length % 2 or name_start + name_length > length:
            raise MalformedListing("a directory entry's name past the end of its buffer")
        try:
            name = bytes(buffer[name_start:name_start + name_length]).decode("utf-16-le")
        except UnicodeDecodeError:
            raise MalformedListing("a directory entry's name is not UTF-16") from None
        if name not in (".", ".."):
            is_dir = bool(attributes & _ATTRIBUTE_DIRECTORY)
            micros = (written - _FILETIME_EPOCH) // 10
            mtime = micros / 10 ** 6 if _MIN_MICROS <= micros <= _MAX_MICROS else _OUT_OF_RANGE
            yield name, is_dir, 0 if is_dir else size, mtime
        if following == 0:
            return
        if following < _ENTRY.size or following % 8:
            raise MalformedListing("a directory entry's next offset %d is not valid" % following)
        position += following
