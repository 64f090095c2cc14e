# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""One backup run, the same from the backup role (module backup_job) and from the timer (cli.py):

    preflight (settings, cluster role) -> snapshot -> verify the new snapshot -> prune -> notify

``run_backup(params)`` takes parameters already validated against specs.backup_job_spec() and
returns the run's summary; BackupError (ConfigError for settings) names the cause of a failure.
Everything the later steps need is checked before the snapshot: a mistake in the retention policy
must not be found only after a full snapshot was taken.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, retention, verification
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.facts import appliance_version, cluster_role
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.writer import check_compression
from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import Cancelled
from ansible_collections.segura.backup.plugins.module_utils._engine.clock_skew import parse_future_tolerance
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, BackupError, ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.options import (
    appliance_name,
    build_database,
    build_decryption,
    build_encryption,
    build_layout,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.progress import CountedReads, Progress
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import prune
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import Signers, TrustPolicy, load_signing_key
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import SnapshotRequest, preflight, take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target

# Segura's own event numbers for the syslog line of a run (18 "Backup performed", 19 "Error on backup").
EVENT_PERFORMED = 18
EVENT_ERROR = 19
SNAPSHOT_SUMMARY_KEYS = ("id", "created", "object", "location", "size", "sha256", "duration", "throughput_mb_s",
                         "components", "counts", "database", "sessions", "signature", "warnings")

Notify = Callable[[str, str], None]  # (level "info" | "warning" | "error", text)


def snapshot_request(params: Dict[str, Any]) -> SnapshotRequest:
    """The SnapshotRequest of validated snapshot (or backup_job) parameters."""
    components = params["components"]
    for key, minimum in (("chunk_size_mb", 1), ("lock_ttl", 1), ("compression.threads", -1)):
        section, _dot, name = key.rpartition(".")
        value = (params[section] if section else params)[name]
        if value < minimum:
            raise ConfigError("%s must be %d or more, not %d" % (key, minimum, value))
    # The writer checks these too, but check mode never builds one: refuse here what a run would refuse.
    check_compression(params["compression"]["level"], params["compression"]["threads"],
                      ("compression.level", "compression.threads"))
    return SnapshotRequest(
        appliance=appliance_name(params["appliance"]),
        layout=build_layout(params["appliance"]),
        encryption=build_encryption(params["encryption"]),
        db=build_database(params["database"]) if "database" in components else None,
        components=components,
        zstd_level=params["compression"]["level"],
        zstd_threads=params["compression"]["threads"],
        chunk_size=params["chunk_size_mb"] * 1024 * 1024,
        lock_ttl=timedelta(seconds=params["lock_ttl"]),
        health_url=params["appliance"].get("health_url"),
        db_method=(params["database"] or {}).get("method"),
        sessions_on_problem=(params.get("sessions") or {}).get("on_problem", "warn"),
        # Unset: the engine takes the key below the appliance's root (signing_key_path's default).
        signing_key=_explicit_signing_key(params.get("signing_key")),
    )


def _explicit_signing_key(path: Optional[str]) -> Any:
    """The key of an explicit ``signing_key`` option (a path given and absent is a mistake, not "unsigned")."""
    if not path:
        return None
    key = load_signing_key(path)
    if key is None:
        raise ConfigError("signing_key %s does not exist (leave the option out to use the key the runtime role "
                          "makes, etc/segura-backup/signing_key below appliance.root)" % path)
    return key


class BackupJob:
    """The run's settings, all checked up front (``__init__``), and its steps."""

    def __init__(self, params: Dict[str, Any]) -> None:
        self.params = params
        self.request = snapshot_request(params)
        self.verify = dict(params["verify"] or {})
        self.verify_mode = self.verify.get("mode", "quick")
        # The new snapshot is checked against this appliance's own key; without a key it was
        # published unsigned (with a warning), which the verification then accepts.
        signers = Signers()
        if self.request.signing_key is not None:
            signers.pin(self.request.appliance, self.request.signing_key.raw_public, "this appliance's key")
        self.trust = TrustPolicy(signers, allow_unsigned=self.request.signing_key is None)
        self.decryption = None
        if self.verify_mode == "deep":
            self.decryption = build_decryption(self.verify.get("decryption"))
            if self.decryption.mode == "none" and self.request.encryption.mode != "none":
                raise ConfigError("verify mode deep needs 'decryption' (identity_file, identities or passphrase) "
                                  "to open the %s-encrypted snapshot" % self.request.encryption.mode)
        self.prune = params.get("prune")
        self.policy = retention.Policy.from_options(self.prune) if self.prune is not None else None
        if self.prune is not None:
            self.partial_grace = retention.parse_duration(self.prune["partial_grace"], "partial_grace")
            self.zone = retention.time_zone(self.prune["timezone"])
            self.future_tolerance = parse_future_tolerance(self.prune.get("future_tolerance"))

    def skip_reason(self, role: Dict[str, Any]) -> Optional[str]:
        """Why this node is not backed up (not the primary), None when it is."""
        if not self.params["primary_only"] or role["is_primary"]:
            return None
        when_unknown = self.params["when_role_unknown"]
        if role["is_primary"] is False or when_unknown == "skip":
            return "not the primary (%s, from %s)" % (role["role"], role["source"])
        if when_unknown == "fail":
            raise ConfigError("cannot tell whether this node is the primary: %s" % role.get("error", role["role"]))
        return None

    def verify_new(self, target: Any, snapshot_id: str) -> Dict[str, Any]:
        listing = catalog.list_snapshots(target, self.request.appliance)
        chosen, _missing = verification.select_snapshots(listing, "ids", ids=[snapshot_id])
        results = verification.verify_snapshots(target, chosen, self.verify_mode, decryption=self.decryption,
                                                check_session_hashes=bool(self.verify.get("check_session_hashes")),
                                                trust=self.trust)
        report = {"mode": self.verify_mode, "ok": bool(results) and all(r.ok for r in results),
                  "message": verification.summary(results),
                  "warnings": sorted({r.index_error for r in results if r.index_error})}
        if not report["ok"]:
            raise BackupError("snapshot %s failed verification: %s" % (snapshot_id, report["message"]))
        return report

    def prune_appliance(self, target: Any, dry_run: bool = False) -> Dict[str, Any]:
        """Prune this appliance; with ``dry_run`` only the plan (``removed`` is what would go)."""
        if self.policy is None or self.prune is None:
            raise AssertionError("prune_appliance called without a prune policy")
        outcomes = prune(target, self.policy, appliance=self.request.appliance, now=datetime.now(timezone.utc),
                         partial_grace=self.partial_grace, tz=self.zone, dry_run=dry_run,
                         prune_sessions=bool(self.prune["prune_sessions"]), lock_ttl=self.request.lock_ttl,
                         future_tolerance=self.future_tolerance)
        removed = [item["id"] for outcome in outcomes for item in outcome.to_dict()["removed"]]
        errors = [outcome.error for outcome in outcomes if outcome.error]
        if errors:
            raise BackupError("pruning failed: %s" % "; ".join(errors))
        warnings = [warning for outcome in outcomes if outcome.plan for warning in outcome.plan.warnings]
        return {"policy": self.policy.describe(), "removed": removed, "errors": errors, "dry_run": dry_run,
                "warnings": warnings}


def run_backup(params: Dict[str, Any], check_mode: bool = False, notify: Optional[Notify] = None,
               progress: Optional[Progress] = None) -> Dict[str, Any]:
    """One run; returns the summary (status ok, skipped or checked). Failures raise BackupError, whose
    ``summary`` attribute (when set) holds what the run did before it failed (e.g. the snapshot taken).
    ``progress`` hears of each phase and the bytes moved (the CLI's bar or journal lines; the module
    gives none: its output is its JSON)."""
    notify = notify or (lambda level, text: None)
    try:
        summary = _run(BackupJob(params), check_mode, progress or Progress())
    except ConfigError as exc:
        notify("error", "event=%d Error on backup: configuration: %s" % (EVENT_ERROR, exc))
        raise
    except BackupError as exc:
        notify("error", "event=%d Error on backup: %s" % (EVENT_ERROR, exc))
        raise
    if summary["status"] == "skipped":
        notify("info", "Backup skipped on %s: %s" % (summary["appliance"], summary["reason"]))
    elif summary["status"] == "ok":
        snap = summary["snapshot"]
        text = "event=%d Backup performed: %s snapshot %s (%d bytes) at %s in %.1f s" % (
            EVENT_PERFORMED, summary["appliance"], snap["id"], snap["size"], snap["location"], snap["duration"])
        if snap["warnings"]:
            notify("warning", "%s, published with %d warning(s): %s" % (text, len(snap["warnings"]), "; ".join(snap["warnings"])))
        else:
            notify("info", text)
    return summary


def _role_database(job: BackupJob) -> Optional[DatabaseConnection]:
    """The server that tells the cluster role, also when the job takes no database (config only, say)."""
    if job.request.db is not None:
        return job.request.db
    try:
        return build_database(job.params["database"])
    except BackupError:
        return None  # galera.cnf decides, as when the server does not answer


def _run(job: BackupJob, check_mode: bool, progress: Progress) -> Dict[str, Any]:
    appliance = job.params["appliance"]
    summary: Dict[str, Any] = {"appliance": job.request.appliance, "status": "ok"}
    summary["cluster"] = role = cluster_role(job.request.layout, appliance.get("health_url"),
                                             bool(appliance.get("validate_certs", True)), db=_role_database(job))
    try:
        summary["appliance_version"] = appliance_version(job.request.layout)["version"]
    except ApplianceError:  # reporting only: it must not stop a skip or a backup
        summary["appliance_version"] = "unknown"
    reason = job.skip_reason(role)
    if reason:
        summary.update(status="skipped", reason=reason)
        return summary
    with open_target(job.params["target"]) as target:
        if check_mode:
            report = preflight(target, job.request)
            if not report["ok"]:
                raise BackupError("preflight failed: %s" % "; ".join(report["problems"]))
            summary.update(status="checked", preflight=report)
            if job.policy is not None:
                summary["prune"] = job.prune_appliance(target, dry_run=True)
            return summary
        snap = take_snapshot(target, job.request, progress)
        summary["snapshot"] = {key: snap[key] for key in SNAPSHOT_SUMMARY_KEYS}
        try:
            if job.verify_mode != "none":
                progress.phase("verify", total=snap["size"])  # quick and deep both read the object back
                summary["verify"] = job.verify_new(CountedReads(target, progress) if progress.active else target,
                                                   snap["id"])
            if job.policy is not None:
                progress.phase("prune")
                summary["prune"] = job.prune_appliance(target)
        except (BackupError, Cancelled) as exc:  # a stop signal too: the snapshot taken is still reported
            exc.summary = dict(summary, status="failed")  # type: ignore[union-attr]
            raise
    return summary
