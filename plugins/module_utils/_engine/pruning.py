# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pruning a target: the retention policy per appliance, stale partial uploads, and session
recordings that no surviving snapshot references.

How a prune decides, and why it reads so little:
- Per appliance, under the appliance lock (so no snapshot is written meanwhile: a snapshot run
  that finished between our listing and our removals could reference a recording we remove).
- One listing of ``<appliance>/snapshots/``, read by presence (catalog.list_snapshots with
  read_sidecars=False): object + sidecar means complete. No sidecar is read to decide.
- The policy (retention.plan) then keeps some snapshots. Only the complete ones it keeps have
  their sidecar read and checked against the object's listed size; one that turns out damaged is
  taken out of the rules and the plan is made again (bounded: each round removes one snapshot
  from the rules). So the kept set is the one a fully checked listing would give, for the price of
  reading only the kept sidecars (tens, not thousands).
- Consequence, on purpose: a snapshot the policy drops is removed without reading its sidecar,
  even if that sidecar is damaged. Snapshots with no object (orphaned) and unfinished uploads are
  never counted by the policy and never removed by it; partial uploads go only after ``partial_grace``.
- Session recordings: referenced = the ``<stem>.sessions.json`` lists of every surviving snapshot.
  When a surviving complete snapshot took sessions but has no readable list (e.g. it was taken by
  an older version), no recording is removed at all and a warning says why.
- Order of removal: snapshots (each sidecar first, so it stops being complete at once), then
  partial uploads, then recordings, so an interruption never leaves a complete snapshot pointing
  at a missing recording.
- Before removing anything, the lock is confirmed (still ours, refreshed: a prune that stalled while
  planning and lost its lock removes nothing), and every path is checked to lie inside exactly this
  appliance's folder, every snapshot to be listed for it and its sidecar (read for this check) to name
  it: a sidecar that names another appliance (or a case variant: on SMB that is another appliance's
  folder) stops the prune of this appliance before it removes anything.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, retention
