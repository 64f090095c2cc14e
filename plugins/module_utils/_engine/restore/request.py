# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""What a restore is asked to do, and which snapshot it takes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, constants
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import DB_PREFIX, PHYSICAL_PREFIX
from ansible_collections.segura.backup.plugins.module_utils._engine.clock_skew import describe_future_dated, parse_future_tolerance
from ansible_collections.segura.backup.plugins.module_utils._engine.constants import MiB
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, IntegrityError, TargetError
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target

RESTORABLE_COMPONENTS = constants.RESTORABLE_COMPONENTS
FILES_PREFIX = "files/"
BLOCK = 1024 * 1024
#: DB chunks larger than this are spooled to an anonymous temporary file (0600, unlinked) while checked.
SPOOL_IN_MEMORY = 64 * MiB
#: InnoDB takes roughly 1.06 bytes per byte of INSERT text (tests/lab/reference.py); keep a margin.
DB_SPACE_FACTOR = 1.25
#: The manifest does not record mode or owner of session recordings: Segura's own (*inferred*).
SESSION_FILE_MODE = 0o640
SESSION_DIR_MODE = 0o750
MAX_LISTED = 50  # paths listed in a result (overwrites, problems)

DB_CHUNK = re.compile(re.escape(DB_PREFIX) + r"\.\d{6}")
PHYSICAL_CHUNK = re.compile(re.escape(PHYSICAL_PREFIX) + r"\.\d{6}")
CREATE_DATABASE = re.compile(rb"^CREATE DATABASE (?:/\*!\d+ IF NOT EXISTS\*/ )?`([^`]+)`")
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{8}")


@dataclass
class RestoreRequest:
    """What to restore, from where, onto which appliance.

    ``appliance`` is the name of the appliance restored ONTO (and, unless ``source_appliance`` says
    otherwise, the folder its snapshots are read from). ``components`` None means every restorable
    component the snapshot holds. ``db`` may be None only when 'database' is not restored.
    """

    appliance: str
    layout: ApplianceLayout
    decryption: Decryption
    db: Optional[DatabaseConnection] = None
    snapshot: str = "latest"
    source_appliance: Optional[str] = None
    allow_other_appliance: bool = False
    components: Optional[Sequence[str]] = None
    restore_sessions: bool = False
    force_version_mismatch: bool = False
    pre_commands: Sequence[Sequence[str]] = ()
    post_commands: Sequence[Sequence[str]] = ()
    command_timeout: float = 600.0
    post_verify: bool = True
    #: "latest" passes over snapshots dated more than this ahead of now (clock_skew.py)
    future_tolerance: timedelta = parse_future_tolerance(None)
    #: physical restore: the systemd unit stopped and started around the swap, or "none" (the caller does)
    db_service: str = "mariadb"
    #: physical restore: the server's datadir (default: the running server's @@datadir)
    db_datadir: Optional[str] = None
    #: which signatures are trusted (signing.TrustPolicy); None refuses every snapshot
    trust: Optional[Any] = None
    #: paths (below root, shell patterns) whose setuid/setgid/sticky bits a SIGNED snapshot may restore
    special_bits_paths: Sequence[str] = ()

    def __post_init__(self):
        self.appliance = catalog.validate_appliance(self.appliance)
        if self.source_appliance in (None, ""):
            self.source_appliance = None
        else:
            self.source_appliance = catalog.validate_appliance(self.source_appliance)
        if self.source_appliance and self.source_appliance != self.appliance and not self.allow_other_appliance:
            raise ConfigError("snapshots of appliance %r would be restored onto %r: set allow_other_appliance "
                              "to do that on purpose" % (self.source_appliance, self.appliance))
        if not isinstance(self.snapshot, str) or not (self.snapshot == "latest" or _SNAPSHOT_ID.fullmatch(self.snapshot)):
            raise ConfigError("snapshot must be 'latest' or a snapshot id (8 hex digits), got %r" % (self.snapshot,))
        if self.components is not None:
            components = list(self.components)
            unknown = sorted(set(components) - set(RESTORABLE_COMPONENTS))
            if unknown:
                raise ConfigError("unknown component(s) to restore: %s (known: %s)"
                                  % (", ".join(unknown), ", ".join(RESTORABLE_COMPONENTS)))
            if not components and not self.restore_sessions:
                raise ConfigError("nothing to restore: components is empty and restore_sessions is off")
            self.components = tuple(c for c in RESTORABLE_COMPONENTS if c in components)
        if not isinstance(self.db_service, str) or not re.fullmatch(r"[A-Za-z0-9@._:-]+", self.db_service):
            raise ConfigError("database.service must be a systemd unit name or 'none', got %r" % (self.db_service,))
        if self.db_datadir is not None and not os.path.isabs(self.db_datadir):
            raise ConfigError("database.datadir must be an absolute path, got %r" % (self.db_datadir,))
        self.pre_commands = _check_commands(self.pre_commands, "pre_commands")
        self.post_commands = _check_commands(self.post_commands, "post_commands")
        # Checked here, so check mode refuses it too (a run would time every command out at once).
        if isinstance(self.command_timeout, bool) or not isinstance(self.command_timeout, (int, float)) \
                or not self.command_timeout > 0:
            raise ConfigError("command_timeout must be a positive number of seconds, not %r" % (self.command_timeout,))

    @property
    def listed_appliance(self) -> str:
        """The folder on the target whose snapshots are considered."""
        return self.source_appliance or self.appliance

    def database(self) -> DatabaseConnection:
        """``db``, for the steps that restore or check the database; ConfigError when none was given."""
        if self.db is None:
            raise ConfigError("restoring the database component needs a database connection")
        return self.db


