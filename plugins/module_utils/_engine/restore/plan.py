# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Pass 1, the preflight: what the snapshot holds, proven, and what a restore would do."""

from __future__ import annotations

import fnmatch
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.facts import appliance_version
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import run_query
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.physical import LOGICAL, METHODS, PHYSICAL
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.tablefacts import FACTS_MEMBER
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import MANIFEST_MEMBER, MAX_CHUNK_SIZE, SNAPSHOT_MEMBER, check_member_name
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.reader import ArchiveReader
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ArchiveError, BackupError, ConfigError, IntegrityError, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.logical import DumpScanner
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.physical import PhysicalSetup, physical_preflight
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import (
    BLOCK,
    DB_CHUNK,
    DB_SPACE_FACTOR,
    FILES_PREFIX,
    MAX_LISTED,
    PHYSICAL_CHUNK,
    RESTORABLE_COMPONENTS,
    RestoreRequest,
    select_snapshot,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.sessions import plan_sessions, session_entries
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.streamed import StreamedExtraction, why_not_streamed
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.tree import (
    DestinationTree,
    Wanted,
    allowed_roots,
    check_symlink_target,
    component_of,
    path_through_non_directory,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.retry import ResumingReader
from ansible_collections.segura.backup.plugins.module_utils._engine.streams import HashingReader
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target
from ansible_collections.segura.backup.plugins.module_utils._engine.text import describe_bytes


@dataclass
class RestorePlan:
    """What the preflight found. ``problems`` non-empty means the restore is refused."""

    record: catalog.SnapshotRecord
    snapshot: Dict[str, Any]  # snapshot.json
    manifest: Dict[str, Any]  # manifest.json, verified against every member
    components: List[str]
    wanted: List[Wanted]  # files/dirs/symlinks to restore, in archive order
    members: Dict[str, Dict[str, Any]]  # manifest entries by name
    databases: List[str]  # in the order the dump creates them
    dump_digest: Optional[str]  # DumpScanner digest of the snapshot's dump
    states: Dict[str, str] = field(default_factory=dict)  # relpath -> state()
    sessions: List[Dict[str, Any]] = field(default_factory=list)
    session_states: Dict[str, str] = field(default_factory=dict)
    checks: Dict[str, Any] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    fetch_seconds: float = 0.0
    db_method: str = LOGICAL  # how the snapshot carries the databases (older snapshots: logical)
    db_record: Dict[str, Any] = field(default_factory=dict)  # the manifest's "database"
    source_facts: Optional[Dict[str, Any]] = None  # db/facts.json: the source's tables at the dump's point
    physical: Optional[PhysicalSetup] = None
    warnings: List[str] = field(default_factory=list)  # what the restore does although not quite asked
    extracted: Optional[StreamedExtraction] = None  # the physical backup, extracted while pass 1 verified

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def restores_database(self) -> bool:
        return "database" in self.components

    def would_write(self) -> bool:
        if self.restores_database:
            return True
        if any(state != "same" for state in self.states.values()):
            return True
        return any(state not in ("same", "refused") for state in self.session_states.values())

    def summary(self) -> Dict[str, Any]:
        """The check-mode report (no secrets: names, sizes, hashes)."""
        counts = {"file": 0, "dir": 0, "symlink": 0}
        file_bytes = 0
        for entry in self.wanted:
            counts[entry.type] += 1
            file_bytes += entry.size
        # Existing files and links that differ; a folder whose mtime or mode differs is not "overwritten".
        overwrite = [w.relpath for w in self.wanted
                     if w.type != "dir" and self.states.get(w.relpath) in ("differs", "metadata")]
        db = self.manifest.get("db") or {}
        return {
            "snapshot": snapshot_facts(self.record, self.snapshot),
            "components": list(self.components),
            "database_method": self.db_method if self.restores_database else None,
            "databases": list(self.databases) if self.restores_database else [],
            "database_bytes": int(db.get("bytes", 0)) if self.restores_database else 0,
            "database_chunks": int(db.get("chunks", 0)) if self.restores_database else 0,
            "files": counts["file"], "dirs": counts["dir"], "symlinks": counts["symlink"],
            "file_bytes": file_bytes,
            "unchanged": sum(1 for s in self.states.values() if s == "same"),
            "new": sum(1 for s in self.states.values() if s == "missing"),
            "overwrite_count": len(overwrite),
            "overwrite": overwrite[:MAX_LISTED],
            "sessions": len(self.sessions),
            "session_bytes": sum(int(s["size"]) for s in self.sessions),
            "sessions_to_copy": sum(1 for s in self.session_states.values() if s not in ("same", "refused")),
            "sessions_refused": [{"path": s["path"], "reason": s["refused"]} for s in self.sessions if s.get("refused")],
            "checks": self.checks,
            "warnings": list(self.warnings),
            "problems": list(self.problems),
            "ok": self.ok,
        }


def snapshot_facts(record: catalog.SnapshotRecord, snapshot: Dict[str, Any]) -> Dict[str, Any]:
    facts = snapshot.get("facts")
    if not isinstance(facts, dict):
        facts = {}
    return {"id": record.id, "appliance": record.appliance, "created": catalog.format_utc(record.created),
            "object": record.object_relpath, "size": record.size, "sha256": record.sha256,
            "appliance_version": facts.get("appliance_version")}


#: setuid, setgid and sticky: restored only from a signed snapshot and on an allow-list (a share
#: writer must not be able to plant a setuid root binary through a restore)
SPECIAL_BITS = 0o7000


def _special_allowed(relpath: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase("/" + relpath, "/" + p.lstrip("/")) for p in patterns)


def _manifest_entries(manifest: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    members = manifest.get("members")
    if not isinstance(members, list):
        raise IntegrityError("manifest.json has no member list")
    return {m["name"]: m for m in members if isinstance(m, dict) and isinstance(m.get("name"), str)}


def _wanted_of(name: str, entry: Dict[str, Any], component: str) -> Wanted:
    try:
        return Wanted(relpath=name[len(FILES_PREFIX):], type=entry["type"], size=int(entry.get("size") or 0),
                      sha256=entry.get("sha256"), mode=int(entry["mode"]) & 0o7777, mtime=int(entry["mtime"]),
                      uid=int(entry["uid"]), gid=int(entry["gid"]), linkname=entry.get("linkname") or "",
                      component=component)
    except (KeyError, TypeError, ValueError):
        raise IntegrityError("manifest entry of %s lacks type, mode, mtime, uid or gid" % name) from None


def open_object(target: Target, record: catalog.SnapshotRecord):
    """The object, read once from start to end; a failed read is resumed where it stopped (both passes)."""
    try:
        return ResumingReader(target, record.object_relpath)
    except TargetNotFound:
        raise IntegrityError("%s vanished from the target" % target.describe_path(record.object_relpath)) from None


#: db/facts.json is small (two numbers per table); anything larger is not ours.
FACTS_LIMIT = 64 * 1024 * 1024


@dataclass
class FirstPass:
    """What streaming the object once found (nothing is trusted until ``problems`` is empty)."""

    reader: ArchiveReader
    dump_digest: Optional[str]  # DumpScanner digest of a logical dump, None without one
    databases: List[str]  # the databases the dump creates, in order
    physical_chunks: int
    facts_raw: Optional[bytes]
    problems: List[str]


def _first_pass(target: Target, record: catalog.SnapshotRecord, decryption: Decryption,
                extraction: Optional[StreamedExtraction] = None) -> FirstPass:
    """Stream the object once: quick check (size, sha256) and deep check (every member). Nothing is
    written, except by ``extraction``: the physical backup into its staging folder (streamed.py)."""
    problems: List[str] = []
    sidecar = record.require_sidecar()
    stored = target.stat(record.object_relpath).size
    if stored != sidecar.size:
        raise IntegrityError("%s holds %d bytes, its sidecar says %d"
                             % (target.describe_path(record.object_relpath), stored, sidecar.size))
    scanner = DumpScanner()
    saw_db = False
    physical_chunks = 0
    facts_raw: Optional[bytes] = None
    where = "snapshot %s (%s)" % (record.id, target.describe_path(record.object_relpath))
    with open_object(target, record) as handle:
        counted = HashingReader(handle)
        try:
            reader = ArchiveReader(counted, decryption, max_content_bytes=sidecar.bytes_in,
                                   max_members=sidecar.counts.get("members"))
        except IntegrityError as exc:
            raise IntegrityError("%s failed deep verification, nothing was restored: %s" % (where, exc)) from None
        except ArchiveError as exc:  # wrong key or passphrase, or none given
            raise ArchiveError("cannot open %s: %s" % (where, exc)) from None
        if extraction is not None and reader.prelude_sha256 != extraction.prelude_sha256:
            raise IntegrityError("%s failed deep verification, nothing was restored: its age header is not the one "
                                 "its signed sidecar records (the object was replaced or damaged)" % where)
        try:
            for info, content in reader.members(strict=False):
                if info.size > MAX_CHUNK_SIZE and (DB_CHUNK.fullmatch(info.name) or PHYSICAL_CHUNK.fullmatch(info.name)):
                    # pass 2 spools each chunk whole before it is fed: refuse what it would refuse
                    raise IntegrityError("%s declares %s, larger than any database chunk a snapshot writes (%s)"
                                         % (info.name, describe_bytes(info.size), describe_bytes(MAX_CHUNK_SIZE)))
                if DB_CHUNK.fullmatch(info.name):
                    saw_db = True
                    for block in iter(lambda: content.read(BLOCK), b""):
                        scanner.feed(block)
                elif PHYSICAL_CHUNK.fullmatch(info.name):
                    physical_chunks += 1  # read (and so checked) by the reader; extracted now or in pass 2
                    if extraction is not None:
                        extraction.feed(info.name, content)
                elif info.name == FACTS_MEMBER and info.size <= FACTS_LIMIT:
                    facts_raw = content.read(FACTS_LIMIT + 1)
            problems.extend(reader.problems())
        except IntegrityError as exc:
            raise IntegrityError("%s failed deep verification, nothing was restored: %s" % (where, exc)) from None
        finally:
            reader.close()
    if counted.bytes != sidecar.size or counted.hexdigest() != sidecar.sha256:
        problems.insert(0, "the object's sha256 differs from its sidecar (the stored object was changed or damaged)")
    digest = scanner.finish() if saw_db else None
    return FirstPass(reader, digest, scanner.databases, physical_chunks, facts_raw, problems)


def _database_record(manifest: Dict[str, Any], passed: FirstPass, snap_id: str) -> Tuple[str, Dict[str, Any]]:
    """The snapshot's database method, from its verified manifest, and whether its members agree."""
    record = manifest.get("database")
    if record is None:  # snapshots before the methods: a dump
        return LOGICAL, {}
    if not isinstance(record, dict) or record.get("method") not in METHODS:
        raise IntegrityError("the manifest of snapshot %s names no known database method" % snap_id)
    method = record["method"]
    if (method == PHYSICAL) != (passed.physical_chunks > 0) or (method == PHYSICAL and passed.dump_digest):
        raise IntegrityError("snapshot %s says its databases are %s but its members do not hold a %s backup"
                             % (snap_id, method, method))
    return method, record


def _source_facts(raw: Optional[bytes], record: Dict[str, Any], snap_id: str) -> Optional[Dict[str, Any]]:
    if record.get("facts") != FACTS_MEMBER:
        return None
    if raw is None:
        raise IntegrityError("snapshot %s names %s but does not hold it" % (snap_id, FACTS_MEMBER))
    try:
        facts = json.loads(raw.decode("utf-8"))
        tables = facts["tables"]
        for fact in tables.values():
            if not isinstance(fact["rows"], int) or not isinstance(fact["checksum"], str):
                raise TypeError
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise IntegrityError("%s of snapshot %s is not a table-facts document" % (FACTS_MEMBER, snap_id)) from None
    return facts


def plan_restore(target: Target, request: RestoreRequest, extract: bool = False) -> RestorePlan:
    """Preflight: select, quick-check and deep-verify the snapshot, and compare it with the appliance.

    Writes nothing, unless ``extract`` (a restore, not check mode): then a physical backup whose chunks
    can be trusted as they decrypt (streamed.py) is extracted into its staging folder while it is
    verified, and ``plan.extracted`` holds it. Raises for what makes a plan impossible (no snapshot,
    wrong key, corrupt or tampered object, unsafe member); returns a plan whose ``problems`` say what
    else refuses it. A plan that raises or is refused keeps no staging folder.
    """
    holder: List[StreamedExtraction] = []
    try:
        plan = _plan(target, request, holder if extract else None)
        if holder and holder[0].restorer is not None:
            if plan.ok:
                plan.extracted = holder[0]
            else:
                holder[0].discard()
    except BaseException as exc:
        extracted = any(extraction.restorer is not None for extraction in holder)
        for extraction in holder:
            extraction.discard()
        if holder and isinstance(exc, BackupError) and not isinstance(exc, ConfigError):
            raise _stopped_extracting(exc, extracted) from None
        raise
    return plan


def _stopped_extracting(cause: BackupError, extracted: bool) -> BackupError:
    """``cause`` (same class), saying where the first pass of a streamed restore stopped, and the way back."""
    way_back = ("the snapshot is intact: run the restore again" if not isinstance(cause, IntegrityError)
                else "the object on the target is damaged or was replaced: verify it, and restore another snapshot")
    state = ("while it verified the snapshot and extracted its physical backup into a staging folder: the live "
             "datadir is as it was, nothing of it changed, and the staging folder was removed" if extracted else
             "before anything was extracted: the live datadir is as it was, nothing was written")
    try:
        return type(cause)("%s. The restore stopped in its first pass, %s; %s" % (cause, state, way_back))
    except TypeError:  # an error class that wants more than a message: keep it as it is
        return cause


def _plan(target: Target, request: RestoreRequest, holder: Optional[List[StreamedExtraction]]) -> RestorePlan:
    """plan_restore's work; a streamed extraction is put in ``holder`` before it writes anything."""
    skipped: List[str] = []
    record, signature = select_snapshot(target, request, skipped)
    sidecar = record.require_sidecar()  # select_snapshot returns complete records only
    checks: Dict[str, Any] = {"signature": signature}
    problems: List[str] = []
    warnings = ["passed over a newer snapshot: %s" % reason for reason in skipped]
    if signature["status"] != "valid":
        warnings.append("restoring snapshot %s although it is NOT SIGNED by a pinned key of %s (allow_unsigned): %s; "
                        "no setuid, setgid or sticky bit is restored from it" % (record.id, record.appliance,
                                                                                 signature.get("reason")))
    if record.appliance != request.appliance and not request.allow_other_appliance:
        raise ConfigError("snapshot %s belongs to appliance %r, not %r: set allow_other_appliance to restore it "
                          "here on purpose" % (record.id, record.appliance, request.appliance))

    components = list(request.components) if request.components is not None else \
        [c for c in RESTORABLE_COMPONENTS if c in sidecar.components]
    missing = [c for c in components if c not in sidecar.components]
    if missing:
        raise ConfigError("snapshot %s holds no %s (it has: %s)"
                          % (record.id, ", ".join(missing), ", ".join(sidecar.components)))
    if "database" in components and request.db is None:
        raise ConfigError("restoring the database component needs a database connection")

    current = appliance_version(request.layout)
    # Fail fast on the sidecar's word before downloading; snapshot.json confirms it below.
    _check_version(sidecar.versions.get("appliance"), current, request, record.id)

    started = time.monotonic()
    extraction = None
    if holder is not None and why_not_streamed(sidecar, signature, components) is None:
        extraction = StreamedExtraction.prepare(request, sidecar)
        holder.extend([extraction] if extraction else [])
    passed = _first_pass(target, record, request.decryption, extraction)
    reader = passed.reader
    fetch_seconds = time.monotonic() - started
    if passed.problems:
        raise IntegrityError("snapshot %s failed deep verification, nothing was restored: %s"
                             % (record.id, "; ".join(passed.problems[:10])))
    snapshot, manifest = reader.snapshot or {}, reader.manifest or {}
    checks["quick"] = {"ok": True, "size": sidecar.size, "sha256": sidecar.sha256}
    checks["deep"] = {"ok": True, "members": reader.member_count, "seconds": round(fetch_seconds, 3),
                      "extracted_while_verifying": bool(extraction and extraction.fed)}

    for doc, label in ((snapshot, SNAPSHOT_MEMBER), (manifest, MANIFEST_MEMBER)):
        if doc.get("appliance") != record.appliance or doc.get("id") != record.id:
            raise IntegrityError("%s of snapshot %s says appliance %r, id %r, but it is filed as %s/%s; refusing "
                                 "a snapshot made by another appliance"
                                 % (label, record.id, doc.get("appliance"), doc.get("id"), record.appliance, record.id))
    if snapshot.get("appliance") != request.appliance and not request.allow_other_appliance:
        raise ConfigError("snapshot %s was made by appliance %r, not %r: set allow_other_appliance to restore "
                          "it here on purpose" % (record.id, snapshot.get("appliance"), request.appliance))
    facts = snapshot.get("facts")
    if not isinstance(facts, dict):
        facts = {}
    checks["version"] = _check_version(facts.get("appliance_version"), current, request, record.id)

    entries = _manifest_entries(manifest)
    roots = allowed_roots(request.layout)
    wanted: List[Wanted] = []
    special_dropped: List[str] = []
    for name, entry in entries.items():
        if name in (SNAPSHOT_MEMBER, MANIFEST_MEMBER, FACTS_MEMBER) or DB_CHUNK.fullmatch(name) \
                or PHYSICAL_CHUNK.fullmatch(name):
            continue
        if not name.startswith(FILES_PREFIX):
            raise IntegrityError("snapshot %s holds member %r outside files/ and db/; refusing it" % (record.id, name))
        relpath = name[len(FILES_PREFIX):]
        check_member_name(relpath)
        component = component_of(relpath, roots)
        if component is None:
            raise IntegrityError("snapshot %s holds %s, outside the configured paths of this appliance (%s); "
                                 "refusing it (add the path to appliance.config_paths if it is wanted)"
                                 % (record.id, "/" + relpath, ", ".join("/" + r for r in sorted(roots))))
        item = _wanted_of(name, entry, component)
        if item.mode & SPECIAL_BITS and not (signature["status"] == "valid"
                                             and _special_allowed(relpath, request.special_bits_paths)):
            item.mode &= ~SPECIAL_BITS
            special_dropped.append("/" + relpath)
        if item.type == "symlink":
            reason = check_symlink_target(relpath, item.linkname, list(roots))
            if reason:
                raise IntegrityError("snapshot %s holds the symbolic link %s whose %s; refusing it"
                                     % (record.id, "/" + relpath, reason))
        if component in components:
            wanted.append(item)
    # Pass 2 never writes through a link or a file (O_NOFOLLOW, O_DIRECTORY): refuse such a member now.
    through = path_through_non_directory((n[len(FILES_PREFIX):], e.get("type")) for n, e in entries.items()
                                         if n.startswith(FILES_PREFIX))
    if through:
        raise IntegrityError("snapshot %s holds /%s below /%s, which it holds as a %s; refusing it"
                             % (record.id, through[0], through[1], "symbolic link" if through[2] == "symlink"
                                else through[2]))

    db_method, db_record = _database_record(manifest, passed, record.id)
    databases: List[str] = list(passed.databases)
    if db_method == PHYSICAL:
        databases = list(request.layout.databases)  # the whole instance; these are checked after the restore
    elif "database" in components:
        checks["database_order"] = _check_database_order(databases, request.layout.databases, record.id)

    plan = RestorePlan(record=record, snapshot=snapshot, manifest=manifest, components=components, wanted=wanted,
                       members=entries, databases=databases, dump_digest=passed.dump_digest, checks=checks,
                       problems=problems, fetch_seconds=fetch_seconds, db_method=db_method, db_record=db_record,
                       source_facts=_source_facts(passed.facts_raw, db_record, record.id), warnings=warnings)
    if special_dropped:
        checks["special_bits_dropped"] = special_dropped[:MAX_LISTED]
        warnings.append("setuid/setgid/sticky bits of %d path(s) are not restored (allowed only from a signed "
                        "snapshot, on special_bits_paths): %s" % (len(special_dropped), ", ".join(special_dropped[:10])))
    tree = DestinationTree(request.layout.root, list(roots))
    for item in wanted:
        plan.states[item.relpath] = tree.state(item)
    conflicts = [w.relpath for w in wanted if plan.states[w.relpath] == "conflict"]
    if conflicts:
        problems.append("these paths exist with another type (a directory where the snapshot has a file, or the "
                        "reverse) and are not replaced: %s" % ", ".join("/" + c for c in conflicts[:10]))
    if request.restore_sessions:
        plan.sessions = session_entries(manifest, record.appliance, request.layout.arz_dir)
        plan_sessions(target, request, plan)
    if "database" in components and db_method == PHYSICAL and extraction is not None:
        if not extraction.agrees_with(db_record, sidecar.db or {}):
            raise IntegrityError("the manifest of snapshot %s names other database versions than its signed sidecar"
                                 % record.id)
        plan.physical = extraction.setup  # checked before pass 1, on the signed sidecar's word
        checks["physical"] = dict(plan.physical.checks, datadir=plan.physical.datadir, service=plan.physical.service,
                                  ok=True)
    elif "database" in components and db_method == PHYSICAL:
        plan.physical = physical_preflight(request, db_record, int((manifest.get("db") or {}).get("bytes", 0)))
        checks["physical"] = dict(plan.physical.checks, datadir=plan.physical.datadir, service=plan.physical.service,
                                  ok=not plan.physical.problems)
        problems.extend(plan.physical.problems)
    elif "database" in components:
        checks["database_reachable"] = _check_database(request, plan)
    checks["free_space"] = _check_free_space(request, plan)
    return plan


def _check_version(recorded: Optional[str], current: Dict[str, str], request: RestoreRequest,
                   snap_id: str) -> Dict[str, Any]:
    recorded = recorded or "unknown"
    result = {"snapshot": recorded, "appliance": current["version"], "source": current["source"],
              "ok": recorded == current["version"]}
    if not result["ok"]:
        if not request.force_version_mismatch:
            raise ConfigError("snapshot %s was taken on Segura %s but this appliance runs %s (from %s); restore "
                              "needs the same application version (set force_version_mismatch to override)"
                              % (snap_id, recorded, current["version"], current["source"]))
        result["forced"] = True
    return result


def _check_database_order(databases: List[str], expected: Sequence[str], snap_id: str) -> Dict[str, Any]:
    """The dump must create the layout's databases in the layout's order (mt4 before senhasegura)."""
    if not databases:
        raise IntegrityError("the database dump of snapshot %s creates no database" % snap_id)
    if len(set(databases)) != len(databases):
        raise IntegrityError("the database dump of snapshot %s creates a database twice: %s"
                             % (snap_id, ", ".join(databases)))
    unexpected = [d for d in databases if d not in expected]
    if unexpected:
        raise IntegrityError("the database dump of snapshot %s creates %s, which this appliance does not hold "
                             "(expected %s)" % (snap_id, ", ".join(unexpected), ", ".join(expected)))
    order = [d for d in expected if d in databases]
    if databases != order:
        raise IntegrityError("the database dump of snapshot %s creates %s in the order %s; Segura needs %s"
                             % (snap_id, ", ".join(databases), " then ".join(databases), " then ".join(order)))
    return {"ok": True, "order": list(databases), "missing": [d for d in expected if d not in databases]}


def _check_database(request: RestoreRequest, plan: RestorePlan) -> Dict[str, Any]:
    """The server answers, and where its data lives (for the free-space estimate)."""
    rows = run_query(request.database(), "SELECT @@datadir, VERSION();")
    datadir, version = (rows[0] + ["", ""])[:2] if rows else ("", "")
    return {"ok": True, "datadir": datadir, "server_version": version}


def _free_bytes(path: str) -> Optional[int]:
    while path and not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    try:
        result = os.statvfs(path)
    except OSError:
        return None
    return result.f_bavail * result.f_frsize


def _check_free_space(request: RestoreRequest, plan: RestorePlan) -> Dict[str, Any]:
    need_files = sum(w.size for w in plan.wanted if plan.states.get(w.relpath) != "same")
    need_files += sum(int(s["size"]) for s in plan.sessions if plan.session_states.get(s["path"]) != "same")
    result: Dict[str, Any] = {"files_bytes": need_files, "files_free": _free_bytes(request.layout.root)}
    if result["files_free"] is not None and result["files_free"] < need_files:
        plan.problems.append("the appliance has %s free below %s but the restore writes %s of files"
                             % (describe_bytes(result["files_free"]), request.layout.root, describe_bytes(need_files)))
    if plan.restores_database and plan.db_method == LOGICAL:
        db_bytes = int((plan.manifest.get("db") or {}).get("bytes", 0))
        need_db = int(db_bytes * DB_SPACE_FACTOR)
        datadir = plan.checks.get("database_reachable", {}).get("datadir") or ""
        free = _free_bytes(datadir) if datadir and os.path.isabs(datadir) else None
        result.update({"database_estimate_bytes": need_db, "database_free": free, "datadir": datadir or None})
        if free is not None and free < need_db:
            plan.problems.append("the database server has %s free in %s but the restored databases may need about %s"
                                 % (describe_bytes(free), datadir, describe_bytes(need_db)))
    result["ok"] = not plan.problems
    return result
