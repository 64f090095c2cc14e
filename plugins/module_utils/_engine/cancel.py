# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Stopping cleanly when asked to stop: SIGTERM (AWX's cancel, ``systemctl stop``, a shutdown),
SIGINT (Ctrl-C, ansible-runner's first cancel signal) and SIGHUP (a terminal or SSH session that
went away).

Python's default for SIGTERM and SIGHUP is to die on the spot: no ``finally``, no ``__exit__``, so the
lock stays on the target and the partial upload with it. Here the first such signal raises ``Cancelled``
in the main thread instead. It derives from BaseException, like KeyboardInterrupt, so no ``except
Exception`` on the way swallows it and every context manager runs: the upload removes its partial, the
dump is terminated, the lock is released. Further signals are ignored while that cleanup runs (it is
bounded by the target's timeouts). At the edge (``stop_cleanly_on_signals``) it becomes ``RunStopped``,
a BackupError the modules and the CLI report like any other failure.

What cannot be caught (SIGKILL, an OOM kill) leaves the lock; the next run takes it over at once when
its holder ran on the same host and boot (holders.holder_is_gone), else (another host, a reboot, a
power cut) after its ttl, and break_lock exists for the rest.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, List, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
RESTORE_STOPPED = ("the databases and files may be partly restored: run the same restore again, it starts over "
                   "from the verified snapshot")


class Cancelled(BaseException):
    """Raised by the signal handler; carries the signal's name."""


class RunStopped(BackupError):
    """The run was stopped by a signal after cleaning up what it had not finished."""


@contextlib.contextmanager
def stop_cleanly_on_signals(what: str = "nothing unfinished was published") -> Iterator[None]:
    """Within the block, a stop signal unwinds the run (see the module docstring); ``what`` says what the
    unwinding leaves, for the error message. Outside the main thread it does nothing (Python only lets
    the main thread handle signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping: List[Optional[int]] = []

    def handler(signum, frame):  # pylint: disable=unused-argument
        if stopping:
            return  # already unwinding (or done): let the cleanup finish
        stopping.append(signum)
        raise Cancelled(signal.Signals(signum).name)

    # Signals are held back while the handlers change, so none lands between two of these steps. A
    # signal the caller ignores (nohup's SIGHUP, a background job's SIGINT) stays ignored.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    previous = {}
    try:
        for number in STOP_SIGNALS:
            if signal.getsignal(number) is not signal.SIG_IGN:
                previous[number] = signal.signal(number, handler)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        yield
    except Cancelled as exc:
        stopped = RunStopped("stopped by %s before it finished; %s" % (exc, what))
        stopped.summary = getattr(exc, "summary", None)  # type: ignore[attr-defined]  # what the run did before
        raise stopped from None
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        stopping.append(None)  # a signal landing from here on must not escape as a bare Cancelled
        for number, old in previous.items():
            # a handler set outside Python reads back as None; the default is the honest stand-in
            signal.signal(number, old if old is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
