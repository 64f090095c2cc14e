# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Stages of a snapshot's stream on threads of their own, so that two cores do the work of one.

The snapshot's one thread used to read the database tool, hash every chunk twice, feed zstd, encrypt
with age, hash the object and run the target client's crypto and socket, one after the other. The
heavy parts release the GIL (hashlib on large buffers, zstd's own workers, socket I/O, and the AEADs
in the ``cryptography`` releases that release it), so they overlap when they run on threads:

- ``ChunkHasher``: the sha256 of each database chunk and of the whole stream, while the same chunk
  goes through tar, zstd and age on the caller's thread;
- ``WriteBehind``: the target's writes (SMB signing or encryption, the socket, the upload's sha256)
  behind a bounded queue, while the caller compresses and encrypts what follows.

Memory stays flat: each stage holds a bounded amount (one chunk; ``WriteBehind.depth`` writes).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Any, Optional

#: Writes queued behind the target at most: age writes 64 KiB chunks, so about 4 MiB in flight.
WRITE_BEHIND_DEPTH = 64
#: How long ``abort`` waits for a write already on its way (a stalled share must not hold a stop up).
ABORT_WAIT_SECONDS = 5.0


class WriteBehind:
    """A sink whose writes run on a thread of their own, behind a bounded queue.

    ``write`` queues an immutable copy and returns; an error of the sink comes back at the next
    ``write`` or at ``close``, which waits for every queued write. ``abort`` drops what is queued.
    """

    def __init__(self, sink: Any, depth: int = WRITE_BEHIND_DEPTH, name: str = "write-behind"):
        self._sink = sink
        self._queue: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=depth)
        self._error: Optional[BaseException] = None
        self._dropping = False
        self._closed = False
        self._end_sent = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._dropping:  # aborted while its end marker did not fit: end all the same
                    return
                continue
            if item is None:
                return
            if self._error is None and not self._dropping:
                try:
                    self._sink.write(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: Any) -> int:
        if self._closed:
            raise ValueError("write to a closed WriteBehind")
        self._raise_error()
        item = data if isinstance(data, bytes) else bytes(data)  # the caller may reuse its buffer
        self._queue.put(item)
        return len(item)

    def flush(self) -> None:
        """Nothing: ``close`` waits for the queued writes (the target makes them durable on close)."""

    def close(self) -> None:
        """Wait until every queued write reached the sink; raise the sink's error if one failed."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._end_sent = True
            self._thread.join()
        self._raise_error()

    def abort(self) -> None:
        """Drop what is queued and stop the thread (waiting a little for a write already under way); also
        when ``close`` was interrupted (a stop signal while it waited for the queue to drain)."""
        self._closed = True
        self._dropping = True
        if not self._end_sent:
            try:
                self._queue.put(None, timeout=ABORT_WAIT_SECONDS)
                self._end_sent = True
            except queue.Full:
                pass  # the thread is stuck in a write: it ends by itself once it sees _dropping
        if self._thread.is_alive():
            self._thread.join(ABORT_WAIT_SECONDS)


class ChunkHasher:
    """The sha256 of one chunk and the running sha256 of the whole stream, on a thread of their own.

    ``start(view)`` begins hashing a chunk the caller goes on reading (not changing); ``result()``
    waits and returns the chunk's hex digest. One chunk at a time; the whole stream's digest is
    ``hexdigest()`` once the last result was taken.
    """

    def __init__(self) -> None:
        self._whole = hashlib.sha256()
        self._view: Any = None
        self._digest: Optional[str] = None
        self._error: Optional[BaseException] = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="chunk-hasher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._ready.wait()
            self._ready.clear()
            if self._stop:
                return
            try:
                self._whole.update(self._view)
                self._digest = hashlib.sha256(self._view).hexdigest()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._error = exc
            self._view = None
            self._done.set()

    def start(self, view: Any) -> None:
        self._view = view
        self._digest = None
        self._done.clear()
        self._ready.set()

    def result(self) -> str:
        self._done.wait()
        if self._error is not None:
            raise self._error
        if self._digest is None:
            raise AssertionError("ChunkHasher.result() without start()")
        return self._digest

    def hexdigest(self) -> str:
        return self._whole.hexdigest()

    def close(self) -> None:
        self._stop = True
        self._ready.set()
        self._thread.join()