from ansible_collections.segura.backup.plugins.module_utils._engine.clock_skew import (
    DEFAULT_FUTURE_TOLERANCE,
    describe_future_dated,
    is_future_dated,
    parse_future_tolerance,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError, ConfigError, IntegrityError, TargetError, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.holders import takeover_message
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import DEFAULT_TTL, ApplianceLock, refuse_case_variant
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target

DEFAULT_PARTIAL_GRACE = timedelta(hours=24)
FUTURE_TOLERANCE = parse_future_tolerance(DEFAULT_FUTURE_TOLERANCE)
SESSION_INDEX_NAMES = ("index.json", "index.json.partial")  # the sync cache, not a recording
_MAX_SESSION_DEPTH = 8  # YYYY/MMDD/file is depth 3; anything far deeper is not ours
_MAX_SESSION_DIRS = 200000


@dataclass(frozen=True)
class SessionFile:
    path: str  # target-relative
    size: int
    mtime: float


def list_session_files(target: Target, appliance: str) -> Tuple[List[SessionFile], List[SessionFile]]:
    """(recordings, leftover '.partial' uploads) below ``<appliance>/sessions/``; one listdir per folder.

    The sync index at the top is neither. TargetError if a folder cannot be listed (the picture
    would be incomplete); a missing sessions folder means no recordings.
    """
    top = catalog.sessions_dir(appliance)
    files: List[SessionFile] = []
    partials: List[SessionFile] = []
    pending = [(top, 0)]
    visited = 0
    while pending:
        directory, depth = pending.pop()
        visited += 1
        if visited > _MAX_SESSION_DIRS:
            raise TargetError("%s holds more than %d folders; refusing to walk it"
                              % (target.describe_path(top), _MAX_SESSION_DIRS))
        try:
            entries = target.listdir(directory)
        except TargetNotFound:
            if directory == top:
                return [], []
            raise TargetError("%s vanished while being listed" % target.describe_path(directory)) from None
        for entry in sorted(entries, key=lambda e: e.name):
            relpath = "%s/%s" % (directory, entry.name)
            if entry.is_dir:
                if depth + 1 > _MAX_SESSION_DEPTH:
                    raise TargetError("%s is nested deeper than %d folders; refusing to walk it"
                                      % (target.describe_path(relpath), _MAX_SESSION_DEPTH))
                pending.append((relpath, depth + 1))
            elif directory == top and entry.name in SESSION_INDEX_NAMES:
                continue
            elif entry.name.endswith(catalog.PARTIAL_SUFFIX):
                partials.append(SessionFile(relpath, entry.size, entry.mtime))
            else:
                files.append(SessionFile(relpath, entry.size, entry.mtime))
    files.sort(key=lambda f: f.path)
    partials.sort(key=lambda f: f.path)
    return files, partials


def referenced_sessions(target: Target, records: List[catalog.SnapshotRecord]) -> Tuple[Optional[Set[str]], List[str]]:
    """(paths the records' session lists reference, warnings). None instead of the set when some
    record's references cannot be known: a complete snapshot that took sessions without a
    readable ``.sessions.json``, or any list that exists but cannot be read."""
    referenced: Set[str] = set()
    for record in records:
        name = catalog.sessions_list_name(record.object)
        if record.has_sessions_list:
            problem = None
            try:
                referenced.update(item["path"] for item in catalog.read_sessions_list(target, record))
                continue
            except TargetNotFound:
                problem = "%s/%s vanished while being read" % (record.appliance, name)
            except (IntegrityError, TargetError) as exc:
                problem = str(exc)
            return None, ["the session list of snapshot %s/%s cannot be read (%s); no session recording can "
                          "safely be judged unreferenced" % (record.appliance, record.id, problem)]
        if record.complete and not record.checked:
            catalog.load_sidecar(target, record)
        if record.complete and record.took_sessions:
            return None, ["snapshot %s/%s took session recordings but has no %s (taken by a version before "
                          "0.1.0's session lists?); no session recording can safely be judged unreferenced "
                          "until it is gone" % (record.appliance, record.id, name)]
    return referenced, []


# ---------------------------------------------------------------------------------------------
# Plan


@dataclass
class AppliancePlan:
    """What pruning one appliance keeps and removes, and why."""

    appliance: str
    before: List[str] = field(default_factory=list)  # ids of every snapshot listed, newest first
    kept: List[Dict[str, Any]] = field(default_factory=list)  # {"id", "created", "status", "reasons"}
    remove: List[catalog.SnapshotRecord] = field(default_factory=list)
    partials: List[catalog.SnapshotRecord] = field(default_factory=list)
    sessions: List[SessionFile] = field(default_factory=list)  # unreferenced recordings
    session_partials: List[SessionFile] = field(default_factory=list)  # stale '.partial' recordings
    warnings: List[str] = field(default_factory=list)
    sidecars_read: int = 0

    @property
    def after(self) -> List[str]:
        gone = {r.id for r in self.remove} | {r.id for r in self.partials}
        return [snap_id for snap_id in self.before if snap_id not in gone]

    @property
    def bytes_freed(self) -> int:
        return (sum(r.stored_bytes for r in self.remove + self.partials)
                + sum(f.size for f in self.sessions + self.session_partials))

    @property
    def changes(self) -> bool:
        return bool(self.remove or self.partials or self.sessions or self.session_partials)


def _plan_retention(target: Target, records: List[catalog.SnapshotRecord], policy: retention.Policy,
                    now: datetime, tz: tzinfo, plan: AppliancePlan,
                    future_tolerance: timedelta = FUTURE_TOLERANCE) -> List[retention.Decision]:
    """retention.plan on a listing by presence, checking the sidecars of the kept snapshots only."""
    by_id = {r.id: r for r in records}
    # Names carry whole seconds: for two complete snapshots of the same second, only their sidecars
    # say which is newer (otherwise the random id would decide, and keep_last could drop the newest).
    per_second = Counter(r.created for r in records if r.complete)
    for record in records:
        if record.complete and not record.checked and per_second[record.created] > 1:
            catalog.load_sidecar(target, record)
            plan.sidecars_read += 1
    for dummy in range(len(records) + 1):
        decisions = retention.plan([r.ref() for r in records], policy, now, tz, future_tolerance)
        unchecked = [by_id[d.id] for d in decisions if d.keep and by_id[d.id].complete and not by_id[d.id].checked]
        if not unchecked:
            return decisions
        for record in unchecked:
            catalog.load_sidecar(target, record)  # TargetError: unreadable, refuse to go on
            plan.sidecars_read += 1
    raise AssertionError("retention did not settle")  # pragma: no cover - each round checks one more


def plan_appliance(
    target: Target,
    appliance: str,
    policy: retention.Policy,
    now: datetime,
    partial_grace: timedelta = DEFAULT_PARTIAL_GRACE,
    tz: tzinfo = timezone.utc,
    prune_sessions: bool = True,
    future_tolerance: timedelta = FUTURE_TOLERANCE,
) -> AppliancePlan:
    """Decide what pruning ``appliance`` would do; reads, never writes.

    Raises TargetError when the listing is incomplete or a kept sidecar cannot be read: prune must
    not act on half a picture. A snapshot dated more than ``future_tolerance`` ahead of ``now`` is
    kept aside, with a warning (clock_skew.py).
    """
    if partial_grace < timedelta(0):
        raise ConfigError("partial_grace must not be negative")
    listing = catalog.list_snapshots(target, appliance, read_sidecars=False)
    listing.require_complete()
    records = listing.snapshots
    plan = AppliancePlan(appliance, before=[r.id for r in records])
    decisions = _plan_retention(target, records, policy, now, tz, plan, future_tolerance)
    by_id = {r.id: r for r in records}
    stale = {r.id for r in retention.stale_partials(records, partial_grace, now)}
    for decision in decisions:
        record = by_id[decision.id]
        if decision.keep and record.id not in stale:
            plan.kept.append({"id": record.id, "created": catalog.format_utc(record.created), "status": record.status,
                              "reasons": list(decision.reasons), "problem": record.problem})
        elif decision.keep:
            plan.partials.append(record)
        else:
            plan.remove.append(record)
    _guard_newest_complete([r for r in records if not is_future_dated(r.created, now, future_tolerance)], plan)
    plan.warnings.extend(describe_future_dated(r, now) for r in records
                         if r.complete and is_future_dated(r.created, now, future_tolerance))

    if prune_sessions:
        gone = {r.id for r in plan.remove + plan.partials}
        survivors = [r for r in records if r.id not in gone]
        referenced, warnings = referenced_sessions(target, survivors)
        plan.warnings.extend(warnings)
        files, partials = list_session_files(target, appliance)
        cutoff = now.timestamp() - partial_grace.total_seconds()
        plan.session_partials = [f for f in partials if f.mtime < cutoff]
        if referenced is not None:
            plan.sessions = [f for f in files if f.path not in referenced]
    return plan


def _guard_newest_complete(records: List[catalog.SnapshotRecord], plan: AppliancePlan) -> None:
    """Belt and braces over retention.plan: the newest checked complete snapshot never goes."""
    complete = [r for r in records if r.complete and r.checked]
    if complete:
        newest = max(complete, key=lambda r: (r.created, r.id))
        if any(r is newest for r in plan.remove + plan.partials):
            raise IntegrityError("refusing to prune: the plan would remove the newest complete snapshot %s/%s"
                                 % (newest.appliance, newest.id))


# ---------------------------------------------------------------------------------------------
# Apply


@dataclass
class Removed:
    """What was actually removed (filled as it goes, so an interrupted prune still reports it)."""

    files: List[str] = field(default_factory=list)
    bytes: int = 0


@dataclass
class ApplianceOutcome:
    """The plan of one appliance and, unless it was a dry run, what was actually removed."""

    plan: Optional[AppliancePlan]
    appliance: str
    applied: bool = False
    removed: Removed = field(default_factory=Removed)
    error: Optional[str] = None
    lock_takeover: Optional[str] = None  # whose stale lock this prune took over, if it did
    leftovers: Optional[Removed] = None  # ...and what that dead run left, removed at once

    def to_dict(self) -> Dict[str, Any]:
        plan = self.plan or AppliancePlan(self.appliance)
        return {
            "appliance": self.appliance,
            "kept": plan.kept,
            "removed": [_snapshot_summary(r) for r in plan.remove],
            "partials_removed": [_snapshot_summary(r) for r in plan.partials],
            "sessions_removed": [f.path for f in plan.sessions + plan.session_partials],
            "sessions_bytes_freed": sum(f.size for f in plan.sessions + plan.session_partials),
            # a dry run reports what would be freed; a real run what was freed (also when interrupted)
            "bytes_freed": self.removed.bytes if self.applied else (plan.bytes_freed if self.error is None else 0),
            "before": list(plan.before),
            "after": plan.after,
            "warnings": list(plan.warnings),
            "sidecars_read": plan.sidecars_read,
            "applied": self.applied,
            "files_removed": len(self.removed.files),
            "error": self.error,
            "lock_takeover": self.lock_takeover,
            "leftovers_removed": list(self.leftovers.files) if self.leftovers else [],
        }


def _snapshot_summary(record: catalog.SnapshotRecord) -> Dict[str, Any]:
    return {"id": record.id, "created": catalog.format_utc(record.created), "status": record.status,
            "bytes": record.stored_bytes, "files": list(record.files)}


def remove_dead_run_leftovers(target: Target, appliance: str, heartbeat: Callable[[], Any] = lambda: None,
                              removed: Optional[Removed] = None) -> Removed:
    """Right after taking over the lock of a run that is provably gone (``holders.holder_is_gone``):
    its partial snapshot objects and half-written session files go at once instead of at the next
    prune. Only a lock holder writes them, so while we hold the lock every one is a dead run's. Call
    it holding the lock, before writing anything. An incomplete listing removes nothing (prune will).
    """
    removed = removed if removed is not None else Removed()
    listing = catalog.list_snapshots(target, appliance, read_sidecars=False)
    if listing.errors:
        return removed
    plan = AppliancePlan(appliance)
    plan.partials = [record for record in listing.snapshots if record.status == "partial"]
    plan.session_partials = list_session_files(target, appliance)[1]
    return apply_plan(target, plan, heartbeat, removed=removed)


def heal_after_takeover(target: Target, lock: ApplianceLock, force: bool = False) -> Optional[Removed]:
    """What a run does right after taking the lock: when it took over a run that is provably gone
    (or ``force``: a lock broken by hand), remove that run's leftovers at once. A cleanup, not the
    job: a target error here stops it with what was removed so far (prune removes the rest later), and
    the run goes on."""
    if lock.took_over is None or not (lock.took_over_from_gone_run or force):
        return None
    removed = Removed()
    try:
        return remove_dead_run_leftovers(target, lock.appliance, heartbeat=lock.check, removed=removed)
    except TargetError:
        return removed


def _sidecar_claim(target: Target, record: catalog.SnapshotRecord) -> Optional[str]:
    """The appliance the record's sidecar names (read now if the listing did not), or None when it has no
    sidecar or one that does not parse (damaged: the design removes those unread, by their folder)."""
    if record.sidecar is not None:
        return record.sidecar.appliance
    relpath = "%s/%s" % (catalog.snapshots_dir(record.appliance), record.stem + catalog.SIDECAR_SUFFIX)
    if relpath not in record.files:
        return None
    try:
        doc = json.loads(catalog.read_small(target, relpath).decode("utf-8"))
    except TargetNotFound:
        return None
    except (IntegrityError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    claim = doc.get("appliance") if isinstance(doc, dict) else None
    return claim if isinstance(claim, str) else None


def _inside(relpath: str, folder: str) -> bool:
    """``relpath`` is a clean path strictly below ``folder`` (exact case: SMB folds it, we do not)."""
    parts = relpath.split("/")
    return (relpath.startswith(folder + "/") and all(part not in ("", ".", "..") for part in parts)
            and len(parts) > len(folder.split("/")))


def check_own_files(target: Target, plan: AppliancePlan) -> None:
    """IntegrityError, before anything is removed, unless every path the plan removes lies inside exactly
    ``<appliance>/`` (snapshot files directly in its snapshots folder, recordings below its sessions
    folder), every snapshot was listed for this appliance, and no sidecar names another appliance."""
    appliance = plan.appliance
    snapshots, sessions = catalog.snapshots_dir(appliance), catalog.sessions_dir(appliance)
    for record in plan.remove + plan.partials:
        where = "%s/%s" % (record.appliance, record.id)
        if record.appliance != appliance:
            raise IntegrityError("refusing to prune %r: snapshot %s belongs to appliance %r"
                                 % (appliance, where, record.appliance))
        for relpath in record.files:
            if not _inside(relpath, snapshots) or "/" in relpath[len(snapshots) + 1:]:
                raise IntegrityError("refusing to prune %r: %s of snapshot %s is not inside %s/"
                                     % (appliance, relpath, where, snapshots))
        claim = _sidecar_claim(target, record)
        if claim is not None and claim != appliance:
            raise IntegrityError(
                "refusing to prune %r: the sidecar of snapshot %s in its folder says it belongs to appliance %r "
                "(copied there by hand? an appliance name differing only in case on an SMB share?); nothing "
                "was removed, look at %s" % (appliance, record.id, claim, target.describe_path(snapshots)))
    for session in plan.sessions + plan.session_partials:
        if not _inside(session.path, sessions):
            raise IntegrityError("refusing to prune %r: the recording %s is not inside %s/"
                                 % (appliance, session.path, sessions))


def apply_plan(target: Target, plan: AppliancePlan, heartbeat: Callable[[], Any] = lambda: None,
               removed: Optional[Removed] = None) -> Removed:
    """Remove what the plan says, in the safe order, after ``check_own_files``; ``heartbeat`` (the lock's
    check) runs per item."""
    removed = removed if removed is not None else Removed()
    check_own_files(target, plan)
    for record in plan.remove + plan.partials:
        removed.files.extend(catalog.remove_snapshot(target, record))
        removed.bytes += record.stored_bytes
        heartbeat()
    folders = set()
    for session in plan.sessions + plan.session_partials:
        if catalog.remove_file(target, session.path):
            removed.files.append(session.path)
            removed.bytes += session.size
        folders.add(posixpath.dirname(session.path))
        heartbeat()
    _remove_empty_folders(target, plan.appliance, folders)
    return removed


def _remove_empty_folders(target: Target, appliance: str, folders: Set[str]) -> None:
    """Best effort: day folders (and then year folders) left empty; a non-empty one stays."""
    top = catalog.sessions_dir(appliance)
    pending = sorted(folders, key=lambda p: p.count("/"), reverse=True)
    done = set()
    while pending:
        folder = pending.pop(0)
        if folder in done or folder == top or not folder.startswith(top + "/"):
            continue
        done.add(folder)
        try:
            target.rmdir(folder)
        except BackupError:
            continue  # not empty (or not ours to judge): leave it
        pending.append(posixpath.dirname(folder))


def prune(
    target: Target,
    policy: retention.Policy,
    appliance: Optional[str] = None,
    now: Optional[datetime] = None,
    partial_grace: timedelta = DEFAULT_PARTIAL_GRACE,
    tz: tzinfo = timezone.utc,
    prune_sessions: bool = True,
    dry_run: bool = False,
    lock_ttl: timedelta = DEFAULT_TTL,
    future_tolerance: timedelta = FUTURE_TOLERANCE,
) -> List[ApplianceOutcome]:
    """Prune one appliance, or every appliance below the root, each under its lock.

    A dry run plans without the lock and writes nothing. An appliance that cannot be pruned (its
    listing is incomplete, its lock is held, a removal failed) gets ``error`` and the others go on.
    TargetError if the root cannot be listed (then nothing is known, and nothing is done).
    """
    now = now or datetime.now(timezone.utc)
    if appliance is not None:
        names = [catalog.validate_appliance(appliance)]
    else:
        names, error = catalog.list_appliances(target)
        if error:
            raise TargetError("refusing to prune: the snapshot listing is incomplete: %s" % error)
    outcomes = []
    for name in names:
        outcome = ApplianceOutcome(None, name)
        try:
            if dry_run:
                refuse_case_variant(target, name, names if appliance is None else None)
                outcome.plan = plan_appliance(target, name, policy, now, partial_grace, tz, prune_sessions,
                                              future_tolerance)
            else:
                with ApplianceLock(target, name, ttl=lock_ttl) as lock:  # acquire() refuses case variants
                    outcome.lock_takeover = takeover_message(lock.took_over)
                    outcome.leftovers = heal_after_takeover(target, lock)
                    outcome.plan = plan_appliance(target, name, policy, now, partial_grace, tz, prune_sessions,
                                                  future_tolerance)
                    if outcome.plan.changes:
                        lock.confirm("nothing was removed")  # planned under our lock: still ours to act on?
                        outcome.applied = True
                        apply_plan(target, outcome.plan, heartbeat=lock.check, removed=outcome.removed)
                        index_warning = catalog.update_index(target, name)
                        if index_warning:
                            outcome.plan.warnings.append(index_warning)
                if lock.release_warning and outcome.plan is not None:
                    outcome.plan.warnings.append(lock.release_warning)
        except BackupError as exc:
            outcome.error = "appliance %s: %s" % (name, exc)
        outcomes.append(outcome)
    return outcomes
