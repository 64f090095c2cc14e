"""The progress reporter (plugins/module_utils/_engine/progress.py) with real threads, pipes and terminals.

The job's own runs against the lab are in tests/integration/test_progress.py; here the pace, the bound on
lines, the choice of output and what happens when the output blocks.
"""

import io
import os
import threading
import time

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import progress


class Recorder:
    """A stream that keeps each write with the moment it came; ``gate`` (an Event) can hold writes back."""

    def __init__(self, gate=None):
        self.writes = []
        self.gate = gate

    def write(self, text):
        if self.gate is not None:
            self.gate.wait(30)
        self.writes.append((time.monotonic(), text))

    def flush(self):
        pass

    def isatty(self):
        return False


def _pace(report, seconds, step=0.005, block=4096):
    """Feed ``report`` for ``seconds`` as an engine would (an advance per block)."""
    deadline = time.monotonic() + seconds
    for _count in range(100000):
        if time.monotonic() >= deadline:
            return
        report.advance(block)
        time.sleep(step)


@pytest.mark.parametrize("env, expected", [({}, "none"), ({"JOURNAL_STREAM": "8:1234"}, "lines"),
                                           ({"INVOCATION_ID": "ab" * 16}, "lines")])
def test_auto_on_a_pipe_depends_on_systemd(env, expected):
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb"), os.fdopen(write_end, "w") as stream:
        assert progress.choose_mode("auto", stream, env) == expected
        assert progress.choose_mode("bar", stream, env) == "bar"  # an explicit choice stands
        assert progress.choose_mode("none", stream, {"JOURNAL_STREAM": "8:1"}) == "none"


def test_auto_on_a_terminal_is_the_bar_even_under_systemd():
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w") as stream:
            assert progress.choose_mode("auto", stream, {"JOURNAL_STREAM": "8:1", "INVOCATION_ID": "x"}) == "bar"
    finally:
        os.close(master)


def test_plain_progress_counts_and_prints_nothing(capsys):
    report = progress.reporter("auto", io.StringIO(), environ={})
    assert type(report) is progress.Progress and not report.active  # pylint: disable=unidiomatic-typecheck
    report.phase("databases", total=100)
    report.advance(40)
    assert report.done == 40 and report.percent() == 40
    report.close("ok")
    assert capsys.readouterr() == ("", "")


def test_lines_one_per_phase_and_one_per_interval_between():
    stream = Recorder()
    interval = 0.1
    report = progress.LineProgress(stream, interval)
    started = time.monotonic()
    for name in ("sessions", "databases", "verify"):
        report.phase(name, total=10 * 1024 * 1024)
        _pace(report, 0.45)
    report.close("ok: done")
    seconds = time.monotonic() - started
    lines = [text for _when, text in stream.writes]
    assert all(text.startswith("progress: ") and text.endswith("\n") and text.count("\n") == 1 for text in lines)
    assert [text.split()[1] for text in lines if " begins" in text] == ["sessions", "databases", "verify"]
    ticks = [(when, text) for when, text in stream.writes if " begins" not in text][:-1]
    assert 2 <= len(ticks) <= seconds / interval + 1, lines
    for when, _text in ticks:  # never sooner than the interval after the line before it
        before = [moment for moment, _t in stream.writes if moment < when]
        assert when - before[-1] >= interval * 0.99, lines
    assert any(text.startswith("progress: databases: ") and " read of ~10.0 MiB (" in text for _w, text in ticks)
    assert " read back of ~10.0 MiB (" in ticks[-1][1] and "ETA " in ticks[-1][1], ticks[-1]
    assert lines[-1].startswith("progress: verify took ") and "; ok: done; elapsed " in lines[-1]


def test_the_bar_draws_at_most_four_frames_a_second():
    stream = Recorder()
    report = progress.BarProgress(stream)
    started = time.monotonic()
    report.phase("databases", total=1 << 30)
    _pace(report, 1.3, block=1 << 20)
    report.phase("publish")
    report.close("ok")
    seconds = time.monotonic() - started
    frames = [text for _when, text in stream.writes if text.startswith("\r[")]
    assert 3 <= len(frames) <= seconds / progress.BAR_INTERVAL + 1, frames
    sizes = [text.split("%  ")[1].split(" / ")[0] for text in frames if text.startswith("\r[databases]")]
    assert len(set(sizes)) >= 2, sizes  # the count moves between frames
    assert any("databases took " in text for _when, text in stream.writes)
    assert stream.writes[-1][1].endswith("ok\n")


