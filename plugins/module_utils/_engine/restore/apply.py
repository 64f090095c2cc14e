# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Pass 2: the restore itself, every member re-checked against the manifest of pass 1 before use."""

from __future__ import annotations

import posixpath
import time
from typing import Any, Callable, Dict, List, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import run_query
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.physical import PHYSICAL
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import SNAPSHOT_MEMBER
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.reader import ArchiveReader
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ArchiveError, BackupError, ConfigError, IntegrityError
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.check import post_verify
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.commands import run_commands
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.logical import DatabaseLoader, spool_chunk
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.physical import PhysicalRestore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.plan import RestorePlan, open_object, plan_restore, snapshot_facts
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import (
    BLOCK,
    DB_CHUNK,
    FILES_PREFIX,
    MAX_LISTED,
    PHYSICAL_CHUNK,
    RestoreRequest,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.sessions import restore_sessions
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.tree import DestinationTree, Wanted, allowed_roots
from ansible_collections.segura.backup.plugins.module_utils._engine.streams import HashingReader
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target
from ansible_collections.segura.backup.plugins.module_utils._engine.text import describe_bytes


def restore(target: Target, request: RestoreRequest, plan: Optional[RestorePlan] = None,
            progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Restore a snapshot onto the appliance; returns what was done, per-phase durations included."""
    started = time.monotonic()
    if plan is None:
        plan = plan_restore(target, request, extract=True)
        preflight_outside = 0.0  # the preflight ran here: already inside the total
    else:
        # The caller planned (the module does): count the preflight's pass 1 into the total (RTO).
        preflight_outside = plan.fetch_seconds
    if not plan.ok:
        raise ConfigError("restore refused, nothing was written: %s" % "; ".join(plan.problems))
    durations = {"fetch_verify": round(plan.fetch_seconds, 3), "database": 0.0, "files": 0.0, "sessions": 0.0,
                 "post_verify": 0.0}
    result: Dict[str, Any] = {"snapshot": snapshot_facts(plan.record, plan.snapshot),
                              "components": list(plan.components), "warnings": list(plan.warnings),
                              "signature": plan.checks.get("signature")}
    try:
        result["pre_commands"] = run_commands(request.pre_commands, "pre", request.command_timeout)
    except BaseException:
        if plan.extracted is not None:
            plan.extracted.discard()  # the staging folder: nothing live was touched
        raise

    written = {"files": 0, "dirs": 0, "symlinks": 0, "metadata": 0, "unchanged": 0}
    overwritten: List[str] = []
    roots = allowed_roots(request.layout)
    tree = DestinationTree(request.layout.root, list(roots))
    by_relpath = {w.relpath: w for w in plan.wanted}
    loader: Optional[Any] = None  # DatabaseLoader (logical) or PhysicalRestore
    physical: Optional[Dict[str, Any]] = None  # what the physical restore did
    db_done = False
    db_seconds = files_seconds = 0.0
    dir_entries: List[Wanted] = []
    fed: List[str] = []  # database chunks fed, in order: all of the verified manifest's, or the restore fails
    seen = set()  # paths written or found in place: every planned one, or the restore fails
    extracted = plan.extracted  # pass 1 already fed the physical backup to mbstream (streamed.py)
    if extracted is not None:
        loader, fed = extracted.restorer, list(extracted.fed)
    # Pass 2 reads the object again for what pass 1 did not restore (all of it without an extraction).
    with _SecondPass(target, plan, request, needed=extracted is None or bool(plan.wanted)) as second:
        try:
            for info, content in second.members():
                expected = plan.members.get(info.name)
                if info.name == SNAPSHOT_MEMBER:
                    continue
                if expected is None:
                    raise IntegrityError("member %s is not in the manifest verified in the first pass" % info.name)
                if DB_CHUNK.fullmatch(info.name) or PHYSICAL_CHUNK.fullmatch(info.name):
                    if not plan.restores_database or extracted is not None:
                        continue
                    tick = time.monotonic()
                    spool = spool_chunk(content, expected, info.name)
                    try:
                        if loader is None:
                            loader = _database_restorer(request, plan).start()
                        loader.feed(spool)
                        fed.append(info.name)
                    finally:
                        spool.close()
                    db_seconds += time.monotonic() - tick
                    if progress:
                        progress({"phase": "database", "member": info.name, "bytes": loader.bytes})
                    continue
                if loader is not None and not db_done:  # the dump ended: let the client finish
                    tick = time.monotonic()
                    physical = _finish_database(loader, plan, fed)
                    db_done = True
                    db_seconds += time.monotonic() - tick
                wanted = by_relpath.get(info.name[len(FILES_PREFIX):]) if info.name.startswith(FILES_PREFIX) else None
                if wanted is None:
                    continue  # a component not restored this time
                if info.type != wanted.type or info.size != wanted.size or info.linkname != wanted.linkname:
                    raise IntegrityError("member %s differs from the manifest verified in the first pass" % info.name)
                tick = time.monotonic()
                _restore_entry(tree, wanted, content, written, overwritten, dir_entries)
                seen.add(wanted.relpath)
                files_seconds += time.monotonic() - tick
            if plan.restores_database and not db_done:
                tick = time.monotonic()
                physical = _finish_database(loader, plan, fed)
                db_done = True
                db_seconds += time.monotonic() - tick
            unseen = [w.relpath for w in plan.wanted if w.relpath not in seen]
            if unseen:
                raise IntegrityError("%d path(s) of the verified manifest never came in the second pass (the object "
                                     "changed on the target between the passes), e.g. /%s" % (len(unseen), unseen[0]))
        except BaseException as exc:
            if loader is not None and not db_done:
                loader.abort()
                if isinstance(loader, DatabaseLoader) and loader.bytes and isinstance(exc, Exception):
                    raise partly_restored(request, plan, loader.bytes, exc) from None
            if isinstance(exc, BackupError) and not getattr(loader, "swapped", False):
                raise stopped_in_second_pass(exc, plan, db_done, written) from None
            raise
    tick = time.monotonic()
    # Directories last and deepest first: creating entries changes a directory's mtime.
    for wanted in sorted(dir_entries, key=lambda w: w.relpath.count("/"), reverse=True):
        tree.set_metadata(wanted)
    tree.fsync_dirs(sorted({posixpath.dirname(w.relpath) for w in plan.wanted} | {w.relpath for w in dir_entries}))
    files_seconds += time.monotonic() - tick
    if second.changed():
        result["warnings"].append("the object changed on the target between the two passes; every restored "
                                  "member still matched the verified manifest")
    if physical is not None:
        result["warnings"].extend(physical["warnings"])
        result["warnings"].append("the previous datadir was kept as %s: remove it once the restored server is "
                                  "accepted" % physical["previous_datadir"])
        if not physical["started"]:
            result["warnings"].append("database.service none: start the server on %s now; the restored copy was "
                                      "checked by a throwaway server before the swap" % physical["datadir"])
    durations["database"] = round(db_seconds, 3)
    durations["files"] = round(files_seconds, 3)

    sessions: Dict[str, Any] = {"restored": 0, "skipped": 0, "bytes": 0, "links": 0, "refused": []}
    if request.restore_sessions:
        tick = time.monotonic()
        sessions = restore_sessions(target, request, plan)
        durations["sessions"] = round(time.monotonic() - tick, 3)
        for refused in sessions["refused"][:MAX_LISTED]:
            result["warnings"].append("%s: %s" % (refused["path"], refused["reason"]))

    verification: Dict[str, Any] = {}
    if request.post_verify:
        tick = time.monotonic()
        verification = post_verify(request, plan, physical)
        durations["post_verify"] = round(time.monotonic() - tick, 3)
        for loss in (verification.get("database") or {}).get("known_losses") or []:
            result["warnings"].append("restored with a loss the snapshot reported: %s%s (%s) - %s"
                                      % (loss["table"], "." + loss["column"] if loss.get("column") else "",
                                         loss["type"], loss["reason"]))
        if not verification["ok"]:
            raise IntegrityError("the restore finished but its verification failed: %s"
                                 % "; ".join(verification["problems"][:10]))

    result["post_commands"] = run_commands(request.post_commands, "post", request.command_timeout)
    durations["total"] = round(time.monotonic() - started + preflight_outside, 3)
    result.update({
        "database_method": plan.db_method if plan.restores_database else None,
        # 1: the physical backup was extracted while it was verified and nothing else was read again
        "object_reads": 1 if extracted is not None and not plan.wanted else 2,
        "physical": physical,
        "databases": list(plan.databases) if plan.restores_database else [],
        "database_bytes": loader.bytes if loader else 0,
        "written": written,
        "overwritten": overwritten[:MAX_LISTED],
        "overwritten_count": len(overwritten),
        "sessions": sessions,
        "verification": verification,
        "durations": durations,
        "changed": bool(plan.restores_database or written["files"] or written["dirs"] or written["symlinks"]
                        or written["metadata"] or sessions["restored"]),
    })
    return result


class _SecondPass:
    """The object read again, member by member (``needed`` False: nothing is read, no member comes)."""

    def __init__(self, target: Target, plan: RestorePlan, request: RestoreRequest, needed: bool):
        self.target, self.plan, self.request, self.needed = target, plan, request, needed
        self._handle: Any = None
        self._counted: Optional[HashingReader] = None
        self._reader: Optional[ArchiveReader] = None

    def __enter__(self) -> "_SecondPass":
        return self

    def members(self):
        """Opened here, inside the restore's error handling (a staging folder is removed if it fails)."""
        if not self.needed:
            return iter(())
        self._handle = open_object(self.target, self.plan.record)
        sidecar = self.plan.record.require_sidecar()
        self._counted = HashingReader(self._handle)
        self._reader = ArchiveReader(self._counted, self.request.decryption, max_content_bytes=sidecar.bytes_in,
                                     max_members=sidecar.counts.get("members"))
        return iter(self._reader)

    def changed(self) -> bool:
        """Whether the bytes read differ from the object pass 1 verified (pass 2 read them all)."""
        return self._counted is not None and self._counted.hexdigest() != self.plan.record.sha256

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._handle is not None:
            self._handle.close()


def _finish_database(loader: Any, plan: RestorePlan, fed: List[str]) -> Optional[Dict[str, Any]]:
    """Let the database method finish, once every chunk of the verified manifest was fed in order."""
    expected = sorted(name for name in plan.members if DB_CHUNK.fullmatch(name) or PHYSICAL_CHUNK.fullmatch(name))
    if fed != expected:
        raise IntegrityError("the second pass brought %d of the %d database chunks of the verified manifest (the "
                             "object changed on the target between the passes)" % (len(fed), len(expected)))
    return loader.finish() if loader is not None else None


def stopped_in_second_pass(cause: BackupError, plan: RestorePlan, db_done: bool, written: Dict[str, int]) -> BackupError:
    """``cause`` (same class), saying what the stopped restore left behind and the way back (not used once a
    physical restore swapped the datadir: its own error says what it did)."""
    files = "%d of %d file(s) and link(s) written (each replaced whole, never half)" % (
        written["files"] + written["symlinks"], sum(1 for w in plan.wanted if w.type != "dir"))
    if not plan.restores_database:
        state = "with " + files
    elif db_done:
        state = "after the databases were restored, with %s" % files
    elif plan.db_method == PHYSICAL:
        state = "before the datadir swap: the live datadir is as it was, nothing of it changed"
    else:
        state = "before the dump was loaded: the databases are as they were"
    way_back = ("the snapshot is intact: run the restore again" if not isinstance(cause, IntegrityError)
                else "verify the snapshot again (the object on the target is not the one verified) before another restore")
    try:
        return type(cause)("%s. The restore stopped in its second pass %s; %s" % (cause, state, way_back))
    except TypeError:  # an error class that wants more than a message: keep it as it is
        return cause


def partly_restored(request: RestoreRequest, plan: RestorePlan, fed: int, cause: Exception) -> ApplianceError:
    """The error of a logical restore that stopped after the dump began to drop and recreate databases."""
    try:
        rows = run_query(request.database(), "SELECT s.SCHEMA_NAME, COUNT(t.TABLE_NAME) FROM information_schema.SCHEMATA s "
                                             "LEFT JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = s.SCHEMA_NAME "
                                             "GROUP BY s.SCHEMA_NAME;")
        present = {row[0]: row[1] for row in rows if len(row) > 1}
        state = ", ".join("%s %s" % (name, "has %s tables" % present[name] if name in present else "is missing")
                          for name in plan.databases)
    except ApplianceError as exc:
        state = "unknown (%s)" % exc
    return ApplianceError(
        "databases partly restored: the restore stopped after %s of the dump had been loaded (%s). The dump "
        "drops and recreates %s one after the other, so the databases are now partly the snapshot's: %s. The "
        "snapshot itself is intact: run the restore again (or load db/dump.sql.* by hand, docs/recovery.md) "
        "before starting Segura. A physical snapshot (database.method physical) is restored by swapping a "
        "prepared datadir, which never leaves the databases half-restored."
        % (describe_bytes(fed), cause, " then ".join(plan.databases), state))


def _database_restorer(request: RestoreRequest, plan: RestorePlan):
    if plan.physical is not None:
        return PhysicalRestore(request, plan.physical, plan.databases)
    return DatabaseLoader(request.database())


def _restore_entry(tree: DestinationTree, wanted: Wanted, content, written: Dict[str, int],
                   overwritten: List[str], dir_entries: List[Wanted]) -> None:
    state = tree.state(wanted)
    if wanted.type == "dir":
        if state == "missing":
            tree.make_dir(wanted)
            written["dirs"] += 1
        elif state == "conflict":
            raise ArchiveError("%s exists and is not a directory; refusing to replace it" % tree._local(wanted.relpath))
        dir_entries.append(wanted)  # metadata at the end, deepest first (counted there if it changed)
        if state == "metadata":
            written["metadata"] += 1
        return
    if state == "same":
        written["unchanged"] += 1
        return
    if state == "metadata":
        tree.set_metadata(wanted)
        written["metadata"] += 1
        overwritten.append("/" + wanted.relpath)
        return
    if state == "conflict":
        raise ArchiveError("%s is a directory where the snapshot has a %s; refusing to replace it"
                           % (tree._local(wanted.relpath), wanted.type))
    if state == "differs":
        overwritten.append("/" + wanted.relpath)
    if wanted.type == "symlink":
        tree.write_symlink(wanted)
        written["symlinks"] += 1
    else:
        tree.write_file(wanted, iter(lambda: content.read(BLOCK), b""))
        written["files"] += 1
