# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Names and paths of the catalog: snapshot object names, sidecar names, per-appliance folders, UTC times."""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from typing import Any, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.constants import FORMAT
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError

__all__ = ["FORMAT"]

OBJECT_SUFFIX = ".tar.zst"
ENCRYPTED_SUFFIX = ".tar.zst.age"
PARTIAL_SUFFIX = ".partial"
SIDECAR_SUFFIX = ".json"
VERIFY_SUFFIX = ".verify.json"
SESSIONS_SUFFIX = ".sessions.json"
SIGNATURE_SUFFIX = ".json.sig"  # the appliance's signature of the sidecar (signing.py)
ENCRYPTION_MODES = ("x25519", "passphrase", "none")
SIDECAR_LIMIT = 1024 * 1024  # sidecars are a few KiB; anything larger is not ours
SESSIONS_LIST_LIMIT = 256 * 1024 * 1024  # ~150 bytes per recording: room for a million and more

STATUS_COMPLETE = "complete"
STATUS_PARTIAL = "partial"
STATUS_ORPHANED = "orphaned"
STATUS_DAMAGED = "damaged"

_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
ID_PATTERN = re.compile(r"[0-9a-f]{8}")
_STEM = r"(?P<stem>(?P<time>[0-9]{8}T[0-9]{6}Z)-(?P<id>[0-9a-f]{8}))"  # ASCII digits only (\d takes any)
OBJECT_NAME = re.compile(_STEM + r"\.tar\.zst(?P<age>\.age)?")
# Every file name that belongs to a snapshot, and what it is.
SNAPSHOT_FILE = re.compile(
    _STEM + r"(?P<kind>\.tar\.zst(?:\.age)?(?:\.partial)?|\.verify\.json(?:\.partial)?"
    r"|\.sessions\.json(?:\.partial)?|\.json\.sig(?:\.partial)?|\.json(?:\.partial)?)"
)
_APPLIANCE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


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


def utc(moment: datetime, what: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigError("%s must be a timezone-aware datetime, got %r" % (what, moment))
    return moment.astimezone(timezone.utc)


def format_utc(moment: datetime) -> str:
    """'2026-11-27T10:15:00Z' (seconds precision), the time format of sidecars and headers."""
    return utc(moment, "time").replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_utc_precise(moment: datetime) -> str:
    """'2026-11-27T10:15:00.123456Z': the sidecar's creation time. Retention orders snapshots by it,
    and two runs can start within the same second (a small appliance, a retry)."""
    return utc(moment, "time").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    if not isinstance(snap_id, str) or not ID_PATTERN.fullmatch(snap_id):
        raise ConfigError("snapshot id %r is invalid: expected 8 lowercase hex digits" % (snap_id,))
    stamp = utc(created, "snapshot creation time").strftime(_TIME_FORMAT)
    return "%s-%s%s" % (stamp, snap_id, ENCRYPTED_SUFFIX if encrypted else OBJECT_SUFFIX)


def parse_object_name(name: str) -> Optional[Tuple[datetime, str, bool]]:
    """(created, id, encrypted) for an object name, or None if ``name`` is not one."""
    match = OBJECT_NAME.fullmatch(name) if isinstance(name, str) else None
    if not match:
        return None
    stamp = match.group("time")  # the regex fixed the positions; datetime checks the ranges
    try:  # not strptime: 10x slower, and a listing of 10,000 snapshots parses 30,000 names
        created = datetime(int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]),
                           int(stamp[13:15]), tzinfo=timezone.utc)
    except ValueError:
        return None
    return created, match.group("id"), bool(match.group("age"))


def stem_of(name: str) -> str:
    match = OBJECT_NAME.fullmatch(name)
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
    stem_of(name)
    return "%s/%s" % (snapshots_dir(appliance), name)


def sidecar_name(name: str) -> str:
    """'<stem>.json' for object name '<stem>.tar.zst[.age]'."""
    return stem_of(name) + SIDECAR_SUFFIX


def verification_name(name: str) -> str:
    """'<stem>.verify.json' for object name '<stem>.tar.zst[.age]'."""
    return stem_of(name) + VERIFY_SUFFIX


def sessions_list_name(name: str) -> str:
    """'<stem>.sessions.json' for object name '<stem>.tar.zst[.age]'."""
    return stem_of(name) + SESSIONS_SUFFIX


def signature_name(name: str) -> str:
    """'<stem>.json.sig' for object name '<stem>.tar.zst[.age]'."""
    return stem_of(name) + SIGNATURE_SUFFIX


def partial_name(name: str) -> str:
    """Where ``name`` lives while it is being written."""
    return name + PARTIAL_SUFFIX