def _check_commands(commands, what: str) -> Tuple[Tuple[str, ...], ...]:
    if commands is None:
        return ()
    if isinstance(commands, (str, bytes)):
        raise ConfigError("%s must be a list of argument lists, e.g. [[systemctl, stop, nginx]]" % what)
    checked = []
    for command in commands:
        if isinstance(command, (str, bytes)) or not command or not all(isinstance(a, str) and a for a in command):
            raise ConfigError("each entry of %s must be a non-empty list of non-empty strings (run without a "
                              "shell), got %r" % (what, command))
        checked.append(tuple(command))
    return tuple(checked)


def is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


#: Newer snapshots "latest" passes over (untrusted, damaged) before it gives up: more than a share holds of
#: one appliance, few enough that planted files cannot make a restore read without end.
MAX_PASSED_OVER = 1000


def _report_passed_over(refusals: List[str], skipped: Optional[List[str]]) -> None:
    if skipped is not None:
        skipped.extend(refusals[:10])
        if len(refusals) > 10:
            skipped.append("and %d more" % (len(refusals) - 10))


def _newest_trusted(target: Target, request: RestoreRequest, records: List[catalog.SnapshotRecord]
                    ) -> Tuple[Optional[Tuple[catalog.SnapshotRecord, Dict[str, Any]]], List[str]]:
    """(the newest complete snapshot with a valid signature, else - with allow_unsigned - the newest one
    accepted, else None; why each newer one was passed over). Future-dated ones are taken only by id."""
    from ansible_collections.segura.backup.plugins.module_utils._engine.signing import TrustError

    refusals: List[str] = []
    fallback: Optional[Tuple[catalog.SnapshotRecord, Dict[str, Any]]] = None
    passed_over: List[str] = []
    for record in records:  # newest first
        if len(refusals) >= MAX_PASSED_OVER:
            break  # bounded: thousands of planted files cost no more than this many reads
        if not record.complete and record.status != catalog.STATUS_PARTIAL:
            refusals.append("snapshot %s is %s (%s)" % (record.id, record.status, record.problem))
        elif record.complete and not record.future_dated:
            try:
                verdict = catalog.read_trusted_sidecar(target, record, request.trust)
            except (TrustError, IntegrityError, TargetError) as exc:  # one planted file must not stop it
                refusals.append("snapshot %s: %s" % (record.id, exc))
                continue
            if verdict["status"] == "valid":
                return (record, verdict), refusals
            if fallback is None:  # allow_unsigned: an older snapshot that is signed still comes first
                fallback = (record, verdict)
                passed_over = list(refusals)
            refusals.append("snapshot %s: %s" % (record.id, verdict.get("reason")))
    if fallback is not None:
        return fallback, passed_over
    return None, refusals


def select_snapshot(target: Target, request: RestoreRequest,
                    skipped: Optional[List[str]] = None) -> Tuple[catalog.SnapshotRecord, Dict[str, Any]]:
    """(the complete snapshot to restore, its signature verdict): the newest TRUSTED one, or the one
    with the requested id, whose signature must then be trusted (signing.TrustError otherwise).

    For "latest", a newer snapshot that is not trusted (e.g. planted on the share) is passed over
    and named in ``skipped``, so that one forged file cannot stop a disaster recovery.
    """
    from ansible_collections.segura.backup.plugins.module_utils._engine.signing import TrustError

    if request.trust is None:
        raise ConfigError("a restore needs the appliances' pinned signing keys (trust.signers or "
                          "trust.signers_file), or trust.allow_unsigned for a disaster")
    listing = catalog.list_snapshots(target, request.listed_appliance)
    records = listing.for_appliance(request.listed_appliance)
    where = target.describe_path(catalog.snapshots_dir(request.listed_appliance))
    now = datetime.now(timezone.utc)
    future = [r for r in listing.flag_future_dated(now, request.future_tolerance) if r.complete]
    if request.snapshot == "latest":
        choice, refusals = _newest_trusted(target, request, records)
        _report_passed_over(refusals, skipped)
        if choice is not None:
            return choice
        if refusals:
            raise TrustError("no trusted, complete snapshot of appliance %r in %s: %s"
                             % (request.listed_appliance, where, "; ".join(refusals[:5])))
        if future:
            raise ConfigError("no complete snapshot of appliance %r in %s is dated before now; %s. Restore it "
                              "by id to take it anyway" % (request.listed_appliance, where,
                                                           describe_future_dated(future[0], now)))
        if listing.errors:
            raise ConfigError("no complete snapshot found in %s (%s)" % (where, "; ".join(listing.errors)))
        raise ConfigError("no complete snapshot of appliance %r in %s" % (request.listed_appliance, where))
    for record in records:
        if record.id == request.snapshot:
            if not record.complete:
                raise IntegrityError("snapshot %s in %s is %s%s; only complete snapshots are restored"
                                     % (record.id, where, record.status,
                                        " (%s)" % record.problem if record.problem else ""))
            try:
                return record, catalog.read_trusted_sidecar(target, record, request.trust)
            except TrustError as exc:
                raise TrustError("snapshot %s in %s: %s" % (record.id, where, exc)) from None
    raise ConfigError("snapshot %s not found in %s" % (request.snapshot, where))
