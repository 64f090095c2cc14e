# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The sidecar: small unencrypted metadata beside a snapshot object; its presence makes the snapshot complete."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.names import (
    ENCRYPTION_MODES,
    FORMAT,
    ID_PATTERN,
    SHA256_PATTERN,
    format_utc,
    format_utc_precise,
    parse_object_name,
    parse_utc,
    validate_appliance,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, IntegrityError


def _fail(source: str, problem: str) -> IntegrityError:
    return IntegrityError("sidecar %s is invalid: %s" % (source, problem))


def need_field(doc: Dict[str, Any], key: str, kind: Any, source: str, where: str = "") -> Any:
    if key not in doc:
        raise _fail(source, "%s%r is missing" % (where, key))
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None:  # a listing of 10,000 sidecars makes 250,000 of these calls: no tuple built per call
        if type(None) in kinds:
            return value
        raise _fail(source, "%s%r must be %s, not %r" % (where, key, _kind_names(kinds), value))
    if isinstance(value, bool) and bool not in kinds:
        raise _fail(source, "%s%r must be %s, not %r" % (where, key, _kind_names(kinds), value))
    if not isinstance(value, kinds):
        raise _fail(source, "%s%r must be %s, not %r" % (where, key, _kind_names(kinds), value))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise _fail(source, "%s%r must not be negative" % (where, key))
    return value


def _kind_names(kinds: Tuple[Any, ...]) -> str:
    names = {int: "a whole number", float: "a number", str: "a string", list: "a list", dict: "an object",
             type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def sha256_field(doc: Dict[str, Any], key: str, source: str, where: str = "") -> str:
    value = need_field(doc, key, str, source, where)
    if not SHA256_PATTERN.fullmatch(value):
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
    # {"mode": "x25519" | "passphrase" | "none", "recipients": ["age1..."]}, and (newer sidecars) for an encrypted
    # object "prelude_sha256": the sha256 of its age header and payload nonce (a signed sidecar pins
    # the file key with it, so a restore may use each decrypted chunk before the object's sha256 is known)
    encryption: Dict[str, Any]
    db: Optional[Dict[str, Any]]  # {"chunks", "bytes", "sha256"} or None when no database was dumped
    # {"count", "bytes"} of the recordings this snapshot references; when it took sessions also
    # "status" (complete | partial), "problem_count" and "problems" [{"path", "reason"}] (the first 100)
    sessions: Dict[str, Any]
    duration: float  # seconds the snapshot took
    format: str = FORMAT

    @property
    def encrypted(self) -> bool:
        return self.encryption.get("mode") != "none"

    @property
    def prelude_sha256(self) -> Optional[str]:
        return self.encryption.get("prelude_sha256")

    def to_dict(self) -> Dict[str, Any]:
        encryption = {"mode": self.encryption.get("mode"), "recipients": list(self.encryption.get("recipients", []))}
        if self.prelude_sha256 is not None:
            encryption["prelude_sha256"] = self.prelude_sha256
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
            "encryption": encryption,
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
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
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
        snap_id = need_field(doc, "id", str, source)
        if not ID_PATTERN.fullmatch(snap_id):
            raise _fail(source, "'id' %r is not 8 lowercase hex digits" % snap_id)
        appliance = need_field(doc, "appliance", str, source)
        try:
            validate_appliance(appliance)
            created = parse_utc(need_field(doc, "created", str, source))
        except (ConfigError, ValueError) as exc:
            raise _fail(source, str(exc)) from None
        name = need_field(doc, "object", str, source)
        parsed = parse_object_name(name)
        if parsed is None:
            raise _fail(source, "'object' %r is not a snapshot object name" % name)
        if parsed[1] != snap_id or parsed[0] != created.replace(microsecond=0):
            raise _fail(source, "'object' %r does not match id %s and time %s" % (name, snap_id, format_utc(created)))
        size = need_field(doc, "size", int, source)
        sha256 = sha256_field(doc, "sha256", source)
        components = need_field(doc, "components", list, source)
        if not all(isinstance(item, str) for item in components):
            raise _fail(source, "'components' must be a list of strings")
        counts = need_field(doc, "counts", dict, source)
        for key in counts:
            need_field(counts, key, int, source, "counts.")
        bytes_in = need_field(doc, "bytes_in", int, source)
        versions = need_field(doc, "versions", dict, source)
        for key in ("appliance", "tool"):
            need_field(versions, key, (str, type(None)), source, "versions.")
        encryption = need_field(doc, "encryption", dict, source)
        mode = need_field(encryption, "mode", str, source, "encryption.")
        if mode not in ENCRYPTION_MODES:
            raise _fail(source, "encryption.mode %r is not one of %s" % (mode, ", ".join(ENCRYPTION_MODES)))
        recipients = need_field(encryption, "recipients", list, source, "encryption.")
        if not all(isinstance(item, str) for item in recipients):
            raise _fail(source, "encryption.recipients must be a list of strings")
        if (mode != "none") != parsed[2]:
            raise _fail(source, "encryption.mode %r does not match object name %r" % (mode, name))
        prelude = sha256_field(encryption, "prelude_sha256", source, "encryption.") \
            if "prelude_sha256" in encryption else None
        if prelude is not None and mode == "none":
            raise _fail(source, "encryption.prelude_sha256 is set for an unencrypted object")
        db = need_field(doc, "db", (dict, type(None)), source)
        if db is not None:
            need_field(db, "chunks", int, source, "db.")
            need_field(db, "bytes", int, source, "db.")
            sha256_field(db, "sha256", source, "db.")
        sessions = need_field(doc, "sessions", dict, source)
        need_field(sessions, "count", int, source, "sessions.")
        need_field(sessions, "bytes", int, source, "sessions.")
        status = _sessions_status(sessions, source)
        duration = need_field(doc, "duration", (int, float), source)
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
            encryption=dict({"mode": mode, "recipients": list(recipients)},
                            **({"prelude_sha256": prelude} if prelude is not None else {})),
            db=dict(db) if db is not None else None,
            sessions=dict({"count": sessions["count"], "bytes": sessions["bytes"]}, **status),
            duration=float(duration),
        )


def _sessions_status(sessions: Dict[str, Any], source: str) -> Dict[str, Any]:
    """The optional status part of a sidecar's "sessions" (sidecars before 0.2 have none: complete)."""
    if "status" not in sessions:
        return {}
    status = need_field(sessions, "status", str, source, "sessions.")
    if status not in ("complete", "partial"):
        raise _fail(source, "sessions.status %r is not complete or partial" % status)
    count = need_field(sessions, "problem_count", int, source, "sessions.")
    problems = need_field(sessions, "problems", list, source, "sessions.")
    if not all(isinstance(p, dict) and isinstance(p.get("path"), str) and isinstance(p.get("reason"), str)
               for p in problems) or len(problems) > count or (status == "complete") != (count == 0):
        raise _fail(source, "sessions.problems must list {path, reason} objects that agree with status and problem_count")
    return {"status": status, "problem_count": count,
            "problems": [{"path": p["path"], "reason": p["reason"]} for p in problems]}
