# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Looking at an appliance's lock, and breaking it by hand (the break_lock module).

Runs take over stale locks by themselves (locking.py): at once when the holder ran on the same host
and is gone, after the ttl otherwise. Breaking by hand is for the rest: a run that died on another
host (an AWX execution node that was replaced, a controller that rebooted), whose lock would block
the appliance until its ttl ends. A lock whose holder still refreshes it is never broken: a live run
rewrites ``refreshed`` every ttl/6 while it works, so a lock refreshed within the last third of its
ttl (two heartbeats) belongs to a run that may still be writing. The break itself is a takeover
(the same safe protocol as a stale lock), followed by the removal of the dead run's partial objects,
then the release.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Dict, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import format_utc, parse_utc
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import LockBusy, TargetInUse, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import ApplianceLock, holder_is_gone
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import heal_after_takeover
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target

HOLDER_KEYS = ("run_id", "host", "pid", "started", "refreshed", "expires")  # never the ownership token


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def judge_holder(doc: Optional[Dict[str, Any]], now: datetime) -> Dict[str, Any]:
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
        refreshed = parse_utc(doc.get("refreshed") or doc["started"])
    except (KeyError, TypeError, ValueError):
        refreshed = None
    if holder["expired"] or holder["process_gone"]:
        holder["breakable"] = True
        holder["why"] = "it expired" if holder["expired"] else "its process is gone from this host"
        return holder
    if refreshed is None:
        holder["breakable"] = False
        holder["why"] = "it does not say when it was last refreshed; it ends at %s" % doc["expires"]
        return holder
    silent_after = refreshed + (expires - refreshed) / 3
    holder["silent"] = round((now - refreshed).total_seconds(), 1)
    if now < silent_after:
        holder["breakable"] = False
        holder["why"] = ("it was refreshed %ss ago, so its run may still be writing; stop that run, or break it "
                         "from %s if it is not refreshed again" % (holder["silent"], format_utc(silent_after)))
    else:
        holder["breakable"] = True
        holder["why"] = "it has not been refreshed for %ss (two heartbeats missed)" % holder["silent"]
    return holder


def read_holder(target: Target, appliance: str, now: datetime) -> Optional[Dict[str, Any]]:
    """The judged holder of the appliance's lock, or None if there is no lock."""
    try:
        doc = ApplianceLock(target, appliance).peek()
    except TargetNotFound:
        return None
    except TargetInUse:
        doc = None  # being written this instant
    return judge_holder(doc, now)


def break_lock(target: Target, appliance: str, run_id: Optional[str] = None, dry_run: bool = False,
               clock: Callable[[], datetime] = _utc_now) -> Dict[str, Any]:
    """Break the appliance's lock if its holder no longer refreshes it.

    Returns {holder, broken, leftovers_removed}; holder is None when there is no lock. LockBusy (nothing
    changed) when the lock is still refreshed, belongs to another run than ``run_id``, or changed while
    it was being broken.
    """
    appliance = catalog.validate_appliance(appliance)
    holder = read_holder(target, appliance, clock())
    result: Dict[str, Any] = {"holder": holder, "broken": False, "leftovers_removed": []}
    if holder is None:
        return result
    where = target.describe_path(catalog.lock_path(appliance))
    if run_id is not None and holder.get("run_id") != run_id:
        raise LockBusy("the lock %s belongs to run %s, not to run %s: nothing was broken"
                       % (where, holder.get("run_id"), run_id))
    if not holder["breakable"]:
        raise LockBusy("refusing to break the lock %s of run %s (host %s, pid %s): %s"
                       % (where, holder.get("run_id"), holder.get("host"), holder.get("pid"), holder["why"]))
    if dry_run:
        return result

    def still_the_judged_lock(doc: Optional[Dict[str, Any]]) -> bool:
        # Judged again on the lock as it is now: it may have been refreshed since we looked.
        return doc is not None and doc.get("run_id") == holder.get("run_id") and judge_holder(doc, clock())["breakable"]

    lock = ApplianceLock(target, appliance, clock=clock)
    lock.acquire(break_if=still_the_judged_lock)
    try:
        if lock.took_over is None:
            return result  # it was released meanwhile: nothing left to break
        result["broken"] = True
        # The broken run no longer refreshes its lock, so its partial objects are dead too.
        removed = heal_after_takeover(target, lock, force=True)
        result["leftovers_removed"] = removed.files if removed else []
    finally:
        lock.release()
    return result
