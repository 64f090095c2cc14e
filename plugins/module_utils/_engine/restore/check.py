# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The post-verification of a restore."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.physical import short_version
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.tablefacts import compare_facts, table_facts
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.logical import dump_digest
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.plan import RestorePlan
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.sessions import session_wanted
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.tree import DestinationTree, allowed_roots


def post_verify(request: RestoreRequest, plan: RestorePlan, physical: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Files on disk against the manifest; databases against facts of the source (see ``check_database``)."""
    problems: List[str] = []
    tree = DestinationTree(request.layout.root, list(allowed_roots(request.layout)))
    checked = 0
    for wanted in plan.wanted:
        state = tree.state(wanted)
        checked += 1
        if state != "same":
            problems.append("/%s is %s after the restore" % (wanted.relpath, "missing" if state == "missing"
                                                             else "different (%s)" % state))
    result: Dict[str, Any] = {"files": {"checked": checked, "ok": not problems}}
    if request.restore_sessions:
        stree = DestinationTree(request.layout.root, [request.layout.arz_dir])
        bad = [e["path"] for e in plan.sessions
               if not e.get("refused") and stree.state(session_wanted(request, e)) not in ("same", "metadata")]
        problems.extend("session recording %s was not restored intact" % p for p in bad[:10])
        result["sessions"] = {"checked": len(plan.sessions), "ok": not bad}
    if plan.restores_database:
        result["database"] = check_database(request, plan, physical)
        problems.extend(result["database"]["problems"])
    result["problems"] = problems
    result["ok"] = not problems
    return result


def check_database(request: RestoreRequest, plan: RestorePlan, physical: Optional[Dict[str, Any]] = None
                   ) -> Dict[str, Any]:
    """The restored databases against what the snapshot says about its source.

    physical: the live server was compared, right after it started, with a throwaway server on the
    prepared copy (the snapshot's point itself); a difference rolled the restore back.
    logical with db/facts.json: row counts (history included) and CHECKSUM TABLE of the restored
    server against the source's, taken at the dump's point; the losses the snapshot reported are
    compared by row count only and listed as known losses. Any other difference fails the check.
    older logical snapshots: only a re-dump compared with the snapshot's dump, which cannot see what
    the dump itself lost - said as much in ``strength``.
    """
    if physical is not None:
        live = physical.get("live_check")
        return {"method": "physical", "databases": list(plan.databases), "ok": True, "problems": [],
                "strength": "exact" if live else "copy",
                "compared": "the restored server with a throwaway server on the prepared copy (row counts with "
                            "history, CHECKSUM TABLE)" if live else
                            "the prepared copy only (service none: the server was not started by the restore)",
                "known_losses": []}
    losses = (plan.db_record or {}).get("losses") or []
    known = [loss for loss in losses if loss.get("changes_data")]
    # Not comparable: a table dumped at its own moment (not InnoDB), a versioned one dumped without history.
    skipped = sorted({loss["table"] for loss in losses if not loss.get("column")})
    if plan.source_facts is not None:
        source = plan.source_facts
        actual = table_facts(request.database(), plan.databases)
        same_version = short_version(actual["server_version"]) == short_version(source.get("server_version") or "")
        problems = compare_facts(source, actual, rows_only=sorted({loss["table"] for loss in known if loss.get("column")}),
                                 checksums=same_version, skip=skipped)
        return {"method": "logical", "databases": list(plan.databases), "ok": not problems, "problems": problems,
                "strength": "exact except the known losses" if same_version else "row counts",
                "compared": "the restored server with the source's facts at the dump's point (row counts with history"
                            "%s)" % (", CHECKSUM TABLE" if same_version else "; another server version, so no "
                                     "checksums"),
                "known_losses": known, "not_compared": skipped}
    extra = ["--dump-history"] if (plan.db_record or {}).get("dump_history") else []
    same = dump_digest(request.database(), plan.databases, extra) == plan.dump_digest
    return {"method": "logical", "databases": list(plan.databases), "ok": same,
            "problems": [] if same else ["a fresh dump of %s differs from the dump in the snapshot"
                                         % ", ".join(plan.databases)],
            "strength": "weak",
            "compared": "a re-dump with the snapshot's dump (this snapshot carries no source facts, so what the dump "
                        "itself lost cannot be seen)",
            "known_losses": known}
