# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Session recordings: which ones a snapshot references, and copying them back from the target."""

from __future__ import annotations

import os
import posixpath
import time
from typing import TYPE_CHECKING, Any, Dict, List

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import check_member_name
from ansible_collections.segura.backup.plugins.module_utils._engine.constants import MiB
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, IntegrityError, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import SESSION_DIR_MODE, SESSION_FILE_MODE, RestoreRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.tree import DestinationTree, Wanted
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target, clean_relpath

if TYPE_CHECKING:  # annotations only: plan imports this module
    from ansible_collections.segura.backup.plugins.module_utils._engine.restore.plan import RestorePlan


def session_entries(manifest: Dict[str, Any], source_appliance: str) -> List[Dict[str, Any]]:
    prefix = catalog.sessions_dir(source_appliance) + "/"
    entries = manifest.get("sessions") or []
    if not isinstance(entries, list):
        raise IntegrityError("manifest.json 'sessions' is not a list")
    result = []
    for entry in entries:
        try:
            path, size, sha256 = entry["path"], int(entry["size"]), entry["sha256"]
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("manifest.json has a session entry without path, size and sha256") from None
        if not isinstance(path, str) or clean_relpath(path) != path or not path.startswith(prefix):
            raise IntegrityError("manifest.json references the recording %r outside %s" % (path, prefix))
        check_member_name(path[len(prefix):])
        result.append({"path": path, "relpath": path[len(prefix):], "size": size, "sha256": sha256})
    return result


def session_wanted(request: RestoreRequest, entry: Dict[str, Any]) -> Wanted:
    return Wanted(relpath=posixpath.join(request.layout.arz_dir, entry["relpath"]), type="file",
                  size=entry["size"], sha256=entry["sha256"], mode=SESSION_FILE_MODE, mtime=0, uid=0, gid=0)


def plan_sessions(target: Target, request: RestoreRequest, plan: RestorePlan) -> None:
    tree = DestinationTree(request.layout.root, [request.layout.arz_dir])
    listed: Dict[str, Dict[str, int]] = {}
    missing = []
    for entry in plan.sessions:
        folder = posixpath.dirname(entry["path"])
        if folder not in listed:
            try:
                listed[folder] = {e.name: e.size for e in target.listdir(folder) if not e.is_dir}
            except TargetNotFound:
                listed[folder] = {}
        if listed[folder].get(posixpath.basename(entry["path"])) != entry["size"]:
            missing.append(entry["path"])
        wanted = session_wanted(request, entry)
        state = tree.state(wanted)
        # Recordings carry no metadata in the manifest: equal content is enough.
        plan.session_states[entry["path"]] = "same" if state in ("same", "metadata") else state
    if missing:
        plan.problems.append("%d referenced session recordings are missing on the target or have another size: %s"
                             % (len(missing), ", ".join(missing[:10])))


def restore_sessions(target: Target, request: RestoreRequest, plan: RestorePlan) -> Dict[str, int]:
    tree = DestinationTree(request.layout.root, [request.layout.arz_dir])
    copied = skipped = copied_bytes = 0
    for entry in plan.sessions:
        wanted = session_wanted(request, entry)
        if tree.state(wanted) in ("same", "metadata"):
            skipped += 1
            continue
        _ensure_session_dirs(tree, request.layout.arz_dir, posixpath.dirname(wanted.relpath))
        wanted.mtime = int(time.time())
        with target.open_read(entry["path"]) as handle:
            tree.write_file(wanted, iter(lambda: handle.read(4 * MiB), b""))
        copied += 1
        copied_bytes += entry["size"]
    return {"restored": copied, "skipped": skipped, "bytes": copied_bytes}


def _ensure_session_dirs(tree: DestinationTree, arz_dir: str, folder: str) -> None:
    parts = folder.split("/")
    for depth in range(len(arz_dir.split("/")), len(parts) + 1):
        relpath = "/".join(parts[:depth])
        tree.make_dir(Wanted(relpath=relpath, type="dir", size=0, sha256=None, mode=SESSION_DIR_MODE,
                             mtime=0, uid=0, gid=0))
        opened = tree._open_parent(relpath, create=False)
        if opened is None:  # make_dir just created it: removed since
            raise ApplianceError("%s vanished during the restore" % tree._local(relpath))
        dfd, name = opened
        try:
            os.chmod(name, SESSION_DIR_MODE, dir_fd=dfd, follow_symlinks=True)
        finally:
            os.close(dfd)
