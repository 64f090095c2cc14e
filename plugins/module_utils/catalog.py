# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalog of snapshots on a target: names, sidecars, atomic uploads and listing.

Layout (see the format notes)::

    <appliance>/snapshots/<YYYYmmddTHHMMSSZ>-<id>.tar.zst[.age]   the object
    <appliance>/snapshots/<same>.partial                           the object while it is uploaded
    <appliance>/snapshots/<YYYYmmddTHHMMSSZ>-<id>.json             the sidecar, written last
    <appliance>/snapshots/<YYYYmmddTHHMMSSZ>-<id>.sessions.json    session files it references (if any)
    <appliance>/snapshots/<YYYYmmddTHHMMSSZ>-<id>.verify.json      the last verification result
    <appliance>/sessions/YYYY/MMDD/<file>                          session recordings
    <appliance>/lock                                               the appliance lock (locking.py)

A snapshot is complete when its object and its sidecar both exist and agree on the size. Every
write goes to a ``.partial`` name first and is renamed into place, so a crash at any point leaves
nothing that looks complete.

Why ``<stem>.sessions.json`` exists (unencrypted, beside the sidecar): prune must know which session
recordings the kept snapshots reference, but the manifest inside the object is encrypted to keys that
appliances and controllers do not hold. The recording names and sizes are visible on the share
anyway, so the list reveals nothing new. It is written before the sidecar; deep verification checks
that it equals the manifest's session list.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, Dict, List, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils.errors import (
    ConfigError,
    IntegrityError,
    TargetError,
    TargetExists,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils.retention import SnapshotRef
from ansible_collections.segura.backup.plugins.module_utils.targets.base import Target, clean_relpath

FORMAT = "segura.backup/1"
OBJECT_SUFFIX = ".tar.zst"
ENCRYPTED_SUFFIX = ".tar.zst.age"
PARTIAL_SUFFIX = ".partial"
SIDECAR_SUFFIX = ".json"
VERIFY_SUFFIX = ".verify.json"
SESSIONS_SUFFIX = ".sessions.json"
ENCRYPTION_MODES = ("x25519", "passphrase", "none")
SIDECAR_LIMIT = 1024 * 1024  # sidecars are a few KiB; anything larger is not ours
SESSIONS_LIST_LIMIT = 256 * 1024 * 1024  # ~150 bytes per recording: room for a million and more

STATUS_COMPLETE = "complete"
STATUS_PARTIAL = "partial"
STATUS_ORPHANED = "orphaned"
STATUS_DAMAGED = "damaged"

_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_ID_PATTERN = re.compile(r"[0-9a-f]{8}")
_STEM = r"(?P<stem>(?P<time>\d{8}T\d{6}Z)-(?P<id>[0-9a-f]{8}))"
_OBJECT_NAME = re.compile(_STEM + r"\.tar\.zst(?P<age>\.age)?")
# Every file name that belongs to a snapshot, and what it is.
_SNAPSHOT_FILE = re.compile(
    _STEM + r"(?P<kind>\.tar\.zst(?:\.age)?(?:\.partial)?|\.verify\.json(?:\.partial)?"
    r"|\.sessions\.json(?:\.partial)?|\.json(?:\.partial)?)"
)
_APPLIANCE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------------------------------------
# Names and paths


def new_snapshot_id() -> str:
    """A short random id (8 hex digits); with the second-precision time it names a snapshot uniquely."""
    return secrets.token_hex(4)


def validate_appliance(appliance: Any) -> str:
    """Return ``appliance`` if it is a safe directory name: letters, digits, '.', '-', '_', 1-100 chars."""
    if not isinstance(appliance, str) or not _APPLIANCE_NAME.fullmatch(appliance) or appliance in (".", ".."):
        raise ConfigError(
            "appliance name %r is invalid: use 1 to 100 letters, digits, '.', '-' or '_' (no '/' and not '..')"
            % (appliance,)
        )
    return appliance


