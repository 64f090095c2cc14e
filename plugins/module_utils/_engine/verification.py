# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verifying snapshots on a target.

quick: stream the stored object once; its size and sha256 must equal the sidecar's. Needs no key,
       catches every change of the stored bytes (a flipped bit, truncation, a tampered sidecar).
deep:  stream it once, decrypt, decompress and check every member against manifest.json
       (archive.verify); then the manifest against the sidecar, and the session recordings the
       manifest references: each must exist with its size (and sha256 with ``check_session_hashes``),
       and ``<stem>.sessions.json`` (what prune trusts) must equal the manifest's list.

A verification result can be stored beside the snapshot (catalog.record_verification) so that
backup_info shows when each snapshot was last proven good, and ``select='sample'`` can rotate
through the history by verifying the least recently verified snapshots first.
"""

from __future__ import annotations

import hashlib
import posixpath
import random
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, constants
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ArchiveError, BackupError, ConfigError, IntegrityError, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.retry import retry_read
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target

MODES = constants.VERIFY_MODES
SELECTIONS = constants.VERIFY_SELECTIONS
READ_BLOCK = 4 * 1024 * 1024  # nfs-rs and smbprotocol are latency bound on small reads
_MAX_LISTED = 10  # file names quoted in one problem message


@dataclass
class VerifyResult:
    """Outcome of verifying one snapshot. ``ok`` is True only when ``problems`` is empty."""

    id: str
    appliance: str
    object: str
    mode: str
    problems: List[str] = field(default_factory=list)
    size: Optional[int] = None  # bytes of the object that were read
    sha256: Optional[str] = None  # sha256 of those bytes
    duration: float = 0.0
    checks: Dict[str, Any] = field(default_factory=dict)
    recorded: bool = False
    record_error: Optional[str] = None
    index_error: Optional[str] = None  # the warning when the catalog index was not updated after the result was stored

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_record(self) -> Dict[str, Any]:
        """What is stored in ``<stem>.verify.json`` (catalog adds id, object and 'recorded')."""
        return {"mode": self.mode, "ok": self.ok, "problems": list(self.problems), "size": self.size,
                "sha256": self.sha256, "duration": self.duration, "checks": dict(self.checks)}

    def to_dict(self) -> Dict[str, Any]:
        result = self.to_record()
        result.update({"id": self.id, "appliance": self.appliance, "object": self.object,
                       "recorded": self.recorded})
        if self.record_error:
            result["record_error"] = self.record_error
        if self.index_error:
            result["index_error"] = self.index_error
        return result


# ---------------------------------------------------------------------------------------------
# Which snapshots


def _published(record: catalog.SnapshotRecord) -> bool:
    """Has a sidecar (complete, or claims to be and is damaged/orphaned): worth verifying."""
    return record.status != catalog.STATUS_PARTIAL


def _last_verified(record: catalog.SnapshotRecord) -> str:
    recorded = (record.verification or {}).get("recorded")
    return recorded if isinstance(recorded, str) else ""  # never verified sorts first


def select_snapshots(
    listing: catalog.Listing,
    select: str = "latest",
    ids: Optional[Sequence[str]] = None,
    sample_size: int = 1,
    rng: Optional[random.Random] = None,
) -> Tuple[List[catalog.SnapshotRecord], List[str]]:
    """(records to verify, newest first; requested ids that were not found).

    latest: per appliance, the newest snapshot that has a sidecar, even if the listing already
            found it damaged (an older good one must not hide a broken newest one); a snapshot
            flagged future-dated (Listing.flag_future_dated) is passed over: it is never the latest.
    all:    every snapshot that has a sidecar (partial uploads are not snapshots yet).
    ids:    the snapshots with these ids, whatever their status.
    sample: per appliance, ``sample_size`` snapshots that have a sidecar, least recently verified
            first (never verified before anything), ties in random order: nightly samples rotate
            through the whole history.
    """
    if select not in SELECTIONS:
        raise ConfigError("select must be one of %s, not %r" % (", ".join(SELECTIONS), select))
    published = [r for r in listing.snapshots if _published(r)]
    missing: List[str] = []
    chosen: List[catalog.SnapshotRecord]
    if select == "ids":
        if not ids:
            raise ConfigError("select=ids needs the ids of the snapshots to verify")
        chosen = []
        for snap_id in ids:
            found = listing.find(snap_id)
            if not found:
                missing.append(snap_id)
            chosen.extend(r for r in found if r not in chosen)
    elif select == "all":
        chosen = published
    elif select == "latest":
        chosen = []
        seen = set()
        for record in published:  # newest first
            if record.appliance not in seen and not record.future_dated:
                seen.add(record.appliance)
                chosen.append(record)
    else:
        if not isinstance(sample_size, int) or isinstance(sample_size, bool) or sample_size < 1:
            raise ConfigError("sample_size must be 1 or more, not %r" % (sample_size,))
        rng = rng or random.SystemRandom()
        chosen = []
        for appliance in sorted({r.appliance for r in published}):
            mine = [r for r in published if r.appliance == appliance]
            rng.shuffle(mine)
            mine.sort(key=_last_verified)  # stable: shuffled order breaks the ties
            chosen.extend(mine[:sample_size])
    chosen.sort(key=lambda r: (r.created, r.id, r.appliance), reverse=True)
    return chosen, missing


def require_something_to_verify(listing: catalog.Listing, chosen: Sequence[catalog.SnapshotRecord],
                                missing: Sequence[str], appliance: Optional[str], where: str,
                                on_target: Sequence[str] = ()) -> None:
    """IntegrityError when a selection found nothing to verify: a verification that proves nothing must
    fail, not pass (an appliance name that is not the folder its backups are filed under, an empty
    target). ``on_target``: the appliance folders the target holds, named in the message."""
    if chosen or missing:
        return
    future = [r for r in listing.snapshots if r.future_dated and _published(r)]
    if future:
        problem = ("only future-dated snapshot(s), never taken as the latest (%s); verify them with select=ids"
                   % ", ".join("%s/%s" % (r.appliance, r.id) for r in future[:_MAX_LISTED]))
    elif appliance:
        problem = "snapshots are filed under the appliance's name (appliance.name, else its short host name)"
        holds = [name for name in on_target if name != appliance]
        problem += "; the target holds %s" % (", ".join(holds[:_MAX_LISTED]) if holds else "no other appliance")
    else:
        problem = "the target holds no snapshot"
    what = "of appliance %r " % appliance if appliance else ""
    raise IntegrityError("no snapshot %sto verify in %s: %s" % (what, where, problem))


# ---------------------------------------------------------------------------------------------
# Verifying one snapshot


class _HashingReader:
    """Counts and hashes what the archive reader pulls from the target."""

    def __init__(self, handle):
        self._handle = handle
        self.bytes = 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size if size and size > 0 else READ_BLOCK)
        self.bytes += len(data)
        self.sha256.update(data)
        return data


def _stream_digest(target: Target, relpath: str) -> Tuple[int, str]:
    """(bytes, sha256) of a file on the target; a failed attempt starts over (retry.py)."""
    return retry_read(_stream_digest_once, target, relpath)


def _stream_digest_once(target: Target, relpath: str) -> Tuple[int, str]:
    digest = hashlib.sha256()
    total = 0
    with target.open_read(relpath) as handle:
        while True:
            data = handle.read(READ_BLOCK)
            if not data:
                break
            total += len(data)
            digest.update(data)
    return total, digest.hexdigest()


class SessionFiles:
    """Session recordings on the target, listed one directory at a time and remembered for a run
    (many snapshots reference the same recordings). Hashes, when asked for, are remembered too."""

    def __init__(self, target: Target):
        self.target = target
        self._dirs: Dict[str, Optional[Dict[str, Any]]] = {}
        self._hashes: Dict[str, str] = {}

    def entry(self, relpath: str):
        """The listing entry of a file, or None when it does not exist. TargetError if unlistable."""
        directory, name = posixpath.split(relpath)
        if directory not in self._dirs:
            try:
                self._dirs[directory] = {e.name: e for e in self.target.listdir(directory) if not e.is_dir}
            except TargetNotFound:
                self._dirs[directory] = None
        files = self._dirs[directory]
        return files.get(name) if files is not None else None

    def sha256(self, relpath: str) -> str:
        if relpath not in self._hashes:
            self._hashes[relpath] = _stream_digest(self.target, relpath)[1]
        return self._hashes[relpath]


def _quoted(paths: List[str]) -> str:
    shown = ", ".join(paths[:_MAX_LISTED])
    return shown + (" and %d more" % (len(paths) - _MAX_LISTED) if len(paths) > _MAX_LISTED else "")


def _check_sessions(target: Target, record: catalog.SnapshotRecord, sidecar: catalog.Sidecar,
                    manifest: Dict[str, Any], session_files: SessionFiles, check_hashes: bool,
                    result: VerifyResult) -> None:
    items = manifest.get("sessions", [])
    if not isinstance(items, list):
        result.problems.append("manifest.json has no valid session list")
        return
    try:
        listed = catalog.session_entries(items, record.appliance, "manifest.json of snapshot %s" % record.id)
    except IntegrityError as exc:
        result.problems.append(str(exc))
        return
    took_sessions = "sessions" in sidecar.components
    check: Dict[str, Any] = {"referenced": len(listed), "missing": 0, "wrong_size": 0, "hashed": 0,
                             "wrong_sha256": 0, "symlinks": 0, "hardlinks": 0}
    result.checks["sessions"] = check
    if (sidecar.sessions.get("count"), sidecar.sessions.get("bytes")) != (len(listed), sum(s["size"] for s in listed)):
        result.problems.append("the sidecar's session count/bytes (%s/%s) differ from the manifest's (%d/%d)"
                               % (sidecar.sessions.get("count"), sidecar.sessions.get("bytes"), len(listed),
                                  sum(s["size"] for s in listed)))
    status = {key: sidecar.sessions[key] for key in ("status", "problem_count", "problems") if key in sidecar.sessions}
    if took_sessions and status != (manifest.get("sessions_status") or {}):
        result.problems.append("the sidecar's sessions status differs from the manifest's (%s vs %s)"
                               % (status.get("status"), (manifest.get("sessions_status") or {}).get("status")))
    if took_sessions:
        try:
            stored = catalog.read_sessions_list(target, record)
        except TargetNotFound:
            result.problems.append("%s is missing (prune relies on it)" % catalog.sessions_list_name(record.object))
        except IntegrityError as exc:
            result.problems.append(str(exc))
        else:
            if stored != listed:
                result.problems.append("%s differs from the manifest's session list (%d entries vs %d)"
                                       % (catalog.sessions_list_name(record.object), len(stored), len(listed)))
    elif listed:
        result.problems.append("manifest.json references %d session files but the snapshot did not take sessions"
                               % len(listed))
    missing, wrong_size, wrong_hash = [], [], []
    for item in listed:
        path, size, sha256 = item["path"], item["size"], item["sha256"]
        if "type" in item:  # a link: its text or its other name was checked with the list; nothing on the target
            check[item["type"] + "s"] += 1
            continue
        entry = session_files.entry(path)
        if entry is None:
            missing.append(path)
        elif entry.size != size:
            wrong_size.append("%s (%d bytes, expected %s)" % (path, entry.size, size))
        elif check_hashes:
            check["hashed"] += 1
            if session_files.sha256(path) != sha256:
                wrong_hash.append(path)
    check.update(missing=len(missing), wrong_size=len(wrong_size), wrong_sha256=len(wrong_hash))
    if missing:
        result.problems.append("%d referenced session file(s) missing: %s" % (len(missing), _quoted(missing)))
    if wrong_size:
        result.problems.append("%d session file(s) with the wrong size: %s" % (len(wrong_size), _quoted(wrong_size)))
    if wrong_hash:
        result.problems.append("%d session file(s) with the wrong sha256: %s" % (len(wrong_hash), _quoted(wrong_hash)))


def _compare(result: VerifyResult, what: str, found: Any, expected: Any) -> None:
    if found != expected:
        result.problems.append("%s: the object has %r, the sidecar says %r" % (what, found, expected))


DB_STREAM_KEYS = ("chunks", "bytes", "sha256")
DB_METHOD_KEYS = ("method", "server_version", "tool_version", "position")


def _picked(doc: Any, keys: Sequence[str]) -> Any:
    return {key: doc.get(key) for key in keys} if isinstance(doc, dict) else doc


def _check_documents(sidecar: catalog.Sidecar, report: Any, result: VerifyResult) -> None:
    """snapshot.json and manifest.json (inside the object) against the sidecar (outside)."""
    header = report.snapshot or {}
    manifest = report.manifest or {}
    for key in ("id", "appliance"):
        _compare(result, "snapshot.json %s" % key, header.get(key), getattr(sidecar, key))
        _compare(result, "manifest.json %s" % key, manifest.get(key), getattr(sidecar, key))
    _compare(result, "snapshot.json created", header.get("created"), catalog.format_utc(sidecar.created))
    _compare(result, "snapshot.json components", header.get("components"), sidecar.components)
    if sidecar.db is not None or manifest.get("db") is not None:
        _compare(result, "database dump (chunks, bytes, sha256)", _picked(manifest.get("db"), DB_STREAM_KEYS),
                 _picked(sidecar.db, DB_STREAM_KEYS))
        # What the sidecar says of the method (read without the key) must be what the manifest says.
        recorded = manifest.get("database")
        if isinstance(recorded, dict) and isinstance(sidecar.db, dict) and "method" in sidecar.db:
            _compare(result, "database method and versions", _picked(recorded, DB_METHOD_KEYS),
                     _picked(sidecar.db, DB_METHOD_KEYS))
    if "members" in sidecar.counts:
        _compare(result, "member count", report.members, sidecar.counts["members"])
    _compare(result, "content bytes", report.bytes, sidecar.bytes_in)


def verify_snapshot(
    target: Target,
    record: catalog.SnapshotRecord,
    mode: str = "quick",
    decryption: Any = None,
    check_session_hashes: bool = False,
    session_files: Optional[SessionFiles] = None,
    trust: Any = None,
) -> VerifyResult:
    """Verify one snapshot; every finding lands in ``problems`` (nothing is raised for bad data).

    ``decryption`` is an archive.Decryption (deep mode; None means the object must be unencrypted).
    ``trust`` (a signing.TrustPolicy) checks the signature first: a snapshot not signed by its
    appliance's pinned key fails (unless the policy allows unsigned ones); None skips that check
    (the engine's own tests of the other checks; the modules always give one).
    Raises only ConfigError for a bad mode.
    """
    if mode not in MODES:
        raise ConfigError("mode must be one of %s, not %r" % (", ".join(MODES), mode))
    started = time.monotonic()
    result = VerifyResult(record.id, record.appliance, record.object, mode)
    try:
        _verify_into(target, record, mode, decryption, check_session_hashes,
                     session_files or SessionFiles(target), result, trust)
    except TargetNotFound as exc:
        result.problems.append("vanished while being verified: %s" % exc)
    except BackupError as exc:
        result.problems.append(str(exc))
    result.duration = round(time.monotonic() - started, 3)
    return result


def _verify_into(target: Target, record: catalog.SnapshotRecord, mode: str, decryption: Any,
                 check_session_hashes: bool, session_files: SessionFiles, result: VerifyResult,
                 trust: Any = None) -> None:
    if record.status == catalog.STATUS_PARTIAL:
        result.problems.append("the snapshot is not complete: it has no sidecar (an upload that did not finish)")
        return
    if not record.checked and record.status == catalog.STATUS_COMPLETE:
        catalog.load_sidecar(target, record)  # a listing by presence: check the sidecar now
    if record.problem:
        result.problems.append(record.problem)
    if record.sidecar is None or record.status == catalog.STATUS_ORPHANED:
        return  # nothing to compare with, or nothing to read
    if trust is not None:
        try:
            result.checks["signature"] = catalog.read_trusted_sidecar(target, record, trust)
        except IntegrityError as exc:  # signing.TrustError among them
            result.checks["signature"] = {"status": "refused", "key": None, "reason": str(exc)}
            result.problems.append(str(exc))
            return  # nothing an untrusted sidecar says is worth comparing with
    sidecar = record.sidecar

    if mode == "quick":
        result.size, result.sha256 = _stream_digest(target, record.object_relpath)
    else:
        from ansible_collections.segura.backup.plugins.module_utils._engine.archive import encryption, reader

        if decryption is None:
            decryption = encryption.Decryption.none()
        with retry_read(target.open_read, record.object_relpath) as handle:
            source = _HashingReader(handle)
            try:
                report = reader.verify(source, decryption, max_content_bytes=sidecar.bytes_in,
                                       max_members=sidecar.counts.get("members"))
            except IntegrityError as exc:
                result.problems.append("the object is corrupt: %s" % exc)
                return
            except ArchiveError as exc:
                result.problems.append("the object cannot be opened: %s" % exc)
                return
        result.size, result.sha256 = source.bytes, source.sha256.hexdigest()
        result.checks["archive"] = {"members": report.members, "bytes": report.bytes, "ok": report.ok}
        result.problems.extend(report.problems)
        if report.manifest is not None:
            _check_documents(sidecar, report, result)
            _check_sessions(target, record, sidecar, report.manifest, session_files, check_session_hashes, result)

    result.checks["object"] = {"size": result.size, "sha256": result.sha256,
                               "ok": (result.size, result.sha256) == (sidecar.size, sidecar.sha256)}
    if result.size != sidecar.size:
        result.problems.append("the object is %d bytes, the sidecar says %d" % (result.size, sidecar.size))
    elif result.sha256 != sidecar.sha256:
        result.problems.append("the object's sha256 is %s, the sidecar says %s" % (result.sha256, sidecar.sha256))


# ---------------------------------------------------------------------------------------------
# A run


def verify_snapshots(
    target: Target,
    records: Iterable[catalog.SnapshotRecord],
    mode: str = "quick",
    decryption: Any = None,
    check_session_hashes: bool = False,
    record_results: bool = True,
    trust: Any = None,
) -> List[VerifyResult]:
    """Verify each record and, with ``record_results``, store each result beside its snapshot.

    A result that cannot be stored keeps its verdict; ``record_error`` says why it was not stored.
    Partial uploads are never given a verification record (their files belong to a running upload).
    """
    session_files = SessionFiles(target)
    results = []
    for record in records:
        result = verify_snapshot(target, record, mode, decryption, check_session_hashes, session_files, trust)
        if record_results and record.status != catalog.STATUS_PARTIAL:
            try:
                stored = catalog.record_verification(target, record, result.to_record())
                result.recorded = True
                record.verification = stored
            except BackupError as exc:
                result.record_error = str(exc)
        results.append(result)
    for appliance in sorted({result.appliance for result in results if result.recorded}):
        index_warning = catalog.update_index(target, appliance)
        for result in results:
            if result.appliance == appliance:
                result.index_error = index_warning
    return results


def summary(results: List[VerifyResult]) -> str:
    """One line naming every failed snapshot and its first problem, for the task's message."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return "%d snapshot(s) verified" % len(results)
    parts = ["%s/%s: %s" % (r.appliance, r.id, r.problems[0]) for r in failed[:_MAX_LISTED]]
    more = " (and %d more)" % (len(failed) - _MAX_LISTED) if len(failed) > _MAX_LISTED else ""
    return "%d of %d snapshot(s) failed verification: %s%s" % (len(failed), len(results), "; ".join(parts), more)