def test_a_blocked_stream_never_stalls_the_engine():
    """A terminal held with Ctrl-S, a journal that does not read: the engine's calls return at once."""
    gate = threading.Event()
    stream = Recorder(gate)
    report = progress.LineProgress(stream, 0.05)
    report.close_wait = 0.2
    try:
        started = time.monotonic()
        for name in progress.PHASES:
            report.phase(name, total=1000)
            for _count in range(1000):
                report.advance(1)
        assert time.monotonic() - started < 1.0
        time.sleep(0.2)  # the renderer is now stuck in write()
        started = time.monotonic()
        report.close("ok")
        assert time.monotonic() - started < 2.0  # it gives up on the stream, not on the run
    finally:
        gate.set()
    time.sleep(0.3)
    assert len(stream.writes) == 1, stream.writes  # the write in flight, nothing queued behind it once closed


def test_counted_sources_are_read_as_before():
    """add_stream reads with readinto when a source has it, else read(1 MiB): the wrapper keeps that."""
    report = progress.LineProgress(Recorder(), 60)
    try:
        plain = report.counted("databases", _ReadOnly(b"x" * 5000), total=5000)
        assert not hasattr(plain, "readinto")
        assert plain.read(3000) == b"x" * 3000 and report.done == 3000
        buffered = report.counted("databases", io.BytesIO(b"y" * 7000), total=7000)
        buffer = bytearray(4096)
        assert buffered.readinto(buffer) == 4096 and report.done == 4096  # a new counter for the new stream
    finally:
        report.close("")


class _ReadOnly:
    def __init__(self, data):
        self._data = io.BytesIO(data)

    def read(self, size=-1):
        return self._data.read(size)


def test_counted_reads_of_a_target(tmp_path):
    from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target

    (tmp_path / "object").write_bytes(b"z" * 100000)
    report = progress.LineProgress(Recorder(), 60)
    try:
        with open_target({"type": "path", "path": str(tmp_path)}) as target:
            counted = progress.CountedReads(target, report)
            report.phase("verify", total=100000)
            with counted.open_read("object") as handle:
                while handle.read(16384):
                    pass
            assert report.done == 100000
            assert counted.exists("object") and counted.describe() == target.describe()
    finally:
        report.close("")


def test_config_and_secrets_share_the_object_counter():
    """snapshot.py gives both phases ``sink.count``, a bound method (a new object at each access): the counter,
    its start and its rate carry on from config to secrets instead of starting over."""
    class Sink:
        written = 0

        def count(self):
            return self.written

    sink = Sink()
    report = progress.Progress()
    report.phase("config", count=sink.count)
    started = report.counter_started
    sink.written = 50
    time.sleep(0.01)
    report.phase("secrets", count=sink.count)
    assert report.counter_started == started and report.phase_from == 50
    sink.written = 80
    assert report.snapshot()[:2] == ("secrets", 30) and report.done == 80
    report.phase("publish")  # no counter of its own: starts over
    assert report.counter_started > started and report.done == 0


def test_phase_changes_do_not_add_frames_beyond_four_a_second():
    """Each phase change wakes the renderer (to leave the ended phase's line at once); the bar itself still
    draws at most one frame per interval - a short job of eight phases drew a frame per phase (CI: 13 frames
    in 2.4 s)."""
    stream = Recorder()
    report = progress.BarProgress(stream)
    started = time.monotonic()
    for name in ("prepare", "sessions", "databases", "config", "secrets", "publish", "verify", "prune"):
        report.phase(name)
        report.advance(1000)
        time.sleep(0.06)
    report.close("ok")
    seconds = time.monotonic() - started
    frames = [text for _when, text in stream.writes if text.startswith("\r[")]
    assert 1 <= len(frames) <= seconds / progress.BAR_INTERVAL + 1, (len(frames), seconds)
    assert sum(1 for _when, text in stream.writes if " took " in text) == 8  # every phase still leaves its line
