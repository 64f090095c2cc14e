"""The NFS target's retry policy: which nfs-rs failures are repeated, and how often.

The failures are nfs-rs's own exception classes, built the way the library builds them; the server
side of these replies is exercised by tests/integration/test_targets.py against the lab's ganesha.
"""

import pytest

nfs_rs = pytest.importorskip("nfs_rs")

from ansible_collections.segura.backup.plugins.module_utils._engine.targets import nfs  # noqa: E402

REAL_BACKOFF = nfs._backoff  # before the autouse fixture below replaces it


def _uncertain_open():
    # What the CI run saw from an OPEN for reading: "Uncertain NFS operation ReplaySensitive".
    return nfs_rs.NfsUncertainOutcomeError(message="Uncertain NFS operation ReplaySensitive", outcome="uncertain",
                                           recovery_action="verify_then_resume")


def _retry_uncached():
    return nfs_rs.NfsRetryableError(message="NFS4ERR_RETRY_UNCACHED_REP", outcome="safe_to_retry",
                                    code_name="NFS4ERR_RETRY_UNCACHED_REP")


class FailsThenWorks:
    def __init__(self, failures):
        self.failures = list(failures)
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return ("done", args, kwargs)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    waits = []
    monkeypatch.setattr(nfs, "_backoff", waits.append)
    return waits


def test_uncertain_outcome_error_is_retried_for_an_idempotent_call(no_sleep):
    call = FailsThenWorks([_uncertain_open(), _uncertain_open()])
    assert nfs._retrying(call, "a", "rb", _idempotent=True) == ("done", ("a", "rb"), {})
    assert call.calls == 3
    assert no_sleep == [0, 1]


def test_uncertain_outcome_error_is_not_replayed_for_a_replay_sensitive_call():
    call = FailsThenWorks([_uncertain_open()])
    with pytest.raises(nfs_rs.NfsUncertainOutcomeError):
        nfs._retrying(call, "a")
    assert call.calls == 1


def test_safe_to_retry_is_retried_for_any_call():
    call = FailsThenWorks([_retry_uncached()] * 3)
    assert nfs._retrying(call)[0] == "done"
    assert call.calls == 4


def test_retries_are_bounded(no_sleep):
    call = FailsThenWorks([_retry_uncached()] * (nfs._RETRIES + 5))
    with pytest.raises(nfs_rs.NfsRetryableError):
        nfs._retrying(call)
    assert call.calls == nfs._RETRIES
    assert len(no_sleep) == nfs._RETRIES - 1


def test_backoff_grows_and_totals_a_few_seconds(monkeypatch):
    slept = []
    monkeypatch.setattr(nfs.time, "sleep", slept.append)
    for attempt in range(nfs._RETRIES - 1):
        REAL_BACKOFF(attempt)
    assert slept == sorted(slept) and slept[0] == pytest.approx(0.1) and max(slept) == nfs._MAX_BACKOFF
    assert 3 <= sum(slept) <= 6, "a burst of busy replies gets a few seconds, a dead server not much more"


@pytest.mark.parametrize("error", [
    nfs_rs.NfsTimeoutError(message="deadline exceeded", outcome="uncertain"),
    nfs_rs.NfsConnectionError(message="connection reset", outcome="uncertain"),
    nfs_rs.NfsNotFoundError(message="missing", outcome="definite_failure"),
])
def test_timeouts_lost_connections_and_definite_failures_are_not_retried(error):
    call = FailsThenWorks([error])
    with pytest.raises(type(error)):
        nfs._retrying(call, _idempotent=True)
    assert call.calls == 1


def test_is_uncertain_reads_the_outcome_of_both_error_families():
    assert nfs._is_uncertain(_uncertain_open())
    assert nfs._is_uncertain(nfs_rs.NfsRetryableError(message="x", outcome="uncertain"))
    assert not nfs._is_uncertain(_retry_uncached())
    assert not nfs._is_uncertain(ValueError("x"))


class HandleDouble:
    """Stands for an nfs-rs file handle whose CLOSE reply the lab's ganesha cannot be made to lose."""

    def __init__(self, close_error):
        self.close_error = close_error
        self.written = b""

    def write_at(self, data, offset):
        self.written = self.written[:offset] + bytes(data)
        return len(data)

    def close(self):
        raise self.close_error


class _Target:
    @staticmethod
    def map_error(exc, where):
        return RuntimeError("%s: %s" % (where, exc))


@pytest.mark.parametrize("error", [
    nfs_rs.NfsFileCloseError(message="Uncertain NFS operation", outcome="uncertain"),
    nfs_rs.NfsFileCloseError(message="close failed", errors=(_uncertain_open(),)),
    nfs_rs.NfsUncertainOutcomeError(message="Uncertain NFS operation ReplaySensitive", outcome="uncertain"),
])
def test_an_uncertain_close_after_durable_writes_is_not_a_failure(error):
    handle = HandleDouble(error)
    writer = nfs._NfsWriter(_Target(), handle, "nfs://lab/x.json.sig.partial", batch=1024)
    writer.write(b"signature")
    writer.close()  # the bytes were written durably before the CLOSE: nothing is lost
    assert handle.written == b"signature"


def test_a_definite_close_failure_is_reported():
    handle = HandleDouble(nfs_rs.NfsFileCloseError(message="NFS4ERR_IO", outcome="definite_failure"))
    writer = nfs._NfsWriter(_Target(), handle, "nfs://lab/x", batch=1024)
    writer.write(b"x")
    with pytest.raises(RuntimeError, match="NFS4ERR_IO"):
        writer.close()