def _utc(moment: datetime, what: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigError("%s must be a timezone-aware datetime, got %r" % (what, moment))
    return moment.astimezone(timezone.utc)


def format_utc(moment: datetime) -> str:
    """'2026-11-27T10:15:00Z' (seconds precision), the time format of sidecars and headers."""
    return _utc(moment, "time").replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_utc_precise(moment: datetime) -> str:
    """'2026-11-27T10:15:00.123456Z': the sidecar's creation time. Retention orders snapshots by it,
    and two runs can start within the same second (a small appliance, a retry)."""
    return _utc(moment, "time").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: Any) -> datetime:
    """Parse an ISO-8601 UTC time ending in 'Z' (fractions allowed); ValueError otherwise."""
    if not isinstance(text, str) or not text.endswith("Z"):
        raise ValueError("not a UTC time ending in 'Z': %r" % (text,))
    moment = datetime.fromisoformat(text[:-1])
    if moment.tzinfo is not None:
        raise ValueError("not a UTC time ending in 'Z': %r" % (text,))
    return moment.replace(tzinfo=timezone.utc)


def object_name(created: datetime, snap_id: str, encrypted: bool) -> str:
    """'20261127T101500Z-1a2b3c4d.tar.zst.age' (or '.tar.zst' when not encrypted)."""
    if not isinstance(snap_id, str) or not _ID_PATTERN.fullmatch(snap_id):
        raise ConfigError("snapshot id %r is invalid: expected 8 lowercase hex digits" % (snap_id,))
    stamp = _utc(created, "snapshot creation time").strftime(_TIME_FORMAT)
    return "%s-%s%s" % (stamp, snap_id, ENCRYPTED_SUFFIX if encrypted else OBJECT_SUFFIX)


