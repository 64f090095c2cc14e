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

Progress (progress.py) goes to stderr, never stdout: run by hand from a terminal, a bar (phase, bytes,
rate, ETA against the previous snapshot's size); under systemd (JOURNAL_STREAM or INVOCATION_ID set), a
line per phase and one every 30 s in between; otherwise nothing. ``--progress`` and
``--progress-interval`` choose otherwise (the cron entry asks for lines).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import syslog
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine import progress
from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import RunStopped, stop_cleanly_on_signals
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError, ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.job import EVENT_ERROR, run_backup
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import backup_job_spec, validate
from ansible_collections.segura.backup.plugins.module_utils._engine.text import describe_bytes

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


def _interval(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds")
    return value


def _final(document: Dict[str, Any]) -> str:
    """The progress report's last words: how the run ended (no message text: the JSON line has it)."""
    snap = document.get("snapshot") or {}
    text = document.get("status", "ok")
    if snap.get("id"):
        text += ": snapshot %s, %s" % (snap["id"], describe_bytes(int(snap.get("size") or 0)))
    if snap.get("warnings"):
        text += ", %d warning(s)" % len(snap["warnings"])
    if "verify" in document:
        text += ", verified (%s)" % document["verify"]["mode"]
    if "prune" in document:
        text += ", %d pruned" % len(document["prune"]["removed"])
    if document.get("error"):
        text += " (%s; see the result line)" % document["error"]
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="segura-backup", description="Scheduled backup of this Segura appliance.")
    parser.add_argument("--config", required=True, help="JSON config file (mode 0600)")
    parser.add_argument("--no-syslog", action="store_true", help="do not send the syslog event")
    parser.add_argument("--progress", choices=progress.MODES, default="auto",
                        help="progress on stderr: a bar, lines, or none (auto: a bar on a terminal, lines "
                             "under systemd, else none)")
    parser.add_argument("--progress-interval", type=_interval, default=None, metavar="SECONDS",
                        help="seconds between two progress updates (default: 0.25 for the bar, 30 for lines)")
    options = parser.parse_args(argv)
    notify = (lambda level, text: None) if options.no_syslog else _event
    reporter = progress.reporter(options.progress, sys.stderr, options.progress_interval)
    document: Dict[str, Any] = {"status": "failed"}  # until the run says otherwise
    try:
        code, document = _run_job(options.config, notify, reporter)
    finally:  # the progress report's last line comes before the result line
        reporter.close(_final(document))
    _emit(document)
    return code


def _run_job(path: str, notify: Any, reporter: progress.Progress) -> Tuple[int, Dict[str, Any]]:
    """(exit status, the result document) of one run with the config file at ``path``."""
    try:
        try:
            params = load_config(path)
        except ConfigError as exc:  # run_backup reports its own failures; this one happens before it
            notify("error", "event=%d Error on backup: configuration: %s" % (EVENT_ERROR, exc))
            raise
        with stop_cleanly_on_signals():  # systemctl stop, a shutdown: release the lock, remove the partial
            summary = run_backup(params, notify=notify, progress=reporter)
    except ConfigError as exc:
        return EXIT_CONFIG, {"status": "failed", "error": type(exc).__name__, "message": str(exc)}
    except RunStopped as exc:  # raised around run_backup, which could not report it itself
        notify("error", "event=%d Error on backup: %s" % (EVENT_ERROR, exc))
        done = getattr(exc, "summary", None)  # a snapshot taken before the stop came
        return EXIT_FAILED, dict(done or {}, status="failed", error=type(exc).__name__, message=str(exc))
    except BackupError as exc:
        done = getattr(exc, "summary", None)  # a snapshot taken before verify or prune failed
        return EXIT_FAILED, dict(done or {}, status="failed", error=type(exc).__name__, message=str(exc))
    except Exception as exc:  # an unexpected failure must still be reported as a failed backup (the traceback follows)
        reporter.close("failed")
        _emit({"status": "failed", "error": type(exc).__name__, "message": "unexpected: %s" % exc})
        notify("error", "event=%d Error on backup: unexpected %s: %s" % (EVENT_ERROR, type(exc).__name__, exc))
        raise
    if (summary.get("snapshot") or {}).get("warnings"):
        return EXIT_WARNINGS, dict(summary, status="warning")
    return EXIT_OK, summary


if __name__ == "__main__":
    raise SystemExit(main())
