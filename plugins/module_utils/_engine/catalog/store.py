# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Writing to the catalog safely: atomic uploads, sidecars, verification records, session lists, removal."""

from __future__ import annotations

import hashlib
import json
import posixpath
from datetime import datetime, timezone
from typing import Any, BinaryIO, Dict, Iterable, List, Literal, Optional, Union

from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.names import (
    FORMAT,
    SESSIONS_LIST_LIMIT,
    SIDECAR_LIMIT,
    SIDECAR_SUFFIX,
    SNAPSHOT_FILE,
    format_utc,
    parse_object_name,
    partial_name,
    sessions_dir,
    sessions_list_name,
    sidecar_name,
    signature_name,
    snapshots_dir,
    validate_appliance,
    verification_name,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.sidecar import Sidecar, need_field, sha256_field
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, IntegrityError, TargetError, TargetExists, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.retry import remove_checked, retry_read
from ansible_collections.segura.backup.plugins.module_utils._engine.streams import json_chunks
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target, clean_relpath, rename_into_place


def read_small(target: Target, relpath: str, limit: int = SIDECAR_LIMIT) -> bytes:
    """The whole content of a small file (sidecar, verification record, session list), retried."""
    return retry_read(target.read_bytes, relpath, limit=limit)


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
            written = self._opened().write(view)
            written = len(view) if written is None else written
            if written <= 0:
                raise TargetError("%s accepted no data" % self.target.describe_path(self.partial_relpath))
            self._hash.update(view[:written])
            self._count += written
            view = view[written:]
        return total

    def flush(self) -> None:
        """Nothing to do: the target makes data durable on close."""

    def _opened(self) -> BinaryIO:
        if self._handle is None:
            raise AssertionError("upload used outside its with block")
        return self._handle

    def writable(self) -> bool:
        return True

    def __exit__(self, exc_type, exc, traceback) -> Literal[False]:
        handle = self._opened()
        if exc_type is not None:
            _close_quietly(handle)
            _best_effort_remove(self.target, self.partial_relpath)
            return False
        try:
            handle.close()
            stored = self.target.stat(self.partial_relpath).size
            if stored != self._count:
                raise IntegrityError(
                    "%s holds %d bytes but %d were written"
                    % (self.target.describe_path(self.partial_relpath), stored, self._count)
                )
            rename_into_place(self.target, self.partial_relpath, self.final_relpath)
        except BaseException:
            _close_quietly(self._handle)
            _best_effort_remove(self.target, self.partial_relpath)
            raise
        self.size = self._count
        self.sha256 = self._hash.hexdigest()
        return False


def _write_via_partial(target: Target, relpath: str, data: Union[bytes, Iterable[bytes]], replace: bool) -> None:
    """``data`` (bytes, or pieces of it) to ``relpath`` through its partial and a rename."""
    partial = partial_name(relpath)
    try:
        if isinstance(data, bytes):
            target.write_bytes(partial, data)
        else:
            with target.open_write(partial) as out:
                for chunk in data:
                    out.write(chunk)
        rename_into_place(target, partial, relpath, replace=replace)
    except BaseException:
        _best_effort_remove(target, partial)
        raise


def write_replacing(target: Target, relpath: str, data: bytes) -> None:
    """``data`` to ``relpath`` through its partial and a rename that replaces what was there."""
    _write_via_partial(target, relpath, data, replace=True)


def publish_sidecar(target: Target, sidecar: Sidecar, signing_key: Any = None) -> str:
    """Write the sidecar (via its own partial + rename, never replacing): the last step of a snapshot.

    With ``signing_key`` (a signing.SigningKey), its signature of the sidecar's exact bytes is written
    first as ``<stem>.json.sig``, so a complete snapshot is never unsigned for a moment.
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
    if signing_key is not None:
        _write_via_partial(target, "%s/%s" % (directory, signature_name(sidecar.object)),
                           signing_key.sign(data), replace=False)
    _write_via_partial(target, relpath, data, replace=False)
    return relpath


def read_trusted_sidecar(target: Target, record: Any, policy: Any) -> Dict[str, Any]:
    """Check a listed snapshot's signature against ``policy`` (a signing.TrustPolicy).

    Reads the sidecar's exact bytes and ``<stem>.json.sig`` once, checks the signature over those
    bytes by the pinned key of the record's appliance, and makes sure the sidecar the record was
    judged by is the one that was signed (a sidecar swapped since the listing is refused).
    Returns the policy's verdict ({"status": "valid", "key"} or, with allow_unsigned, why not);
    raises signing.TrustError when the snapshot is not trusted.
    """
    from ansible_collections.segura.backup.plugins.module_utils._engine.signing import SIGNATURE_LIMIT, TrustError

    directory = snapshots_dir(record.appliance)
    sidecar_relpath = "%s/%s" % (directory, sidecar_name(record.object))
    data = read_small(target, sidecar_relpath)
    try:
        signature: Optional[bytes] = read_small(target, "%s/%s" % (directory, signature_name(record.object)),
                                                limit=SIGNATURE_LIMIT)
    except TargetNotFound:
        signature = None
    except (TargetError, IntegrityError) as exc:  # too large, a folder, unreadable: not a signature of ours
        raise TrustError("the signature file cannot be read as one (%s)" % exc) from None
    verdict = policy.judge(data, signature, record.appliance)
    signed = Sidecar.from_json(data, target.describe_path(sidecar_relpath))
    if record.sidecar is not None and signed.to_dict() != record.sidecar.to_dict():
        raise TrustError("the sidecar of snapshot %s changed since it was listed; refused" % record.id)
    record.sidecar = signed
    return verdict


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
        path = clean_relpath(need_field(item, "path", str, source, where))
    except ConfigError as exc:
        raise IntegrityError("session list %s is invalid: %s" % (source, exc)) from None
    below = sessions_dir(appliance) + "/"
    if not path.startswith(below):
        raise IntegrityError("session list %s is invalid: %s is not below %s/" % (source, path, sessions_dir(appliance)))
    entry = {"path": path, "size": need_field(item, "size", int, source, where),
             "sha256": sha256_field(item, "sha256", source, where)}
    kind = item.get("type", "file")
    if kind == "symlink":
        target_text = need_field(item, "target", str, source, where)
        data = target_text.encode("utf-8", "surrogateescape")
        if not target_text or "\x00" in target_text or (len(data), hashlib.sha256(data).hexdigest()) != (entry["size"], entry["sha256"]):
            raise IntegrityError("session list %s is invalid: %starget does not match its size and sha256" % (source, where))
        entry.update(type="symlink", target=target_text)
    elif kind == "hardlink":
        try:
            link = clean_relpath(need_field(item, "link", str, source, where))
        except ConfigError as exc:
            raise IntegrityError("session list %s is invalid: %s" % (source, exc)) from None
        if not link.startswith(below) or link == path:
            raise IntegrityError("session list %s is invalid: %slink %s is not another recording below %s"
                                 % (source, where, link, below))
        entry.update(type="hardlink", link=link)
    elif kind != "file":
        raise IntegrityError("session list %s is invalid: %stype %r is not symlink or hardlink" % (source, where, kind))
    return entry


def check_hardlinks(entries: List[Dict[str, Any]], source: str) -> List[Dict[str, Any]]:
    """``entries``, after checking that each hard-link name points at a file of the same list with its content."""
    files = {e["path"]: (e["size"], e["sha256"]) for e in entries if "type" not in e}
    for index, entry in enumerate(entries):
        if entry.get("type") == "hardlink" and files.get(entry["link"]) != (entry["size"], entry["sha256"]):
            raise IntegrityError("session list %s is invalid: sessions[%d] is a hard link to %s, which is not a "
                                 "recording of the list with the same size and sha256" % (source, index, entry["link"]))
    return entries


def write_sessions_list(target: Target, appliance: str, name: str, sessions: List[Dict[str, Any]]) -> str:
    """Write ``<stem>.sessions.json`` (via partial + rename, never replacing); returns its relative path.

    ``sessions`` is the manifest's list: [{"path" (target-relative), "size", "sha256"}]. Call it
    after the object is in place and BEFORE publish_sidecar, so a complete snapshot always has it.
    """
    parsed = parse_object_name(name)
    if parsed is None:
        raise ConfigError("%r is not a snapshot object name" % (name,))
    source = "for snapshot %s" % parsed[1]
    # Checked as a reader will check it, entry by entry: no copy of a list that can hold 100,000 entries.
    for index, item in enumerate(sessions):
        if _session_entry(item, appliance, source, index) != item:
            raise ConfigError("session list for snapshot %s: sessions[%d] is not in its normal form" % (parsed[1], index))
    check_hardlinks(sessions, source)
    doc = {"format": FORMAT, "id": parsed[1], "appliance": validate_appliance(appliance), "sessions": sessions}
    relpath = "%s/%s" % (snapshots_dir(appliance), sessions_list_name(name))
    _write_via_partial(target, relpath, json_chunks(doc, "sessions"), replace=False)
    return relpath


def session_entries(items: List[Any], appliance: str, source: str) -> List[Dict[str, Any]]:
    """The validated entries of a session list (or of a manifest's "sessions"); IntegrityError naming ``source``."""
    return check_hardlinks([_session_entry(item, appliance, source, index) for index, item in enumerate(items)], source)


def parse_sessions_list(data: bytes, source: str, snap_id: str, appliance: str) -> List[Dict[str, Any]]:
    """The validated entries of a session list; IntegrityError naming ``source`` on any problem."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise IntegrityError("session list %s is invalid: not JSON (%s)" % (source, exc)) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise IntegrityError("session list %s is invalid: not a %s document" % (source, FORMAT))
    if doc.get("id") != snap_id or doc.get("appliance") != appliance:
        raise IntegrityError("session list %s describes %r/%r, not %s/%s"
                             % (source, doc.get("appliance"), doc.get("id"), appliance, snap_id))
    items = doc.get("sessions")
    if not isinstance(items, list):
        raise IntegrityError("session list %s is invalid: 'sessions' must be a list" % source)
    return session_entries(items, appliance, source)


def read_sessions_list(target: Target, record: Any) -> List[Dict[str, Any]]:
    """The session list of a snapshot (a SnapshotRecord or Sidecar); TargetNotFound if it has none."""
    parsed = parse_object_name(record.object)
    if parsed is None:
        raise ConfigError("%r is not a snapshot object name" % (record.object,))
    relpath = "%s/%s" % (snapshots_dir(record.appliance), sessions_list_name(record.object))
    data = read_small(target, relpath, limit=SESSIONS_LIST_LIMIT)
    return parse_sessions_list(data, target.describe_path(relpath), parsed[1], record.appliance)


def _removal_order(relpath: str) -> int:
    """Sidecar first (the snapshot stops being complete), then the object, then the rest."""
    match = SNAPSHOT_FILE.fullmatch(posixpath.basename(relpath))
    kind = match.group("kind") if match else ""
    if kind == SIDECAR_SUFFIX:
        return 0
    if kind.startswith(".tar.zst"):
        return 1
    return 2


def remove_snapshot(target: Target, record: Any) -> List[str]:
    """Remove every file of a snapshot, sidecar FIRST so it stops being complete before anything else goes.

    Files already gone are skipped. Returns the relative paths removed.
    """
    removed = []
    for relpath in sorted(record.files, key=_removal_order):
        if remove_file(target, relpath):
            removed.append(relpath)
    return removed


def remove_file(target: Target, relpath: str) -> bool:
    """Remove one file: True if we removed it, False if it was already gone (see retry.py)."""
    return remove_checked(target.remove, target.exists, relpath)
