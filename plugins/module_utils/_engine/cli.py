# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command line entry point of the scheduled backup: the same engine as the modules, without Ansible.

    python -m ansible_collections.segura.backup.plugins.module_utils._engine.cli --config /etc/segura-backup/backup.json

The config file (JSON, owned by root, mode 0600 - it may hold a share password or a passphrase) uses
the option shapes of the modules::

    {"target": {...}, "encryption": {...}, "appliance": {...}, "database": {...},   # as snapshot
     "components": [...], "compression": {...}, "chunk_size_mb": 16, "lock_ttl": 900,  # as snapshot
     "verify": {"mode": "quick"} | false,                                               # as verify
     "prune": {"keep_daily": 7, "keep_weekly": 4, ...} | false,                         # as prune
     "primary_only": true, "when_role_unknown": "backup"}

One run: cluster role check -> snapshot -> verify the new snapshot -> prune this appliance. The
result is printed as one JSON line on stdout (the journal keeps it); a syslog event says how it
went (Segura's events: 18 "Backup performed", 19 "Error on backup"). Exit status: 0 done or skipped
(not the primary), 1 failed, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import syslog
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, retention
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.facts import (
    cluster_role,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError, ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.options import (
    appliance_name,
    build_database,
    build_decryption,
    build_encryption,
    build_layout,
)

SYSLOG_IDENT = "segura-backup"
EVENT_PERFORMED = 18
EVENT_ERROR = 19
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

KNOWN_KEYS = {"target", "encryption", "appliance", "database", "components", "compression", "chunk_size_mb",
              "lock_ttl", "verify", "prune", "primary_only", "when_role_unknown"}
ROLE_UNKNOWN_CHOICES = ("backup", "skip", "fail")
VERIFY_KEYS = {"mode", "decryption", "check_session_hashes"}
PRUNE_KEYS = set(retention.COUNT_OPTIONS) | {"keep_within", "timezone", "partial_grace", "prune_sessions"}


def load_config(path: str) -> Dict[str, Any]:
    """The config as a dict; refuses a file that others can read (it may hold secrets)."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except OSError as exc:
        raise ConfigError("cannot read config file %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise ConfigError("config file %s is not valid JSON: %s" % (path, exc)) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("config file %s must not be readable by group or others (chmod 0600)" % path)
    if not isinstance(config, dict):
        raise ConfigError("config file %s must hold a JSON object" % path)
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise ConfigError("config file %s has unknown key(s): %s" % (path, ", ".join(unknown)))
    for key in ("target", "encryption"):
        if not isinstance(config.get(key), dict):
            raise ConfigError("config file %s needs '%s' (an object, as the snapshot module's option)" % (path, key))
    return config


def _section(config: Dict[str, Any], name: str, known: set) -> Optional[Dict[str, Any]]:
    """The verify/prune section: None when switched off (false/null/absent for prune), else a dict."""
    value = config.get(name, {} if name == "verify" else None)
    if value in (None, False):
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError("'%s' must be an object or false" % name)
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError("'%s' has unknown key(s): %s" % (name, ", ".join(unknown)))
    return value


def _zone(name: str):
    if name in ("UTC", "utc", "Z"):
        return timezone.utc
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(name)
    except (ImportError, ValueError, KeyError, OSError, TypeError) as exc:
        raise ConfigError("timezone %r is not a known IANA time zone (%s)" % (name, exc)) from None


def snapshot_request(config: Dict[str, Any]):
    """A SnapshotRequest from the config, with the snapshot module's defaults."""
    from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import SnapshotRequest

    components = config.get("components") or ["database", "config", "secrets"]
    # a bare string would be read letter by letter
    if not isinstance(components, list) or not all(isinstance(item, str) for item in components):
        raise ConfigError("'components' must be a list of names, e.g. [\"database\", \"config\"]")
    compression = _object(config, "compression")
    appliance = _object(config, "appliance")
    database = _object(config, "database")
    try:
        database_connection = build_database(database) if "database" in components else None
    except TypeError:  # an unknown key in the database object
        raise ConfigError("'database' has an unknown key; allowed: the snapshot module's database options") from None
    return SnapshotRequest(
        appliance=appliance_name(appliance),
        layout=build_layout(appliance),
        encryption=build_encryption(config["encryption"]),
        db=database_connection,
        components=components,
        zstd_level=_whole_number(compression, "level", 3, "compression.level"),
        zstd_threads=_whole_number(compression, "threads", 0, "compression.threads"),
        chunk_size=_whole_number(config, "chunk_size_mb", 16, "chunk_size_mb", minimum=1) * 1024 * 1024,
        lock_ttl=timedelta(seconds=_whole_number(config, "lock_ttl", 900, "lock_ttl", minimum=1)),
        health_url=appliance.get("health_url"),
    )


def _object(config: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError("'%s' must be an object" % key)
    return value


def _whole_number(section: Dict[str, Any], key: str, default: int, label: str, minimum: int = 0) -> int:
    """An integer setting; a typo such as "16MB" is a configuration error, not a crash."""
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError("%s must be a whole number, not %r" % (label, value))
    try:
        number = int(value)
    except ValueError:
        raise ConfigError("%s must be a whole number, not %r" % (label, value)) from None
    if number < minimum:
        raise ConfigError("%s must be %d or more, not %d" % (label, minimum, number))
    return number


def run(config: Dict[str, Any]) -> Dict[str, Any]:
    """One scheduled run; returns the summary. BackupError on failure (the message names the cause)."""
    from ansible_collections.segura.backup.plugins.module_utils._engine import verification
    from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import prune
    from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import take_snapshot
    from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target

    verify_options = _section(config, "verify", VERIFY_KEYS)
    prune_options = _section(config, "prune", PRUNE_KEYS)
    when_unknown = config.get("when_role_unknown", "backup")
    if when_unknown not in ROLE_UNKNOWN_CHOICES:
        raise ConfigError("when_role_unknown must be one of %s" % ", ".join(ROLE_UNKNOWN_CHOICES))
    request = snapshot_request(config)
    policy = retention.Policy.from_options(prune_options) if prune_options is not None else None
    # Everything the verify and prune steps need is checked now: a mistake there must not be found only
    # after a full snapshot was taken.
    verify_mode = decryption = None
    if verify_options is not None:
        verify_mode = verify_options.get("mode", "quick")
        if verify_mode not in verification.MODES:
            raise ConfigError("verify mode must be one of %s, not %r" % (", ".join(verification.MODES), verify_mode))
        decryption = build_decryption(verify_options.get("decryption")) if verify_mode == "deep" else None
        if decryption is not None and decryption.mode == "none" and request.encryption.mode != "none":
            raise ConfigError("verify mode deep needs 'decryption' (identity_file, identities or passphrase) "
                              "to open the %s-encrypted snapshot" % request.encryption.mode)
    if prune_options is not None:
        partial_grace = retention.parse_duration(prune_options.get("partial_grace", "24h"), "partial_grace")
        prune_zone = _zone(prune_options.get("timezone", "UTC"))
    appliance = config.get("appliance") or {}

    summary: Dict[str, Any] = {"appliance": request.appliance, "status": "ok"}
    role = cluster_role(request.layout, appliance.get("health_url"),
                                      bool(appliance.get("validate_certs", True)))
    summary["cluster"] = role
    if config.get("primary_only", True) and not role["is_primary"]:
        if role["is_primary"] is False or when_unknown == "skip":
            summary.update(status="skipped", reason="not the primary (%s, from %s)" % (role["role"], role["source"]))
            return summary
        if when_unknown == "fail":
            raise ConfigError("cannot tell whether this node is the primary: %s" % role.get("error", role["role"]))

    with open_target(config["target"]) as target:
        snap = take_snapshot(target, request)
        summary["snapshot"] = {key: snap[key] for key in ("id", "created", "object", "location", "size", "sha256",
                                                          "duration", "components", "counts")}
        if verify_options is not None:
            mode = verify_mode
            listing = catalog.list_snapshots(target, request.appliance)
            chosen, _missing = verification.select_snapshots(listing, "ids", ids=[snap["id"]])
            results = verification.verify_snapshots(
                target, chosen, mode, decryption=decryption,
                check_session_hashes=bool(verify_options.get("check_session_hashes", False)))
            summary["verify"] = {"mode": mode, "ok": bool(results) and all(r.ok for r in results),
                                 "message": verification.summary(results)}
            if not summary["verify"]["ok"]:
                raise BackupError("snapshot %s failed verification: %s" % (snap["id"], summary["verify"]["message"]))
        if policy is not None:
            outcomes = prune(target, policy, appliance=request.appliance, now=datetime.now(timezone.utc),
                             partial_grace=partial_grace, tz=prune_zone,
                             prune_sessions=bool(prune_options.get("prune_sessions", True)),
                             lock_ttl=request.lock_ttl)
            removed = [item for outcome in outcomes for item in outcome.to_dict()["removed"]]
            errors = [outcome.error for outcome in outcomes if outcome.error]
            summary["prune"] = {"policy": policy.describe(), "removed": [item["id"] for item in removed],
                                "errors": errors}
            if errors:
                raise BackupError("pruning failed: %s" % "; ".join(errors))
    return summary


def _event(priority: int, text: str) -> None:
    syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)
    try:
        syslog.syslog(priority, text)
    finally:
        syslog.closelog()


def _emit(document: Dict[str, Any]) -> None:
    """One JSON line on stdout (the journal keeps it)."""
    sys.stdout.write(json.dumps(document, sort_keys=True) + "\n")
    sys.stdout.flush()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="segura-backup", description="Scheduled backup of this Segura appliance.")
    parser.add_argument("--config", required=True, help="JSON config file (mode 0600)")
    parser.add_argument("--no-syslog", action="store_true", help="do not send the syslog event")
    options = parser.parse_args(argv)
    notify = (lambda priority, text: None) if options.no_syslog else _event
    try:
        config = load_config(options.config)
        summary = run(config)
    except ConfigError as exc:
        message = "event=%d Error on backup: configuration: %s" % (EVENT_ERROR, exc)
        _emit({"status": "failed", "error": type(exc).__name__, "message": str(exc)})
        notify(syslog.LOG_ERR, message)
        return EXIT_CONFIG
    except BackupError as exc:
        message = "event=%d Error on backup: %s" % (EVENT_ERROR, exc)
        _emit({"status": "failed", "error": type(exc).__name__, "message": str(exc)})
        notify(syslog.LOG_ERR, message)
        return EXIT_FAILED
    except Exception as exc:  # an unexpected failure must still be reported as a failed backup (the traceback follows)
        _emit({"status": "failed", "error": type(exc).__name__, "message": "unexpected: %s" % exc})
        notify(syslog.LOG_ERR, "event=%d Error on backup: unexpected %s: %s" % (EVENT_ERROR, type(exc).__name__, exc))
        raise
    _emit(summary)
    if summary["status"] == "skipped":
        notify(syslog.LOG_INFO, "Backup skipped on %s: %s" % (summary["appliance"], summary["reason"]))
    else:
        snap = summary["snapshot"]
        notify(syslog.LOG_INFO, "event=%d Backup performed: %s snapshot %s (%d bytes) at %s in %.1f s" % (
            EVENT_PERFORMED, summary["appliance"], snap["id"], snap["size"], snap["location"], snap["duration"]))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