def parse_object_name(name: str) -> Optional[Tuple[datetime, str, bool]]:
    """(created, id, encrypted) for an object name, or None if ``name`` is not one."""
    match = _OBJECT_NAME.fullmatch(name) if isinstance(name, str) else None
    if not match:
        return None
    try:
        created = datetime.strptime(match.group("time"), _TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return created, match.group("id"), bool(match.group("age"))


def _stem(name: str) -> str:
    match = _OBJECT_NAME.fullmatch(name)
    if not match:
        raise ConfigError("%r is not a snapshot object name" % (name,))
    return match.group("stem")


def snapshots_dir(appliance: str) -> str:
    return "%s/snapshots" % validate_appliance(appliance)


def sessions_dir(appliance: str) -> str:
    return "%s/sessions" % validate_appliance(appliance)


def lock_path(appliance: str) -> str:
    return "%s/lock" % validate_appliance(appliance)


def object_path(appliance: str, name: str) -> str:
    _stem(name)
    return "%s/%s" % (snapshots_dir(appliance), name)


def sidecar_name(name: str) -> str:
    """'<stem>.json' for object name '<stem>.tar.zst[.age]'."""
    return _stem(name) + SIDECAR_SUFFIX


def verification_name(name: str) -> str:
    """'<stem>.verify.json' for object name '<stem>.tar.zst[.age]'."""
    return _stem(name) + VERIFY_SUFFIX


def sessions_list_name(name: str) -> str:
    """'<stem>.sessions.json' for object name '<stem>.tar.zst[.age]'."""
    return _stem(name) + SESSIONS_SUFFIX


def partial_name(name: str) -> str:
    """Where ``name`` lives while it is being written."""
    return name + PARTIAL_SUFFIX


# ---------------------------------------------------------------------------------------------
# Reading


READ_ATTEMPTS = 3


def retry_read(read: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``read`` (something that only reads) up to READ_ATTEMPTS times on a TargetError.

    Why: reading has no side effect, yet a share can fail one request now and then; nfs-rs reports
    some NFSv4.1 OPENs against nfs-ganesha as "uncertain" and does not repeat them itself, which on
    a listing of thousands of sidecars would otherwise make the picture incomplete. A missing file
    (TargetNotFound) and IntegrityError are answers, not failures, and are never retried.
    """
    for attempt in range(READ_ATTEMPTS):
        try:
            return read(*args, **kwargs)
        except TargetNotFound:
            raise
        except TargetError:
            if attempt + 1 == READ_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def read_small(target: Target, relpath: str, limit: int = SIDECAR_LIMIT) -> bytes:
    """The whole content of a small file (sidecar, verification record, session list), retried."""
    return retry_read(target.read_bytes, relpath, limit=limit)


# ---------------------------------------------------------------------------------------------
# Sidecar


def _fail(source: str, problem: str) -> IntegrityError:
    return IntegrityError("sidecar %s is invalid: %s" % (source, problem))


def _need(doc: Dict[str, Any], key: str, kind: Any, source: str, where: str = "") -> Any:
    if key not in doc:
        raise _fail(source, "%s%r is missing" % (where, key))
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None and type(None) in kinds:
        return value
    if isinstance(value, bool) and bool not in kinds:
        raise _fail(source, "%s%r must be %s, not %r" % (where, key, _kind_names(kinds), value))
    if not isinstance(value, tuple(k for k in kinds if k is not type(None))):
        raise _fail(source, "%s%r must be %s, not %r" % (where, key, _kind_names(kinds), value))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise _fail(source, "%s%r must not be negative" % (where, key))
    return value


def _kind_names(kinds: Tuple[Any, ...]) -> str:
    names = {int: "a whole number", float: "a number", str: "a string", list: "a list", dict: "an object",
             type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _sha256_field(doc: Dict[str, Any], key: str, source: str, where: str = "") -> str:
    value = _need(doc, key, str, source, where)
    if not _SHA256.fullmatch(value):
        raise _fail(source, "%s%r is not a lowercase hex sha256" % (where, key))
    return value


@dataclass
class Sidecar:
    """Unencrypted metadata next to a snapshot object; no secrets (recipients are public keys)."""

    id: str
    appliance: str
    created: datetime
    object: str
    size: int
    sha256: str
    components: List[str]
    counts: Dict[str, int]
    bytes_in: int
    versions: Dict[str, Optional[str]]  # {"appliance": "3.32.0.12" or None, "tool": "0.1.0"}
    encryption: Dict[str, Any]  # {"mode": "x25519" | "passphrase" | "none", "recipients": ["age1..."]}
    db: Optional[Dict[str, Any]]  # {"chunks", "bytes", "sha256"} or None when no database was dumped
    sessions: Dict[str, int]  # {"count", "bytes"} of session files this snapshot references
    duration: float  # seconds the snapshot took
    format: str = FORMAT

    @property
    def encrypted(self) -> bool:
        return self.encryption.get("mode") != "none"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": self.format,
            "id": self.id,
            "appliance": self.appliance,
            "created": format_utc_precise(self.created),
            "object": self.object,
            "size": self.size,
            "sha256": self.sha256,
            "components": list(self.components),
            "counts": dict(self.counts),
            "bytes_in": self.bytes_in,
            "versions": dict(self.versions),
            "encryption": {"mode": self.encryption.get("mode"), "recipients": list(self.encryption.get("recipients", []))},
            "db": dict(self.db) if self.db is not None else None,
            "sessions": dict(self.sessions),
            "duration": self.duration,
        }

    def to_json(self) -> bytes:
        """Serialise, after checking that what we write would be read back (same rules as from_json)."""
        doc = self.to_dict()
        Sidecar.from_dict(doc, "for snapshot %s" % self.id)
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes, source: str) -> "Sidecar":
        """Parse and validate; IntegrityError naming ``source`` (the file) on any problem."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _fail(source, "not JSON (%s)" % exc) from None
        return cls.from_dict(doc, source)

    @classmethod
    def from_dict(cls, doc: Any, source: str) -> "Sidecar":
        if not isinstance(doc, dict):
            raise _fail(source, "not a JSON object")
        version = doc.get("format")
        if version != FORMAT:
            raise IntegrityError(
                "sidecar %s has format %r; this version of segura.backup reads only %r" % (source, version, FORMAT)
            )
        snap_id = _need(doc, "id", str, source)
        if not _ID_PATTERN.fullmatch(snap_id):
            raise _fail(source, "'id' %r is not 8 lowercase hex digits" % snap_id)
        appliance = _need(doc, "appliance", str, source)
        try:
            validate_appliance(appliance)
            created = parse_utc(_need(doc, "created", str, source))
        except (ConfigError, ValueError) as exc:
            raise _fail(source, str(exc)) from None
        name = _need(doc, "object", str, source)
        parsed = parse_object_name(name)
        if parsed is None:
            raise _fail(source, "'object' %r is not a snapshot object name" % name)
        if parsed[1] != snap_id or parsed[0] != created.replace(microsecond=0):
            raise _fail(source, "'object' %r does not match id %s and time %s" % (name, snap_id, format_utc(created)))
        size = _need(doc, "size", int, source)
        sha256 = _sha256_field(doc, "sha256", source)
        components = _need(doc, "components", list, source)
        if not all(isinstance(item, str) for item in components):
            raise _fail(source, "'components' must be a list of strings")
        counts = _need(doc, "counts", dict, source)
        for key in counts:
            _need(counts, key, int, source, "counts.")
        bytes_in = _need(doc, "bytes_in", int, source)
        versions = _need(doc, "versions", dict, source)
        for key in ("appliance", "tool"):
            _need(versions, key, (str, type(None)), source, "versions.")
        encryption = _need(doc, "encryption", dict, source)
        mode = _need(encryption, "mode", str, source, "encryption.")
        if mode not in ENCRYPTION_MODES:
            raise _fail(source, "encryption.mode %r is not one of %s" % (mode, ", ".join(ENCRYPTION_MODES)))
        recipients = _need(encryption, "recipients", list, source, "encryption.")
        if not all(isinstance(item, str) for item in recipients):
            raise _fail(source, "encryption.recipients must be a list of strings")
        if (mode != "none") != parsed[2]:
            raise _fail(source, "encryption.mode %r does not match object name %r" % (mode, name))
        db = _need(doc, "db", (dict, type(None)), source)
        if db is not None:
            _need(db, "chunks", int, source, "db.")
            _need(db, "bytes", int, source, "db.")
            _sha256_field(db, "sha256", source, "db.")
        sessions = _need(doc, "sessions", dict, source)
        _need(sessions, "count", int, source, "sessions.")
        _need(sessions, "bytes", int, source, "sessions.")
        duration = _need(doc, "duration", (int, float), source)
        return cls(
            id=snap_id,
            appliance=appliance,
            created=created,
            object=name,
            size=size,
            sha256=sha256,
            components=list(components),
            counts=dict(counts),
            bytes_in=bytes_in,
            versions={"appliance": versions["appliance"], "tool": versions["tool"]},
            encryption={"mode": mode, "recipients": list(recipients)},
            db=dict(db) if db is not None else None,
            sessions={"count": sessions["count"], "bytes": sessions["bytes"]},
            duration=float(duration),
        )


# ---------------------------------------------------------------------------------------------
# Atomic writes


def _best_effort_remove(target: Target, relpath: str) -> None:
    try:
        target.remove(relpath)
    except Exception:  # cleanup must never mask the error that brought us here
        pass


def _close_quietly(handle: Any) -> None:
    try:
        abort = getattr(handle, "abort", None)
        (abort or handle.close)()
    except Exception:
        pass


class AtomicUpload:
    """Write one object under ``<final>.partial``, then check and rename it to ``final``.

    ``write()`` counts the bytes and hashes them as they pass. On a clean exit the partial is
    closed, its size on the target compared with the count (IntegrityError if they differ), and
    renamed WITHOUT replace (TargetExists if ``final`` exists: a snapshot is never overwritten).
    ``size`` and ``sha256`` are then set. On an exception the partial is removed, best effort, and
    the exception propagates unchanged.
    """

    def __init__(self, target: Target, final_relpath: str):
        self.target = target
        self.final_relpath = final_relpath
        self.partial_relpath = partial_name(final_relpath)
        self.size: Optional[int] = None
        self.sha256: Optional[str] = None
        self._handle: Optional[BinaryIO] = None
        self._hash = hashlib.sha256()
        self._count = 0

    @property
    def bytes_written(self) -> int:
        return self._count

    def __enter__(self) -> "AtomicUpload":
        if self.target.exists(self.final_relpath):  # fail before uploading gigabytes that cannot be published
            raise TargetExists("%s already exists; snapshots are never overwritten" % self.target.describe_path(self.final_relpath))
        self._handle = self.target.open_write(self.partial_relpath, exclusive=True)
        return self

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            written = self._handle.write(view)
            written = len(view) if written is None else written
            if written <= 0:
                raise TargetError("%s accepted no data" % self.target.describe_path(self.partial_relpath))
            self._hash.update(view[:written])
            self._count += written
            view = view[written:]
        return total

    def flush(self) -> None:
        """Nothing to do: the target makes data durable on close."""

    def writable(self) -> bool:
        return True

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is not None:
            _close_quietly(self._handle)
            _best_effort_remove(self.target, self.partial_relpath)
            return False
        try:
            self._handle.close()
            stored = self.target.stat(self.partial_relpath).size
            if stored != self._count:
                raise IntegrityError(
                    "%s holds %d bytes but %d were written"
                    % (self.target.describe_path(self.partial_relpath), stored, self._count)
                )
            self.target.rename(self.partial_relpath, self.final_relpath, replace=False)
        except BaseException:
            _close_quietly(self._handle)
            _best_effort_remove(self.target, self.partial_relpath)
            raise
        self.size = self._count
        self.sha256 = self._hash.hexdigest()
        return False


def _write_via_partial(target: Target, relpath: str, data: bytes, replace: bool) -> None:
    partial = partial_name(relpath)
    try:
        target.write_bytes(partial, data)
        target.rename(partial, relpath, replace=replace)
    except BaseException:
        _best_effort_remove(target, partial)
        raise


def publish_sidecar(target: Target, sidecar: Sidecar) -> str:
    """Write the sidecar (via its own partial + rename, never replacing): the last step of a snapshot.

    Refuses (IntegrityError) when the object is missing or its size differs from the sidecar's, so a
    sidecar can never make a wrong object look complete. Returns the sidecar's relative path.
    """
    data = sidecar.to_json()
    directory = snapshots_dir(sidecar.appliance)
    object_relpath = "%s/%s" % (directory, sidecar.object)
    try:
        stored = target.stat(object_relpath).size
    except TargetNotFound:
        raise IntegrityError("cannot publish the sidecar: %s does not exist" % target.describe_path(object_relpath)) from None
    if stored != sidecar.size:
        raise IntegrityError(
            "cannot publish the sidecar: %s holds %d bytes, the sidecar says %d"
            % (target.describe_path(object_relpath), stored, sidecar.size)
        )
    relpath = "%s/%s" % (directory, sidecar_name(sidecar.object))
    _write_via_partial(target, relpath, data, replace=False)
    return relpath


def record_verification(target: Target, snapshot: Any, result: Dict[str, Any]) -> Dict[str, Any]:
    """Store a verification result as ``<stem>.verify.json`` (replacing the previous one, atomically).

    ``snapshot`` is a SnapshotRecord or a Sidecar (anything with ``appliance`` and ``object``).
    The stored record is ``result`` plus id, object and 'recorded' (UTC now unless given).
    """
    record = dict(result)
    parsed = parse_object_name(snapshot.object)
    if parsed is None:
        raise ConfigError("%r is not a snapshot object name" % (snapshot.object,))
    record["id"] = parsed[1]
    record["object"] = snapshot.object
    record.setdefault("recorded", format_utc(datetime.now(timezone.utc)))
    relpath = "%s/%s" % (snapshots_dir(snapshot.appliance), verification_name(snapshot.object))
    data = (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
    _write_via_partial(target, relpath, data, replace=True)
    return record


# ---------------------------------------------------------------------------------------------
# Session list: which recordings a snapshot references, readable without the decryption key


def _session_entry(item: Any, appliance: str, source: str, index: int) -> Dict[str, Any]:
    where = "sessions[%d]." % index
    if not isinstance(item, dict):
        raise IntegrityError("session list %s is invalid: sessions[%d] is not an object" % (source, index))
    try:
        path = clean_relpath(_need(item, "path", str, source, where))
    except ConfigError as exc:
        raise IntegrityError("session list %s is invalid: %s" % (source, exc)) from None
    if not path.startswith(sessions_dir(appliance) + "/"):
        raise IntegrityError("session list %s is invalid: %s is not below %s/" % (source, path, sessions_dir(appliance)))
    return {"path": path, "size": _need(item, "size", int, source, where),
            "sha256": _sha256_field(item, "sha256", source, where)}


def write_sessions_list(target: Target, appliance: str, name: str, sessions: List[Dict[str, Any]]) -> str:
    """Write ``<stem>.sessions.json`` (via partial + rename, never replacing); returns its relative path.

    ``sessions`` is the manifest's list: [{"path" (target-relative), "size", "sha256"}]. Call it
    after the object is in place and BEFORE publish_sidecar, so a complete snapshot always has it.
    """
    parsed = parse_object_name(name)
    if parsed is None:
        raise ConfigError("%r is not a snapshot object name" % (name,))
    source = "for snapshot %s" % parsed[1]
    entries = [_session_entry(item, appliance, source, index) for index, item in enumerate(sessions)]
    doc = {"format": FORMAT, "id": parsed[1], "appliance": validate_appliance(appliance), "sessions": entries}
    relpath = "%s/%s" % (snapshots_dir(appliance), sessions_list_name(name))
    data = (json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")
    _write_via_partial(target, relpath, data, replace=False)
    return relpath


def parse_sessions_list(data: bytes, source: str, snap_id: str, appliance: str) -> List[Dict[str, Any]]:
    """The validated entries of a session list; IntegrityError naming ``source`` on any problem."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError("session list %s is invalid: not JSON (%s)" % (source, exc)) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IntegrityError("session list %s is invalid: not a %s document" % (source, FORMAT))
    if doc.get("id") != snap_id or doc.get("appliance") != appliance:
        raise IntegrityError("session list %s describes %r/%r, not %s/%s"
                             % (source, doc.get("appliance"), doc.get("id"), appliance, snap_id))
    items = doc.get("sessions")
    if not isinstance(items, list):
        raise IntegrityError("session list %s is invalid: 'sessions' must be a list" % source)
    return [_session_entry(item, appliance, source, index) for index, item in enumerate(items)]


def read_sessions_list(target: Target, record: Any) -> List[Dict[str, Any]]:
    """The session list of a snapshot (a SnapshotRecord or Sidecar); TargetNotFound if it has none."""
    parsed = parse_object_name(record.object)
    if parsed is None:
        raise ConfigError("%r is not a snapshot object name" % (record.object,))
    relpath = "%s/%s" % (snapshots_dir(record.appliance), sessions_list_name(record.object))
    data = read_small(target, relpath, limit=SESSIONS_LIST_LIMIT)
    return parse_sessions_list(data, target.describe_path(relpath), parsed[1], record.appliance)


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
    _entries: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # kind -> Entry

    @property
    def complete(self) -> bool:
        return self.status == STATUS_COMPLETE

    @property
    def stem(self) -> str:
        return _stem(self.object)

    @property
    def object_relpath(self) -> str:
        return "%s/%s" % (snapshots_dir(self.appliance), self.object)

    @property
    def has_sessions_list(self) -> bool:
        return SESSIONS_SUFFIX in self._entries

    @property
    def took_sessions(self) -> Optional[bool]:
        """Whether the snapshot took the sessions component; None when its sidecar was not read."""
        return None if self.sidecar is None else "sessions" in self.sidecar.components

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
            }
        )
        if now is not None:
            result["age_seconds"] = int((_utc(now, "now") - self.created).total_seconds())
        return result


@dataclass
class Listing:
    """What ``list_snapshots`` found. ``complete`` is False when any directory or sidecar could not be read."""

    snapshots: List[SnapshotRecord]
    appliances: List[str]
    complete: bool = True
    errors: List[str] = field(default_factory=list)
    sidecars_read: bool = True

    def for_appliance(self, appliance: str) -> List[SnapshotRecord]:
        return [record for record in self.snapshots if record.appliance == appliance]

    def find(self, snap_id: str, appliance: Optional[str] = None) -> List[SnapshotRecord]:
        """Every record with this id (of one appliance, when given)."""
        return [r for r in self.snapshots if r.id == snap_id and (appliance is None or r.appliance == appliance)]

    def require_complete(self) -> None:
        """Raise TargetError unless every directory was listed (prune must not act on half a picture)."""
        if not self.complete:
            raise TargetError("the snapshot listing is incomplete: %s" % "; ".join(self.errors))

    def to_dict(self, now: Optional[datetime] = None) -> Dict[str, Any]:
        return {
            "snapshots": [record.to_dict(now) for record in self.snapshots],
            "appliances": list(self.appliances),
            "complete": self.complete,
            "errors": list(self.errors),
        }


def appliance_summaries(listing: Listing, now: datetime) -> List[Dict[str, Any]]:
    """Per appliance: counts by status, bytes stored, the latest snapshot and the latest complete one.

    ``latest_complete`` (a record as ``to_dict(now)`` gives it, or None) is what "is this appliance
    backed up?" questions need, e.g. a JMESPath query for appliances whose latest complete snapshot
    is older than 26 hours.
    """
    names = sorted(set(listing.appliances) | {r.appliance for r in listing.snapshots})
    summaries = []
    for name in names:
        records = listing.for_appliance(name)  # newest first
        complete = [r for r in records if r.complete]
        verified = [r.verification for r in records if isinstance((r.verification or {}).get("recorded"), str)]
        summary: Dict[str, Any] = {"name": name, "snapshots": len(records), "stored_bytes": sum(r.stored_bytes for r in records)}
        for status in (STATUS_COMPLETE, STATUS_PARTIAL, STATUS_ORPHANED, STATUS_DAMAGED):
            summary[status] = sum(1 for r in records if r.status == status)
        summary["latest"] = records[0].to_dict(now) if records else None
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


def list_snapshots(target: Target, appliance: Optional[str] = None, read_sidecars: bool = True) -> Listing:
    """List the snapshots of one appliance, or of every appliance below the root. Newest first.

    One ``listdir`` of the root (only when ``appliance`` is None) and one of each appliance's
    ``snapshots/`` directory; sizes come from the listing, no per-snapshot stat. A missing directory
    means no snapshots, not an error.

    ``read_sidecars=True`` reads every sidecar and verification record (small files, but one round
    trip each on a share) and checks each sidecar against its object's listed size.
    ``read_sidecars=False`` reads nothing but the directories: a snapshot whose object and sidecar
    both exist is taken as complete, unchecked (``checked`` False); ``load_sidecar`` checks one
    later. Prune decides on such a listing and checks only the snapshots it keeps.
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
        for record in records_from_entries(name, entries):
            if read_sidecars:
                _read_details(target, listing, record)
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
        match = _SNAPSHOT_FILE.fullmatch(entry.name)
        if match and not entry.is_dir and parse_object_name(match.group("stem") + OBJECT_SUFFIX) is not None:
            groups.setdefault(match.group("stem"), {})[match.group("kind")] = entry
    return [_record_by_presence(appliance, stem, files) for stem, files in groups.items()]


def _record_by_presence(appliance: str, stem: str, files: Dict[str, Any]) -> SnapshotRecord:
    directory = snapshots_dir(appliance)
    created, snap_id, dummy = parse_object_name(stem + OBJECT_SUFFIX)
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


def _read_details(target: Target, listing: Listing, record: SnapshotRecord) -> None:
    if VERIFY_SUFFIX in record._entries:
        relpath = "%s/%s%s" % (snapshots_dir(record.appliance), record.stem, VERIFY_SUFFIX)
        record.verification = _read_verification(target, relpath)
    try:
        load_sidecar(target, record)
    except TargetError as exc:
        listing.complete = False
        listing.errors.append(str(exc))


def load_sidecar(target: Target, record: SnapshotRecord) -> SnapshotRecord:
    """Read and check the sidecar of a record listed by presence; sets status, sidecar and sha256.

    complete: the sidecar is valid, describes this snapshot and the object has its size;
    damaged: it is not valid, or disagrees with the object; orphaned: the object is missing;
    partial: the sidecar vanished since the listing. Raises TargetError when the sidecar exists
    but cannot be read (the record is then marked damaged with that reason): the picture is incomplete.
    """
    entries = record._entries
    if SIDECAR_SUFFIX not in entries or record.checked:
        return record
    record.checked = True
    directory = snapshots_dir(record.appliance)
    stem = record.stem
    sidecar_relpath = "%s/%s%s" % (directory, stem, SIDECAR_SUFFIX)
    try:
        sidecar = Sidecar.from_json(read_small(target, sidecar_relpath),
                                    target.describe_path(sidecar_relpath))
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
    if sidecar.id != record.id or sidecar.appliance != record.appliance or _stem(sidecar.object) != stem:
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


def _read_verification(target: Target, relpath: str) -> Optional[Dict[str, Any]]:
    try:
        doc = json.loads(read_small(target, relpath).decode("utf-8"))
    except TargetNotFound:
        return None
    except (TargetError, IntegrityError, UnicodeDecodeError, ValueError) as exc:
        return {"status": "unreadable", "error": str(exc)}
    return doc if isinstance(doc, dict) else {"status": "unreadable", "error": "not a JSON object"}


def _removal_order(relpath: str) -> int:
    """Sidecar first (the snapshot stops being complete), then the object, then the rest."""
    match = _SNAPSHOT_FILE.fullmatch(posixpath.basename(relpath))
    kind = match.group("kind") if match else ""
    if kind == SIDECAR_SUFFIX:
        return 0
    if kind.startswith(".tar.zst"):
        return 1
    return 2


def remove_snapshot(target: Target, record: SnapshotRecord) -> List[str]:
    """Remove every file of a snapshot, sidecar FIRST so it stops being complete before anything else goes.

    Files already gone are skipped. Returns the relative paths removed.
    """
    removed = []
    for relpath in sorted(record.files, key=_removal_order):
        if remove_file(target, relpath):
            removed.append(relpath)
    return removed


def remove_file(target: Target, relpath: str) -> bool:
    """Remove one file: True if we removed it, False if it was already gone.

    A failed remove may still have happened (nfs-rs reports some NFSv4.1 REMOVEs as "uncertain",
    recovery "verify then resume"): look, and try again only while the file is still there.
    """
    for attempt in range(READ_ATTEMPTS):
        try:
            target.remove(relpath)
            return True
        except TargetNotFound:
            return attempt > 0  # gone after an uncertain attempt: that attempt removed it
        except TargetError:
            if attempt + 1 == READ_ATTEMPTS:
                raise
            if not retry_read(target.exists, relpath):
                return True  # the attempt that looked failed did remove it
    raise AssertionError("unreachable")  # pragma: no cover
