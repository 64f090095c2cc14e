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

The file is checked against the backup_job module's argument spec (specs.py), so a key or default
cannot differ from a playbook run; ``"verify": false`` means ``{"mode": "none"}``. One run is
job.run_backup: cluster role check -> snapshot -> verify the new snapshot -> prune. The result is
printed as one JSON line on stdout (the journal keeps it); a syslog event says how it
went (Segura's events: 18 "Backup performed", 19 "Error on backup"). Exit status: 0 done (complete)
or skipped (not the primary); 1 published with warnings (e.g. session recordings partial: the
snapshot is there, someone should look; the JSON line says ``"status": "warning"``); 2 failed
(nothing new published; a bad configuration too).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import syslog
from typing import Any, Dict, List, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import RunStopped, stop_cleanly_on_signals
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError, ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.job import EVENT_ERROR, run_backup
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import backup_job_spec, validate

SYSLOG_IDENT = "segura-backup"
EXIT_OK, EXIT_WARNINGS, EXIT_FAILED = 0, 1, 2
EXIT_CONFIG = EXIT_FAILED  # a configuration error is a failed run


def load_config(path: str) -> Dict[str, Any]:
    """The validated parameters of the config file; refuses a file that others can read (secrets)."""
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
    # JSON spellings people write: null means "the default", true means "with default settings".
    config = _without_nulls(config)
    if config.get("verify") is False:
        config["verify"] = {"mode": "none"}
    if config.get("verify") is True:
        config["verify"] = {}
    if config.get("prune") is False:
        config.pop("prune")
    return validate(backup_job_spec(), config, "config file %s" % path)


def _without_nulls(value: Any) -> Any:
    """The config with every null-valued key dropped, at every level (so the default applies)."""
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    return value


def _event(level: str, text: str) -> None:
    syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)
    try:
        syslog.syslog({"error": syslog.LOG_ERR, "warning": syslog.LOG_WARNING}.get(level, syslog.LOG_INFO), text)
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
    notify = (lambda level, text: None) if options.no_syslog else _event
    try:
        try:
            params = load_config(options.config)
        except ConfigError as exc:  # run_backup reports its own failures; this one happens before it
            notify("error", "event=%d Error on backup: configuration: %s" % (EVENT_ERROR, exc))
            raise
        with stop_cleanly_on_signals():  # systemctl stop, a shutdown: release the lock, remove the partial
            summary = run_backup(params, notify=notify)
    except ConfigError as exc:
        _emit({"status": "failed", "error": type(exc).__name__, "message": str(exc)})
        return EXIT_CONFIG
    except RunStopped as exc:  # raised around run_backup, which could not report it itself
        notify("error", "event=%d Error on backup: %s" % (EVENT_ERROR, exc))
        done = getattr(exc, "summary", None)  # a snapshot taken before the stop came
        _emit(dict(done or {}, status="failed", error=type(exc).__name__, message=str(exc)))
        return EXIT_FAILED
    except BackupError as exc:
        done = getattr(exc, "summary", None)  # a snapshot taken before verify or prune failed
        _emit(dict(done or {}, status="failed", error=type(exc).__name__, message=str(exc)))
        return EXIT_FAILED
    except Exception as exc:  # an unexpected failure must still be reported as a failed backup (the traceback follows)
        _emit({"status": "failed", "error": type(exc).__name__, "message": "unexpected: %s" % exc})
        notify("error", "event=%d Error on backup: unexpected %s: %s" % (EVENT_ERROR, type(exc).__name__, exc))
        raise
    if (summary.get("snapshot") or {}).get("warnings"):
        _emit(dict(summary, status="warning"))
        return EXIT_WARNINGS
    _emit(summary)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
