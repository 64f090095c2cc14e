# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Listing the catalog: which snapshots exist on a target, and how complete each one is."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.index import IndexCopies, load_index
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.names import (
    ENCRYPTED_SUFFIX,
    OBJECT_SUFFIX,
    PARTIAL_SUFFIX,
    SESSIONS_SUFFIX,
    SIDECAR_SUFFIX,
    SIGNATURE_SUFFIX,
    SNAPSHOT_FILE,
    STATUS_COMPLETE,
    STATUS_DAMAGED,
    STATUS_ORPHANED,
    STATUS_PARTIAL,
    VERIFY_SUFFIX,
    format_utc,
    parse_object_name,
    snapshots_dir,
    stem_of,
    utc,
    validate_appliance,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.sidecar import Sidecar
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.store import read_small
from ansible_collections.segura.backup.plugins.module_utils._engine.clock_skew import flag_future_dated
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, IntegrityError, TargetError, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.retention import SnapshotRef
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target

# ---------------------------------------------------------------------------------------------
# Listing


@dataclass
class SnapshotRecord:
    """One snapshot as found on the target."""

    id: str
    appliance: str
    created: datetime
    object: str  # the object's final name (also for partial uploads)
    encrypted: bool
    status: str  # complete | partial | orphaned | damaged
    size: Optional[int]  # listed size of the object (or of its partial); None if absent
    sha256: Optional[str]  # from the sidecar
    mtime: Optional[float]  # newest modification time among the snapshot's files
    sidecar: Optional[Sidecar] = None
    verification: Optional[Dict[str, Any]] = None
    problem: Optional[str] = None  # why it is damaged
    files: List[str] = field(default_factory=list)  # target-relative paths of every file of this snapshot
    stored_bytes: int = 0  # listed sizes of all those files together (what removing it frees)
    #: False until the sidecar was read and checked (a listing with read_sidecars=False judges
    #: completeness by which files exist; see list_snapshots)
    checked: bool = False
    #: dated more than the tolerance ahead of now (clock_skew.py); set by Listing.flag_future_dated
    future_dated: bool = False
    _entries: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # kind -> Entry
    # name -> (Entry, bytes) of the sidecar and verification record as judged with an index: what it keeps
    _copies: Dict[str, Tuple[Any, bytes]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    @property
    def stem(self) -> str:
        return stem_of(self.object)

    @property
    def object_relpath(self) -> str:
        return "%s/%s" % (snapshots_dir(self.appliance), self.object)

    @property
    def has_sessions_list(self) -> bool:
        return SESSIONS_SUFFIX in self._entries

    @property
    def signed(self) -> bool:
        """A signature file exists (whether it is valid is checked by verify and restore)."""
        return SIGNATURE_SUFFIX in self._entries

    @property
    def took_sessions(self) -> Optional[bool]:
        """Whether the snapshot took the sessions component; None when its sidecar was not read."""
        return None if self.sidecar is None else "sessions" in self.sidecar.components

    def require_sidecar(self) -> Sidecar:
        """The sidecar of a record that has one for sure: complete, from a listing that read sidecars."""
        if self.sidecar is None:
            raise RuntimeError("snapshot %s of %s: its sidecar was not read" % (self.id, self.appliance))
        return self.sidecar

    def ref(self) -> SnapshotRef:
        return SnapshotRef(self.id, self.created, self.complete)

    def to_dict(self, now: Optional[datetime] = None) -> Dict[str, Any]:
        """JSON-friendly: core fields, then the sidecar's fields, then the last verification.

        With ``now``, also ``age_seconds`` (whole seconds since the snapshot was created).
        """
        result: Dict[str, Any] = {}
        if self.sidecar is not None:
            result.update(self.sidecar.to_dict())
            del result["format"]
        result.update(
            {
                "id": self.id,
                "appliance": self.appliance,
                "created": format_utc(self.created),
                "object": self.object,
                "encrypted": self.encrypted,
                "status": self.status,
                "size": self.size,
                "sha256": self.sha256,
                "problem": self.problem,
                "verification": self.verification,
                "files": list(self.files),
                "stored_bytes": self.stored_bytes,
                "sessions_list": self.has_sessions_list,
                "future_dated": self.future_dated,
                "signed": self.signed,
            }
        )
        if now is not None:
            result["age_seconds"] = int((utc(now, "now") - self.created).total_seconds())
        return result


@dataclass
class Listing:
    """What ``list_snapshots`` found. ``complete`` is False when any directory or sidecar could not be read."""

    snapshots: List[SnapshotRecord]
    appliances: List[str]
    complete: bool = True
    errors: List[str] = field(default_factory=list)
    sidecars_read: bool = True
    indexes: Dict[str, IndexCopies] = field(default_factory=dict)  # appliance -> its index (use_index=True)

    def for_appliance(self, appliance: str) -> List[SnapshotRecord]:
        return [record for record in self.snapshots if record.appliance == appliance]

    def find(self, snap_id: str, appliance: Optional[str] = None) -> List[SnapshotRecord]:
        """Every record with this id (of one appliance, when given)."""
        return [r for r in self.snapshots if r.id == snap_id and (appliance is None or r.appliance == appliance)]

    def flag_future_dated(self, now: datetime, tolerance: timedelta) -> List[SnapshotRecord]:
        """Mark the snapshots dated more than ``tolerance`` ahead of ``now``; returns them (clock_skew.py)."""
        return flag_future_dated(self.snapshots, utc(now, "now"), tolerance)

    def require_complete(self) -> None:
        """Raise TargetError unless every directory was listed (prune must not act on half a picture)."""
        if not self.complete:
            raise TargetError("the snapshot listing is incomplete: %s" % "; ".join(self.errors))

    def to_dict(self, now: Optional[datetime] = None, snapshots: bool = True) -> Dict[str, Any]:
        """JSON-friendly; ``snapshots=False`` leaves out the records (costly at thousands of snapshots)."""
        return {
            "snapshots": [record.to_dict(now) for record in self.snapshots] if snapshots else [],
            "appliances": list(self.appliances),
            "complete": self.complete,
            "errors": list(self.errors),
        }


def appliance_summaries(listing: Listing, now: datetime) -> List[Dict[str, Any]]:
    """Per appliance: counts by status, bytes stored, the latest snapshot and the latest complete one.

    ``latest_complete`` (a record as ``to_dict(now)`` gives it, or None) is what "is this appliance
    backed up?" questions need, e.g. a JMESPath query for appliances whose latest complete snapshot
    is older than 26 hours. ``latest`` and ``latest_complete`` pass over future-dated snapshots
    (flagged by ``Listing.flag_future_dated``), which ``future_dated`` counts.
    """
    names = sorted(set(listing.appliances) | {r.appliance for r in listing.snapshots})
    summaries = []
    for name in names:
        records = listing.for_appliance(name)  # newest first
        current = [r for r in records if not r.future_dated]
        complete = [r for r in current if r.complete]
        verified = [r.verification for r in records
                    if r.verification is not None and isinstance(r.verification.get("recorded"), str)]
        summary: Dict[str, Any] = {"name": name, "snapshots": len(records), "stored_bytes": sum(r.stored_bytes for r in records)}
        for status in (STATUS_COMPLETE, STATUS_PARTIAL, STATUS_ORPHANED, STATUS_DAMAGED):
            summary[status] = sum(1 for r in records if r.status == status)
        summary["future_dated"] = len(records) - len(current)
        summary["latest"] = current[0].to_dict(now) if current else None
        summary["latest_complete"] = complete[0].to_dict(now) if complete else None
        summary["last_verification"] = max(verified, key=lambda v: v["recorded"]) if verified else None
        summaries.append(summary)
    return summaries


def list_appliances(target: Target) -> Tuple[List[str], Optional[str]]:
    """(appliance directory names below the root, error or None). A missing root means none."""
    try:
        entries = target.listdir("")
    except TargetNotFound:
        return [], None
    except TargetError as exc:
        return [], str(exc)
    return sorted(e.name for e in entries if e.is_dir and _is_appliance_name(e.name)), None


def list_snapshots(target: Target, appliance: Optional[str] = None, read_sidecars: bool = True,
                   use_index: bool = False) -> Listing:
    """List the snapshots of one appliance, or of every appliance below the root. Newest first.

    One ``listdir`` of the root (only when ``appliance`` is None) and one of each appliance's
    ``snapshots/`` directory; sizes come from the listing, no per-snapshot stat. A missing directory
    means no snapshots, not an error.

    ``read_sidecars=True`` reads every sidecar and verification record (small files, but one round
    trip each on a share) and checks each sidecar against its object's listed size.
    ``read_sidecars=False`` reads nothing but the directories: a snapshot whose object and sidecar
    both exist is taken as complete, unchecked (``checked`` False); ``load_sidecar`` checks one
    later. Prune decides on such a listing and checks only the snapshots it keeps.

    ``use_index=True`` (with ``read_sidecars``) judges each file the appliance's index holds an
    unchanged copy of from that copy (index.py): one read per appliance instead of one per snapshot.
    Only for listings that are shown, never for a decision: prune, verify and restore read the files.
    """
    listing = Listing(snapshots=[], appliances=[], sidecars_read=read_sidecars)
    if appliance is not None:
        names = [validate_appliance(appliance)]
    else:
        names, error = list_appliances(target)
        if error:
            listing.complete = False
            listing.errors.append(error)
    listing.appliances = names
    for name in names:
        directory = snapshots_dir(name)
        try:
            entries = target.listdir(directory)
        except TargetNotFound:
            continue
        except TargetError as exc:
            listing.complete = False
            listing.errors.append(str(exc))
            continue
        index = load_index(target, name, entries) if read_sidecars and use_index else None
        if index is not None:
            listing.indexes[name] = index
        for record in records_from_entries(name, entries):
            if read_sidecars:
                _read_details(target, listing, record, index)
            listing.snapshots.append(record)
    listing.snapshots.sort(key=lambda r: (r.created, r.id, r.appliance), reverse=True)
    return listing


def _is_appliance_name(name: str) -> bool:
    try:
        validate_appliance(name)
    except ConfigError:
        return False
    return True


def records_from_entries(appliance: str, entries: List[Any]) -> List[SnapshotRecord]:
    """Group one ``snapshots/`` directory listing into records, status judged by which files exist."""
    groups: Dict[str, Dict[str, Any]] = {}
    for entry in entries:
        match = SNAPSHOT_FILE.fullmatch(entry.name)
        if match and not entry.is_dir and parse_object_name(match.group("stem") + OBJECT_SUFFIX) is not None:
            groups.setdefault(match.group("stem"), {})[match.group("kind")] = entry
    return [_record_by_presence(appliance, stem, files) for stem, files in groups.items()]


def _record_by_presence(appliance: str, stem: str, files: Dict[str, Any]) -> SnapshotRecord:
    directory = snapshots_dir(appliance)
    parsed = parse_object_name(stem + OBJECT_SUFFIX)
    if parsed is None:
        raise AssertionError("records_from_entries groups only names that parse")
    created, snap_id, dummy = parsed
    objects = {kind: entry for kind, entry in files.items() if kind.startswith(".tar.zst")}
    # Prefer a finished object over a partial one, and the encrypted name when (oddly) both exist.
    best_kind = sorted(objects, key=lambda k: (k.endswith(PARTIAL_SUFFIX), not k.startswith(ENCRYPTED_SUFFIX)))
    object_kind = best_kind[0] if best_kind else None
    encrypted = object_kind.startswith(ENCRYPTED_SUFFIX) if object_kind else True
    record = SnapshotRecord(
        id=snap_id,
        appliance=appliance,
        created=created,
        object=stem + (ENCRYPTED_SUFFIX if encrypted else OBJECT_SUFFIX),
        encrypted=encrypted,
        status=STATUS_PARTIAL,
        size=objects[object_kind].size if object_kind else None,
        sha256=None,
        mtime=max(entry.mtime for entry in files.values()),
        files=sorted("%s/%s" % (directory, entry.name) for entry in files.values()),
        stored_bytes=sum(entry.size for entry in files.values()),
        _entries=dict(files),
    )
    if SIDECAR_SUFFIX not in files:
        return record  # no sidecar: an upload that did not finish (or a removal that did not)
    final = [kind for kind in (ENCRYPTED_SUFFIX, OBJECT_SUFFIX) if kind in files]
    if not final:
        record.status = STATUS_ORPHANED
        record.size = None
        record.problem = "the object does not exist (its sidecar does)"
        return record
    record.object = stem + final[0]
    record.encrypted = final[0] == ENCRYPTED_SUFFIX
    record.size = files[final[0]].size
    record.status = STATUS_COMPLETE  # by presence; load_sidecar() checks it
    return record


def _read_details(target: Target, listing: Listing, record: SnapshotRecord, index: Optional[IndexCopies]) -> None:
    if VERIFY_SUFFIX in record._entries:
        record.verification = _read_verification(target, record, index)
    try:
        load_sidecar(target, record, index)
    except TargetError as exc:
        listing.complete = False
        listing.errors.append(str(exc))


def load_sidecar(target: Target, record: SnapshotRecord, index: Optional[IndexCopies] = None) -> SnapshotRecord:
    """Read and check the sidecar of a record listed by presence; sets status, sidecar and sha256.

    complete: the sidecar is valid, describes this snapshot and the object has its size;
    damaged: it is not valid, or disagrees with the object; orphaned: the object is missing;
    partial: the sidecar vanished since the listing. Raises TargetError when the sidecar exists
    but cannot be read (the record is then marked damaged with that reason): the picture is incomplete.
    With ``index``, an unchanged copy there is judged instead of reading the file.
    """
    entries = record._entries
    if SIDECAR_SUFFIX not in entries or record.checked:
        return record
    record.checked = True
    directory = snapshots_dir(record.appliance)
    stem = record.stem
    sidecar_relpath = "%s/%s%s" % (directory, stem, SIDECAR_SUFFIX)
    try:
        data = _small_file(target, sidecar_relpath, entries[SIDECAR_SUFFIX], index, record)
        sidecar = Sidecar.from_json(data, target.describe_path(sidecar_relpath))
    except TargetNotFound:
        record.status = STATUS_PARTIAL  # removed after we listed it: no longer complete
        return record
    except IntegrityError as exc:
        return _damaged(record, str(exc))
    except TargetError as exc:
        _damaged(record, "sidecar could not be read: %s" % exc)
        raise

    record.sidecar = sidecar
    record.sha256 = sidecar.sha256
    if sidecar.id != record.id or sidecar.appliance != record.appliance or stem_of(sidecar.object) != stem:
        return _damaged(
            record, "sidecar describes %s/%s, not %s/%s" % (sidecar.appliance, sidecar.object, record.appliance, stem)
        )
    record.object = sidecar.object
    record.encrypted = sidecar.encrypted
    listed = entries.get(sidecar.object[len(stem):])
    if listed is None:
        record.status = STATUS_ORPHANED
        record.size = None
        record.problem = "the object %s does not exist (its sidecar does)" % sidecar.object
        return record
    record.size = listed.size
    if listed.size != sidecar.size:
        return _damaged(
            record, "object %s is %d bytes on the target, the sidecar says %d" % (sidecar.object, listed.size, sidecar.size)
        )
    record.status = STATUS_COMPLETE
    record.problem = None
    record.created = sidecar.created  # the name has whole seconds; the sidecar may have microseconds
    return record


def _damaged(record: SnapshotRecord, problem: str) -> SnapshotRecord:
    record.status = STATUS_DAMAGED
    record.problem = problem
    return record


def _small_file(target: Target, relpath: str, entry: Any, index: Optional[IndexCopies], record: SnapshotRecord) -> bytes:
    """The file's bytes: the index's copy when unchanged, else read. With an index, the bytes are kept on the
    record (``_copies``) for refresh_index; without one nothing is kept."""
    if index is None:
        return read_small(target, relpath)
    data = index.bytes_for(entry)
    if data is None:
        data = read_small(target, relpath)
        index.read += 1
    record._copies[entry.name] = (entry, data)
    return data


def _read_verification(target: Target, record: SnapshotRecord, index: Optional[IndexCopies]) -> Optional[Dict[str, Any]]:
    entry = record._entries[VERIFY_SUFFIX]
    relpath = "%s/%s%s" % (snapshots_dir(record.appliance), record.stem, VERIFY_SUFFIX)
    try:
        data = _small_file(target, relpath, entry, index, record)
        doc = json.loads(data.decode("utf-8"))
    except TargetNotFound:
        return None
    except (TargetError, IntegrityError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return {"status": "unreadable", "error": str(exc)}
    return doc if isinstance(doc, dict) else {"status": "unreadable", "error": "not a JSON object"}
