# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The post-verification of a restore."""

from __future__ import annotations

from typing import Any, Dict, List

from ansible_collections.segura.backup.plugins.module_utils._engine.restore.logical import dump_digest
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.plan import RestorePlan
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.sessions import session_wanted
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.tree import DestinationTree, allowed_roots


def post_verify(request: RestoreRequest, plan: RestorePlan) -> Dict[str, Any]:
    """Files on disk against the manifest; databases re-dumped and compared with the snapshot's dump."""
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
        bad = [e["path"] for e in plan.sessions if stree.state(session_wanted(request, e)) not in ("same", "metadata")]
        problems.extend("session recording %s was not restored intact" % p for p in bad[:10])
        result["sessions"] = {"checked": len(plan.sessions), "ok": not bad}
    if plan.restores_database:
        digest = dump_digest(request.database(), plan.databases)
        same = digest == plan.dump_digest
        result["database"] = {"method": "re-dump compared with the snapshot's dump (comment lines aside)",
                              "databases": list(plan.databases), "ok": same}
        if not same:
            problems.append("a fresh dump of %s differs from the dump in the snapshot" % ", ".join(plan.databases))
    result["problems"] = problems
    result["ok"] = not problems
    return result
