# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see __init__.py): may change in any release.
"""Byte streams the engine passes around: one hashing reader, one counting writer, and the read side
of the io protocol for streams that implement only ``read``.

The hashing reader and counting writer are ``io`` objects, so ``read``, ``readinto`` and friends come
from the standard library.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Dict, Iterable, Iterator, Optional, Protocol


class ByteReader(Protocol):
    """What the engine reads from: anything with ``read(size) -> bytes`` (files, readers of members)."""

    def read(self, size: int = ..., /) -> bytes: ...


class ReadMixin:
    """For a stream that implements ``read(size)``: ``readinto`` and ``readable`` follow from it, as
    tarfile, zstandard and ``io.BufferedReader`` expect. (A mixin, not ``io.RawIOBase``: the streams
    using it keep their own ``close`` and ``closed``.)"""

    def read(self, size: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


def _read_into(source: Any, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``source`` once (readinto when it has one, else read)."""
    readinto = getattr(source, "readinto", None)
    if readinto is not None:
        return readinto(buffer) or 0
    data = source.read(len(buffer))
    buffer[:len(data)] = data
    return len(data)


class HashingReader(io.RawIOBase):
    """Read-through wrapper: counts and sha256-hashes every byte read from ``source``.

    ``prefix`` puts bytes already read from ``source`` back in front (they are counted and hashed
    as if read now). Closing it does not close ``source``.
    """

    def __init__(self, source: Any, prefix: bytes = b"", hashed: bool = True):
        super().__init__()
        self._source = source
        self._prefix = memoryview(prefix) if prefix else None
        self.bytes = 0
        self.sha256 = hashlib.sha256() if hashed else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix is not None:
            got = min(len(view), len(self._prefix))
            view[:got] = self._prefix[:got]
            self._prefix = self._prefix[got:] if got < len(self._prefix) else None
        else:
            got = _read_into(self._source, view)
        self.bytes += got
        if self.sha256 is not None and got:
            self.sha256.update(view[:got])
        return got

    def hexdigest(self) -> str:
        return self.sha256.hexdigest() if self.sha256 is not None else ""


class CountingWriter(io.RawIOBase):
    """Write-through wrapper: counts (and, with ``hashed``, sha256-hashes) what reaches ``sink``.

    After ``silence()`` writes are dropped: objects torn down after a failure must not reach a sink
    that is being discarded. Flushing is left to whoever owns the sink (it may be a network file).
    """

    def __init__(self, sink: Any, hashed: bool = False):
        super().__init__()
        self._sink = sink
        self.bytes = 0
        self.sha256: Optional[Any] = hashlib.sha256() if hashed else None
        self.silenced = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        if self.silenced:
            return size
        self._sink.write(data)
        self.bytes += size
        if self.sha256 is not None:
            self.sha256.update(data)
        return size

    def flush(self) -> None:
        """Nothing: the sink is flushed once, by its owner."""

    def silence(self) -> None:
        self.silenced = True


def copy_stream(source: Any, sink: Any, block: int = 1024 * 1024) -> int:
    """Copy ``source`` to ``sink`` in blocks of ``block`` bytes (one reused buffer); return the count."""
    buffer = bytearray(block)
    view = memoryview(buffer)
    total = 0
    while True:
        got = _read_into(source, view)
        if not got:
            return total
        sink.write(view[:got])
        total += got


#: Entries of a long JSON list encoded at a time by ``json_chunks``.
JSON_BATCH = 1000


def json_chunks(doc: Dict[str, Any], long_key: str) -> Iterator[bytes]:
    """Compact, key-sorted JSON of ``doc`` in pieces, the list under ``long_key`` (last, whatever its
    name) encoded a thousand entries at a time: a document that references 100,000 recordings never
    exists whole in memory, neither as str nor as bytes (json's encoders build the whole text)."""
    compact: Dict[str, Any] = {"separators": (",", ":"), "sort_keys": True, "ensure_ascii": False}
    items = doc.get(long_key)
    head = json.dumps({key: value for key, value in doc.items() if key != long_key}, **compact).encode("utf-8")
    if not isinstance(items, list):
        yield head
        return
    yield head[:-1] + (b"," if len(head) > 2 else b"") + json.dumps(long_key).encode("utf-8") + b":["
    for start in range(0, len(items), JSON_BATCH):
        text = json.dumps(items[start:start + JSON_BATCH], **compact).encode("utf-8")
        yield (b"," if start else b"") + text[1:-1]
    yield b"]}"


class ChunkReader(io.RawIOBase):
    """A readable raw file over an iterator of byte strings; wrap it in io.BufferedReader where whole
    reads are expected (tarfile)."""

    def __init__(self, chunks: Iterable[bytes]):
        super().__init__()
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size
