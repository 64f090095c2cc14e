# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who holds a lock: the record of a local process (kernel boot id, pid namespace, pid start time), and
whether that holder provably still runs or is provably gone (see locking.py, which records it)."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (clock ticks since boot, /proc/<pid>/stat field 22); None if
    there is no such process, or only its corpse (a zombie its parent has not reaped yet)."""
    text = _read_text("/proc/%d/stat" % pid)
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # fields after "(comm)": state is field 3
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _kernel_and_namespace() -> Optional[Dict[str, str]]:
    """What makes a pid meaningful: this kernel's boot id and this pid namespace; None off Linux."""
    boot_id = _read_text("/proc/sys/kernel/random/boot_id")
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None
    return {"boot_id": boot_id, "pid_namespace": namespace} if boot_id else None


def process_identity(pid: int) -> Optional[Dict[str, str]]:
    """The lock's ``process`` record of a live local process: kernel, namespace, pid start time."""
    where = _kernel_and_namespace()
    start = _process_start(pid)
    if where is None or start is None:
        return None
    return dict(where, start=start)


def _local_holder_runs(doc: Optional[Dict[str, Any]]) -> Optional[bool]:
    """Whether the lock's holder still runs, where that can be known: it ran on this very kernel and pid
    namespace (same boot id and namespace), and its pid runs the process (same start time) that took
    the lock. None when it cannot be known (another host, another container, an older lock)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("process"), dict):
        return None
    recorded, here = doc["process"], _kernel_and_namespace()
    if here is None or recorded.get("boot_id") != here["boot_id"] or recorded.get("pid_namespace") != here["pid_namespace"]:
        return None
    try:
        pid = int(doc["pid"])
    except (KeyError, TypeError, ValueError):
        return None
    return _process_start(pid) == recorded.get("start")


def holder_is_gone(doc: Optional[Dict[str, Any]]) -> bool:
    """True only when the lock's holder provably no longer runs (its pid is gone or was reused)."""
    return _local_holder_runs(doc) is False


def holder_is_alive(doc: Optional[Dict[str, Any]]) -> bool:
    """True only when the lock's holder provably still runs on this host."""
    return _local_holder_runs(doc) is True


def takeover_message(stale: Optional[Dict[str, Any]]) -> Optional[str]:
    """What a run says when it took over another run's lock (None when it did not)."""
    if stale is None:
        return None
    return "took over the lock of run %s (host %s, pid %s, since %s): %s" % (
        stale.get("run_id", "?"), stale.get("host", "?"), stale.get("pid", "?"), stale.get("started", "?"),
        stale.get("reason", "it expired"))
