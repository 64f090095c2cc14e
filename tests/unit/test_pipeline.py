"""The snapshot's pipeline stages (pipeline.py): order kept, errors handed back, memory bounded, stops clean."""

import hashlib
import os
import threading
import time

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import TargetError
from ansible_collections.segura.backup.plugins.module_utils._engine.pipeline import ChunkHasher, WriteBehind


class Sink:
    """Records what it was given, from which thread; can fail at the n-th write or block until released."""

    def __init__(self, fail_at=None, gate=None):
        self.items = []
        self.threads = set()
        self.fail_at = fail_at
        self.gate = gate

    def write(self, data):
        if self.gate is not None:
            self.gate.wait(10)
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.items) == self.fail_at:
            raise TargetError("the share went away")
        self.items.append(bytes(data))
        return len(data)


def test_write_behind_keeps_the_order_copies_reused_buffers_and_writes_on_its_own_thread():
    sink = Sink()
    behind = WriteBehind(sink, depth=4, name="test-upload")
    buffer = bytearray(3)
    for index in range(200):
        buffer[:] = b"%03d" % index
        assert behind.write(memoryview(buffer)) == 3  # the caller reuses its buffer at once
    behind.close()
    assert sink.items == [b"%03d" % i for i in range(200)]
    assert sink.threads == {"test-upload"}


def test_an_error_of_the_sink_comes_back_at_the_next_write_or_at_close():
    sink = Sink(fail_at=5)
    behind = WriteBehind(sink, depth=2)
    with pytest.raises(TargetError, match="the share went away"):
        for _attempt in range(1000):
            behind.write(b"x")
            time.sleep(0.001)
    with pytest.raises(TargetError):
        behind.close()
    assert len(sink.items) == 5

    late = WriteBehind(Sink(fail_at=0))
    late.write(b"only")
    with pytest.raises(TargetError):
        late.close()


def test_the_queue_is_bounded_and_abort_drops_what_is_queued():
    gate = threading.Event()
    sink = Sink(gate=gate)
    behind = WriteBehind(sink, depth=3)
    refused = []

    def write_all():
        try:
            for i in range(50):
                behind.write(b"%d" % i)
        except ValueError as exc:  # the writes after abort are refused
            refused.append(exc)

    writer = threading.Thread(target=write_all, daemon=True)
    writer.start()
    time.sleep(0.3)
    assert writer.is_alive(), "50 writes went into a queue of 3 while the sink was blocked"
    behind.abort()  # the sink is still blocked: abort does not wait for it longer than it must
    gate.set()
    writer.join(10)
    assert len(sink.items) <= 5, "aborted writes still reached the sink: %d" % len(sink.items)
    assert refused, "writes after abort were accepted"
    with pytest.raises(ValueError):
        behind.write(b"after abort")


@pytest.mark.parametrize("sizes", [[0], [1], [5, 7, 0], [1 << 20, 3, 1 << 16]])
def test_chunk_hasher_gives_each_chunk_and_the_whole_stream_like_hashlib(sizes):
    hasher = ChunkHasher()
    chunks = [os.urandom(size) for size in sizes]
    try:
        for chunk in chunks:
            hasher.start(memoryview(chunk))
            assert hasher.result() == hashlib.sha256(chunk).hexdigest()
    finally:
        hasher.close()
    assert hasher.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_chunk_hasher_closes_while_it_hashes_and_its_thread_ends():
    hasher = ChunkHasher()
    hasher.start(memoryview(bytes(64 << 20)))
    hasher.close()  # no result() taken: the error path of add_stream
    assert not hasher._thread.is_alive()


def test_abort_while_close_waits_for_the_queue_drops_what_is_left():
    """A stop signal lands while close() waits for the queued writes: abort must still drop them."""
    gate = threading.Event()
    sink = Sink(gate=gate)
    behind = WriteBehind(sink, depth=64)
    for index in range(40):
        behind.write(b"%d" % index)  # the sink blocks on the first: the rest wait in the queue
    closer = threading.Thread(target=behind.close, daemon=True)
    closer.start()
    time.sleep(0.2)
    behind.abort()
    gate.set()
    closer.join(10)
    assert not closer.is_alive() and len(sink.items) <= 1, len(sink.items)
