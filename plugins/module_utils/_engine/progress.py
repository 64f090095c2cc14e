# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Progress of a scheduled run, for people: a bar on a terminal, a line now and then in the journal.

The engine feeds a ``Progress`` with byte counters it already has (what the snapshot sink hands to the
target, what verify reads back, the size of each recording the session sync took): ``phase()`` when a
step begins, ``advance(n)`` as bytes move - an integer addition, no clock, no write. A renderer thread
reads the counters: the bar at most 4 times a second, the journal line once per interval (30 s) plus one
line per phase change, so a two-hour run is not silent and does not flood. The plain ``Progress`` (the
modules' one) prints nothing: a module's output is its JSON on stdout, nothing else.

Only the phase, byte counts, rates and times are printed: never a path, a target or an option value,
so no password or passphrase can reach the terminal or the journal through here.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Mapping, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.text import describe_bytes

#: The steps of one run, in order (a run goes through those its components and settings ask for).
PHASES = ("prepare", "sessions", "databases", "config", "secrets", "publish", "verify", "prune")
#: What the byte count of a phase is (default: bytes of the snapshot object written to the target).
_COUNTED = {"sessions": "checked", "databases": "read", "verify": "read back"}
MODES = ("auto", "bar", "lines", "none")
BAR_INTERVAL = 0.25  # seconds between two frames of the bar: at most 4 a second
LINE_INTERVAL = 30.0  # seconds between two journal lines within a phase


def clock(seconds: float) -> str:
    """'0:01:02'."""
    seconds = int(max(seconds, 0))
    return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


class Progress:
    """The counters of a run; this base prints nothing (``active`` False: callers skip extra work)."""

    active = False
    settle = 0.5  # seconds a counter runs before its rate and ETA are shown

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.name = ""  # the current phase
        self._done = 0  # bytes of the current counter, when it is counted here (advance)
        self._count: Optional[Callable[[], int]] = None  # else: what reads the counter of its owner
        self.total: Optional[int] = None  # what the counter should reach, when known
        self.files = 0  # recordings uploaded (sessions)
        self.moved = 0  # their bytes
        self.counter_started = self.phase_started = self.started
        self.phase_from = 0  # ``done`` when the phase began

    @property
    def done(self) -> int:
        return self._count() if self._count is not None else self._done

    def phase(self, name: str, total: Optional[int] = None, count: Optional[Callable[[], int]] = None) -> None:
        """Begin ``name``, its bytes counted by ``advance`` or, with ``count``, by their owner (e.g. the
        object's bytes written, which config and secrets share: the counter, its total and its rate
        carry on from one to the other)."""
        previous = self.snapshot()
        now = time.monotonic()
        self.name, self.phase_started, self.total = name, now, total
        if count is None or count != self._count:  # ==: each access to a bound method makes a new object
            self._done, self._count, self.counter_started = 0, count, now
        self.phase_from = self.done
        self.changed(previous, now)

    def advance(self, count: int) -> None:
        self._done += count

    def counted(self, name: str, reader: Any, total: Optional[int] = None) -> Any:
        """Begin ``name``, counting what is read from ``reader`` (returned wrapped when shown)."""
        if not self.active:
            self.phase(name, total)
            return reader
        wrapped = _CountedInto(reader) if hasattr(reader, "readinto") else _Counted(reader)
        self.phase(name, total, count=wrapped.count)
        return wrapped

    def uploaded(self, size: int) -> None:
        """One recording uploaded (its bytes were counted by ``advance`` already)."""
        self.files += 1
        self.moved += size

    def snapshot(self) -> Tuple[str, int, float]:
        """(phase, its bytes, when it began)."""
        return self.name, self.done - self.phase_from, self.phase_started

    def changed(self, previous: Tuple[str, int, float], now: float) -> None:
        """A phase began (``previous`` is the one that ended)."""

    def close(self, final: str) -> None:
        """The run is over; ``final`` says how it went."""

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close("")

    # -- wording shared by the renderers -----------------------------------------------------------

    def rates(self, now: float) -> Tuple[Optional[float], Optional[str]]:
        """(bytes a second since the counter began, the ETA against the total); None until it settled."""
        spent, total, done = now - self.counter_started, self.total, self.done  # read once: the engine moves on
        if spent < self.settle:
            return None, None
        average = done / spent
        eta = clock(max(total - done, 0) / average) if total and average > 0 else None
        return average, eta

    def figures(self, now: float) -> str:
        """'1.1 GiB written of ~2.6 GiB (42%), 45.3 MiB/s, ETA 0:00:31' for the current counter."""
        average, eta = self.rates(now)
        parts = ["%s %s" % (describe_bytes(self.done), _COUNTED.get(self.name, "written"))]
        if self.total:
            parts[0] += " of ~%s (%d%%)" % (describe_bytes(self.total), self.percent())
        if average is not None:
            parts.append("%s/s" % describe_bytes(int(average)))
        if eta:
            parts.append("ETA %s" % eta)
        if self.name == "sessions":
            parts.append("%d uploaded (%s)" % (self.files, describe_bytes(self.moved)))
        return ", ".join(parts)

    def percent(self) -> int:
        """Of the known total; 99 at most until the phase ends (a total is a guess)."""
        total = self.total
        return min(99, self.done * 100 // total) if total else 0


def _ended(previous: Tuple[str, int, float], now: float) -> str:
    name, count, began = previous
    text = "%s took %s" % (name, clock(now - began))
    return text + (" (%s)" % describe_bytes(count) if count else "")


class _Shown(Progress):
    """A Progress with a renderer thread writing to ``stream``: phase changes as they come, the counters
    every ``interval`` seconds. Only that thread writes, so a terminal or journal that blocks a write
    never stalls the backup (the engine only appends to a queue and sets an event)."""

    active = True
    close_wait = 5.0  # seconds close() waits for a write in flight before it gives up on the stream

    def __init__(self, stream: Any, interval: float) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self.settle = min(self.settle, 2 * interval)
        self._changes: Deque[Tuple[str, Tuple[str, int, float], float]] = deque()  # (new, ended, when)
        self._wake = threading.Event()
        self._stopping = False
        self._gave_up = False  # close() stopped waiting for a blocked write: write nothing more
        self._thread = threading.Thread(target=self._loop, name="segura-backup-progress", daemon=True)
        self._thread.start()

    def changed(self, previous: Tuple[str, int, float], now: float) -> None:
        self._changes.append((self.name, previous, now))
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.wait_time())
            self._wake.clear()
            try:
                while self._changes and not self._gave_up:
                    self.announce(*self._changes.popleft())
                if not self._stopping:
                    self.tick(time.monotonic())
            except Exception:  # pylint: disable=broad-exception-caught  # a frame read mid-change: skip it
                pass
            if self._stopping:
                return

    def wait_time(self) -> float:
        return self.interval

    def announce(self, name: str, ended: Tuple[str, int, float], now: float) -> None:
        """Phase ``name`` began at ``now``; ``ended`` is the one before."""
        raise NotImplementedError

    def tick(self, now: float) -> None:
        raise NotImplementedError

    def last(self, final: str, now: float) -> None:
        raise NotImplementedError

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not fail the backup
            pass

    def close(self, final: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=self.close_wait)
        if self._thread.is_alive():  # its write is blocked: do not block the run's end too
            self._gave_up = True
        else:
            self.last(final, time.monotonic())


class BarProgress(_Shown):
    """A one-line bar redrawn in place (stderr is a terminal); each phase that ends leaves a line."""

    def __init__(self, stream: Any, interval: float = BAR_INTERVAL) -> None:
        self.samples: Deque[Tuple[float, int]] = deque(maxlen=12)  # (time, done): the recent rate
        self.last_frame = 0.0  # a phase change wakes the renderer too: frames still come one per interval
        super().__init__(stream, interval)

    def announce(self, name: str, ended: Tuple[str, int, float], now: float) -> None:
        self.samples.clear()
        if ended[0]:
            self.write("\r%s\x1b[K\n" % _ended(ended, now))

    def tick(self, now: float) -> None:
        if not self.name or now - self.last_frame < self.interval * 0.999:
            return
        self.last_frame = now
        done, total = self.done, self.total  # read once: the engine moves on meanwhile
        self.samples.append((now, done))
        first_time, first_done = self.samples[0]
        _average, eta = self.rates(now)
        parts = ["[%s]" % self.name]
        if total:
            percent = min(99, done * 100 // total)
            parts.append("[%s%s] %3d%%" % ("#" * (percent * 16 // 100), "-" * (16 - percent * 16 // 100), percent))
        if done or total:
            parts.append(describe_bytes(done) + (" / ~" + describe_bytes(total) if total else ""))
        if now - first_time > 0.2:  # the recent rate (the last 12 frames), not the average
            parts.append("%s/s" % describe_bytes(int((done - first_done) / (now - first_time))))
        if eta:
            parts.append("ETA " + eta)
        if self.name == "sessions":
            parts.append("%d uploaded" % self.files)
        parts.append("elapsed " + clock(now - self.started))
        self.write("\r%s\x1b[K" % "  ".join(parts)[:max(self._width() - 1, 20)])

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 100

    def last(self, final: str, now: float) -> None:
        ended = "\r%s\x1b[K\n" % _ended(self.snapshot(), now) if self.name else "\r\x1b[K"
        self.write(ended + ("%s\n" % final if final else ""))


class LineProgress(_Shown):
    """Whole lines (the journal, a log): one per phase change, and one per ``interval`` in between."""

    def __init__(self, stream: Any, interval: float = LINE_INTERVAL) -> None:
        self.last_line = time.monotonic()
        super().__init__(stream, interval)

    def wait_time(self) -> float:
        if not self.name:  # nothing to say before the first phase; its beginning wakes the renderer
            return self.interval
        return max(self.last_line + self.interval - time.monotonic(), 0.01)

    def line(self, text: str, now: float) -> None:
        self.write("progress: %s; elapsed %s\n" % (text, clock(now - self.started)))
        self.last_line = time.monotonic()

    def announce(self, name: str, ended: Tuple[str, int, float], now: float) -> None:
        self.line("%s begins%s" % (name, "; " + _ended(ended, now) if ended[0] else ""), now)

    def tick(self, now: float) -> None:
        if self.name and now - self.last_line >= self.interval * 0.999:
            self.line("%s: %s" % (self.name, self.figures(now)) if self.done or self.total
                      else "%s: running" % self.name, now)

    def last(self, final: str, now: float) -> None:
        if self.name:
            self.line(_ended(self.snapshot(), now) + ("; " + final if final else ""), now)


def choose_mode(mode: str, stream: Any, environ: Mapping[str, str]) -> str:
    """``auto``: the bar on a terminal; lines under systemd (it sets JOURNAL_STREAM, or INVOCATION_ID,
    for a unit's processes); nothing otherwise (a pipe, a script)."""
    if mode != "auto":
        return mode
    try:
        if stream.isatty():
            return "bar"
    except (AttributeError, ValueError):
        pass
    if environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"):
        return "lines"
    return "none"


def reporter(mode: str, stream: Any, interval: Optional[float] = None,
             environ: Optional[Mapping[str, str]] = None) -> Progress:
    """The Progress for ``mode`` (one of MODES) on ``stream``; ``interval`` overrides the default pace."""
    chosen = choose_mode(mode, stream, os.environ if environ is None else environ)
    if chosen == "bar":
        return BarProgress(stream, interval or BAR_INTERVAL)
    if chosen == "lines":
        return LineProgress(stream, interval or LINE_INTERVAL)
    return Progress()


class _Counted:
    """Counts what is read through ``read`` (the reader it wraps is read the same way as without it)."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.bytes += len(data)
        return data

    def count(self) -> int:
        return self.bytes


class _CountedInto(_Counted):
    """The same, for a source that also fills buffers (``readinto``: no copy more than without it)."""

    def readinto(self, buffer: Any) -> int:
        got = self._source.readinto(buffer) or 0
        self.bytes += got
        return got


class _CountedRead:
    """A read handle of the target whose bytes feed ``progress.advance``."""

    def __init__(self, handle: Any, progress: Progress) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._progress.advance(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        if not hasattr(self._handle, "readinto"):
            data = self.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)
        got = self._handle.readinto(buffer) or 0
        self._progress.advance(got)
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> "_CountedRead":
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._handle.__exit__(*exc)


class CountedReads:
    """``target`` as it is, except that what is read through ``open_read`` is counted (verify)."""

    def __init__(self, target: Any, progress: Progress) -> None:
        self._target = target
        self._progress = progress

    def open_read(self, relpath: str) -> _CountedRead:
        return _CountedRead(self._target.open_read(relpath), self._progress)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)
