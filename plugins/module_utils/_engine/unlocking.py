# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Looking at an appliance's lock, and breaking it by hand (the break_lock module).

Runs take over stale locks by themselves (locking.py): at once when the holder ran on the same host
and is gone, after the ttl otherwise. Breaking by hand is for the rest: a run that died on another
host (an AWX execution node that was replaced, a controller that rebooted), whose lock would block
the appliance until its ttl ends. Rules, most important first:
- A holder that provably runs (same host, same pid and start time) is never broken.
- A stale lock (expired, or its process gone from this host) is broken on request.
- Any other lock only with ``force``, and even then not while it is being refreshed: refreshed within
  the last third of its ttl (a working run rewrites it every sixth). Silence is no proof of death: a run
  refreshes as its data moves, and one whose dump waits on a table lock moves nothing. So ``force`` is
  the operator's word that the run is gone (its host is down), as with borg's ``break-lock``.
The break is a takeover (the same protocol as for a stale lock). A holder that refreshed at the same
instant could overwrite it, so the breaker looks again after a moment and removes nothing unless the
lock is still its own; then the broken run's partial objects go and the lock is released. A broken
holder that is alive after all finds its lock gone at its next refresh, at the latest right before it
publishes, and stops.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import parse_utc
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import LockBusy, TargetInUse, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.holders import holder_is_alive, holder_is_gone
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import ApplianceLock
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import heal_after_takeover
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target

HOLDER_KEYS = ("run_id", "host", "pid", "started", "refreshed", "expires")  # never the ownership token
SETTLE_SECONDS = 2.0  # after the takeover, how long a refresh already in flight may take to land


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def judge_holder(doc: Optional[Dict[str, Any]], now: datetime, force: bool = False) -> Dict[str, Any]:
    """What is known of a lock's holder, and whether a break may go ahead (``breakable``, ``why``)."""
    if doc is None:
        return {"readable": False, "breakable": False,
                "why": "the lock cannot be read (it may be being written this instant); look again"}
    holder: Dict[str, Any] = {key: doc.get(key) for key in HOLDER_KEYS}
    holder["readable"] = True
    expires = parse_utc(doc["expires"])
    holder["expired"] = now >= expires
    holder["process_gone"] = holder_is_gone(doc)
    try:
        refreshed: Optional[datetime] = parse_utc(doc.get("refreshed") or doc["started"])
    except (KeyError, TypeError, ValueError):
        refreshed = None
    if refreshed is not None:
        holder["silent"] = round((now - refreshed).total_seconds(), 1)
    if holder_is_alive(doc):
        return dict(holder, breakable=False, why="its process %s still runs on this host" % doc.get("pid"))
    if holder["expired"] or holder["process_gone"]:
        return dict(holder, breakable=True,
                    why="it expired" if holder["expired"] else "its process is gone from this host")
    if refreshed is None:
        return dict(holder, breakable=False, why="it does not say when it was last refreshed; it ends at %s"
                    % doc["expires"])
    silent_after = refreshed + (expires - refreshed) / 3
    if now < silent_after:
        return dict(holder, breakable=False, why=(
            "it was refreshed %ss ago, so its run may still be writing; stop that run, or wait until %s"
            % (holder["silent"], doc["expires"])))
    if not force:
        return dict(holder, breakable=False, why=(
            "it is not stale (it ends at %s) and silence is no proof its run is gone (a run waiting on the "
            "database refreshes nothing): set force if that run's host is down" % doc["expires"]))
    return dict(holder, breakable=True, why="force, and it has not been refreshed for %ss" % holder["silent"])


def read_holder(target: Target, appliance: str, now: datetime, force: bool = False) -> Optional[Dict[str, Any]]:
    """The judged holder of the appliance's lock, or None if there is no lock."""
    try:
        doc = ApplianceLock(target, appliance).peek()
    except TargetNotFound:
        return None
    except TargetInUse:
        doc = None  # being written this instant
    return judge_holder(doc, now, force)


def break_lock(target: Target, appliance: str, run_id: Optional[str] = None, force: bool = False,
               dry_run: bool = False, clock: Callable[[], datetime] = _utc_now,
               settle: float = SETTLE_SECONDS) -> Dict[str, Any]:
    """Break the appliance's lock if the rules above allow it.

    Returns {holder, would_break, broken, leftovers_removed}; holder is None when there is no lock. A dry
    run only judges. A real run raises LockBusy (nothing changed, ``holder`` attached) when the lock may
    not be broken, belongs to another run than ``run_id``, or turned out to be refreshed meanwhile.
    """
    appliance = catalog.validate_appliance(appliance)
    holder = read_holder(target, appliance, clock(), force)
    result: Dict[str, Any] = {"holder": holder, "would_break": False, "broken": False, "leftovers_removed": []}
    if holder is None:
        return result
    where = target.describe_path(catalog.lock_path(appliance))
    refusal = None
    if run_id is not None and holder.get("run_id") != run_id:
        refusal = "the lock %s belongs to run %s, not to run %s: nothing was broken" % (where, holder.get("run_id"), run_id)
    elif not holder["breakable"]:
        refusal = "refusing to break the lock %s of run %s (host %s, pid %s): %s" % (
            where, holder.get("run_id"), holder.get("host"), holder.get("pid"), holder["why"])
    result["would_break"] = refusal is None
    if dry_run:
        result["refusal"] = refusal
        return result
    if refusal is not None:
        raise _refused(refusal, holder)

    def still_the_judged_lock(doc: Optional[Dict[str, Any]]) -> bool:
        # Judged again on the lock as it is now: it may have been refreshed since we looked.
        return (doc is not None and doc.get("run_id") == holder.get("run_id")
                and judge_holder(doc, clock(), force)["breakable"])

    lock = ApplianceLock(target, appliance, clock=clock)
    lock.acquire(break_if=still_the_judged_lock)
    try:
        if lock.took_over is None:
            return result  # it was released meanwhile: nothing left to break
        time.sleep(settle)  # a refresh in flight at the takeover lands by now, and overwrites ours
        try:
            lock.refresh(force=True)
        except LockBusy:
            raise _refused("the lock %s was refreshed by its holder while being broken: its run is alive; "
                           "nothing was removed" % where, holder) from None
        result["broken"] = True
        # The broken run no longer holds its lock, so its partial objects are dead too.
        removed = heal_after_takeover(target, lock, force=True)
        result["leftovers_removed"] = removed.files if removed else []
    finally:
        lock.release()
    return result


def _refused(message: str, holder: Optional[Dict[str, Any]]) -> LockBusy:
    error = LockBusy(message)
    error.holder = holder  # type: ignore[attr-defined]  # the module reports it with the failure
    return error
