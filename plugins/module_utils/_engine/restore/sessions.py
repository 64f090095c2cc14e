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
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.tree import DestinationTree, Wanted, check_symlink_target
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target

if TYPE_CHECKING:  # annotations only: plan imports this module
    from ansible_collections.segura.backup.plugins.module_utils._engine.restore.plan import RestorePlan


def session_entries(manifest: Dict[str, Any], source_appliance: str, arz_dir: str) -> List[Dict[str, Any]]:
    """The manifest's recordings (files, symbolic links, further hard-link names), validated, with
    ``relpath`` below the recordings folder. A link whose target leaves the recordings folder gets
    ``refused`` (the reason): the main archive's rule, so a restore never plants a way out."""
    items = manifest.get("sessions") or []
    if not isinstance(items, list):
        raise IntegrityError("manifest.json 'sessions' is not a list")
    prefix = catalog.sessions_dir(source_appliance) + "/"
    result = []
    for entry in catalog.session_entries(items, source_appliance, "manifest.json"):
        relpath = entry["path"][len(prefix):]
        check_member_name(relpath)
        item = dict(entry, relpath=relpath)
        if entry.get("type") == "symlink":
            reason = check_symlink_target(posixpath.join(arz_dir, relpath), entry["target"], [arz_dir])
            if reason:
                item["refused"] = "symbolic link not restored: its %s" % reason.replace("restored paths", "recordings folder")
        result.append(item)
    return result


def session_wanted(request: RestoreRequest, entry: Dict[str, Any]) -> Wanted:
    relpath = posixpath.join(request.layout.arz_dir, entry["relpath"])
    if entry.get("type") == "symlink":
        return Wanted(relpath=relpath, type="symlink", size=0, sha256=None, mode=0o777, mtime=0, uid=0, gid=0,
                      linkname=entry["target"])
    return Wanted(relpath=relpath, type="file", size=entry["size"], sha256=entry["sha256"], mode=SESSION_FILE_MODE,
                  mtime=0, uid=0, gid=0)


def plan_sessions(target: Target, request: RestoreRequest, plan: RestorePlan) -> None:
    tree = DestinationTree(request.layout.root, [request.layout.arz_dir])
    listed: Dict[str, Dict[str, int]] = {}
    missing = []
    for entry in plan.sessions:
        if entry.get("refused"):
            plan.session_states[entry["path"]] = "refused"
            continue
        if "type" not in entry:  # a file: it must be on the target (links carry themselves)
            folder = posixpath.dirname(entry["path"])
            if folder not in listed:
                try:
                    listed[folder] = {e.name: e.size for e in target.listdir(folder) if not e.is_dir}
                except TargetNotFound:
                    listed[folder] = {}
            if listed[folder].get(posixpath.basename(entry["path"])) != entry["size"]:
                missing.append(entry["path"])
        state = tree.state(session_wanted(request, entry))
        # Recordings carry no metadata in the manifest: equal content is enough.
        plan.session_states[entry["path"]] = "same" if state in ("same", "metadata") else state
    if missing:
        plan.problems.append("%d referenced session recordings are missing on the target or have another size: %s"
                             % (len(missing), ", ".join(missing[:10])))


def restore_sessions(target: Target, request: RestoreRequest, plan: RestorePlan) -> Dict[str, Any]:
    """Copy back what differs: files from the target, links as links, further hard-link names as
    hard links to the first name (a copy where a link cannot be made). Refused links are listed."""
    tree = DestinationTree(request.layout.root, [request.layout.arz_dir])
    copied = skipped = copied_bytes = linked = 0
    refused = []
    prefix = len(catalog.sessions_dir(plan.record.appliance)) + 1
    # Hard links last: the name they link to must be in place first (the list is sorted by path).
    for entry in sorted(plan.sessions, key=lambda item: item.get("type") == "hardlink"):
        if entry.get("refused"):
            refused.append({"path": posixpath.join("/", request.layout.arz_dir, entry["relpath"]), "reason": entry["refused"]})
            continue
        wanted = session_wanted(request, entry)
        if tree.state(wanted) in ("same", "metadata"):
            skipped += 1
            continue
        _ensure_session_dirs(tree, request.layout.arz_dir, posixpath.dirname(wanted.relpath))
        kind = entry.get("type")
        if kind == "symlink":
            tree.write_symlink(wanted)
            linked += 1
            continue
        if kind == "hardlink" and tree.hard_link(posixpath.join(request.layout.arz_dir, entry["link"][prefix:]), wanted):
            linked += 1
            continue
        wanted.mtime = int(time.time())
        # a hard link that cannot be made (another filesystem, not allowed) becomes a copy of its first name
        with target.open_read(entry["link"] if kind == "hardlink" else entry["path"]) as handle:
            tree.write_file(wanted, iter(lambda: handle.read(4 * MiB), b""))
        copied += 1
        copied_bytes += entry["size"]
    return {"restored": copied + linked, "skipped": skipped, "bytes": copied_bytes, "links": linked,
            "refused": refused}


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
