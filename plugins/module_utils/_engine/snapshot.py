# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Taking one snapshot: appliance sources -> archive stream -> target, in one pass.

Order of work, and why:
1. lock the appliance on the target (two runs never interleave);
2. read facts and check free space before moving any data;
3. sync new session recordings first, so the manifest can reference every one of them;
4. stream snapshot.json, the database (physical: the mariadb-backup stream; logical: the dump, then
   db/facts.json, the source's table facts at the dump's point), config and secrets into
   ``<object>.partial``; the manifest goes last; close, check the size, rename to the final name;
5. publish the sidecar last: its presence is what makes the snapshot complete.
Any failure before step 5 leaves no sidecar, so nothing looks complete, and earlier snapshots are
never touched (objects are created exclusively and never renamed over).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, constants
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.dump import DatabaseDump
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.facts import estimate_snapshot_size
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.facts import facts as appliance_facts
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.files import Problem, collect_files, problems_message
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import COMPONENTS, ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection, run_query
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.physical import PHYSICAL, MethodChoice, PhysicalBackup, choose_method
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.tablefacts import (
    FACTS_MEMBER,
    FactsSession,
    PointWatcher,
    dump_history_supported,
    float_columns_query,
    logical_losses,
    tables_query,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import DB_PREFIX, PHYSICAL_PREFIX
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.writer import ArchiveWriter
from ansible_collections.segura.backup.plugins.module_utils._engine.constants import TOOL_VERSION, MiB
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ConfigError, LockBusy, TargetError, TargetFull, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.holders import takeover_message
from ansible_collections.segura.backup.plugins.module_utils._engine.locking import ApplianceLock, refuse_case_variant
from ansible_collections.segura.backup.plugins.module_utils._engine.pipeline import WriteBehind
from ansible_collections.segura.backup.plugins.module_utils._engine.progress import Progress
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import heal_after_takeover
from ansible_collections.segura.backup.plugins.module_utils._engine.sessions import ON_PROBLEM, SessionSyncResult, sync_sessions
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import DEFAULT_KEY_FILE, load_signing_key
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target
from ansible_collections.segura.backup.plugins.module_utils._engine.text import describe_bytes

DEFAULT_COMPONENTS = constants.DEFAULT_COMPONENTS


@dataclass
class SnapshotRequest:
    """What to back up and how. ``db`` may be None only when 'database' is not a component."""

    appliance: str
    layout: ApplianceLayout
    encryption: Encryption
    db: Optional[DatabaseConnection] = None
    components: Sequence[str] = DEFAULT_COMPONENTS
    zstd_level: int = 3
    zstd_threads: int = -1  # one zstd worker per CPU (at most 4), as `zstd -T0` by hand
    chunk_size: int = 16 * MiB
    lock_ttl: timedelta = timedelta(minutes=15)
    health_url: Optional[str] = None
    #: free space the target must keep after the snapshot, on top of the estimate
    free_space_margin: int = 0
    #: "physical", "logical", or None: physical when a matching mariadb-backup can run here
    db_method: Optional[str] = None
    #: what an entry of the recordings tree that cannot be taken does: "warn" (publish, sessions
    #: partial) or "fail" (publish nothing)
    sessions_on_problem: str = "warn"
    #: the appliance's signing.SigningKey; None: the key below the layout's root (where the runtime
    #: role makes it) if there is one, else the snapshot is published unsigned, with a warning
    signing_key: Optional[Any] = None

    def __post_init__(self):
        self.appliance = catalog.validate_appliance(self.appliance)
        components = list(self.components)
        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown:
            raise ConfigError("unknown component(s): %s (known: %s)"
                              % (", ".join(unknown), ", ".join(COMPONENTS)))
        if not components:
            raise ConfigError("components must name at least one of: %s" % ", ".join(COMPONENTS))
        if len(set(components)) != len(components):
            raise ConfigError("components lists a name twice: %s" % ", ".join(components))
        self.components = tuple(c for c in COMPONENTS if c in components)
        if "database" in self.components and self.db is None:
            raise ConfigError("the database component needs a database connection")
        if not isinstance(self.chunk_size, int) or self.chunk_size < MiB or self.chunk_size > 256 * MiB:
            raise ConfigError("chunk size must be between 1 and 256 MiB")
        if self.signing_key is None:
            self.signing_key = load_signing_key(os.path.join(self.layout.root, DEFAULT_KEY_FILE))
        if self.sessions_on_problem not in ON_PROBLEM:
            raise ConfigError("sessions.on_problem must be one of %s, not %r" % (", ".join(ON_PROBLEM), self.sessions_on_problem))

    def database(self) -> DatabaseConnection:
        """``db``, for the database component; ConfigError when none was given."""
        if self.db is None:
            raise ConfigError("the database component needs a database connection")
        return self.db

    @property
    def archived_components(self) -> List[str]:
        """Components that go into the object itself (sessions live beside it)."""
        return [c for c in self.components if c != "sessions"]


@dataclass
class _Counts:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0

    def add(self, kind: str) -> None:
        setattr(self, kind + "s", getattr(self, kind + "s") + 1)


class _LockRefreshingSink:
    """Passes writes on to the upload; stops at the next chunk once the lock's timer found it lost
    (the timer keeps the lock alive: a stalled write cannot let it expire). Counts the bytes written,
    which the progress report reads (an addition here; the report's own thread does the rest)."""

    def __init__(self, upload: Any, lock: ApplianceLock):
        self._upload = upload
        self._lock = lock
        self.written = 0

    def write(self, data) -> int:
        written = self._upload.write(data)
        self._lock.check()
        self.written += written
        return written

    def count(self) -> int:
        return self.written

    def flush(self) -> None:
        self._upload.flush()


def _utc_now() -> datetime:
    # Full precision: the sidecar keeps it so retention can order two snapshots of the same second;
    # object names, headers and results show whole seconds (catalog.format_utc).
    return datetime.now(timezone.utc)


def _facts(request: SnapshotRequest) -> Dict[str, Any]:
    db = request.db if "database" in request.components else None
    return appliance_facts(request.layout, db=db, health_url=request.health_url)


def _check_free_space(target: Target, request: SnapshotRequest, facts: Dict[str, Any]) -> Dict[str, Any]:
    """Compare the target's free space with what this snapshot may need (an upper bound)."""
    estimate = estimate_snapshot_size(facts)
    need = estimate["snapshot_bytes"] + request.free_space_margin
    if "sessions" in request.components:
        need += estimate["sessions_bytes"]  # upper bound: only new recordings move
    free = target.free_space()
    report = {"estimate_bytes": need, "free_bytes": free, "ok": free is None or free >= need}
    return report


def preflight(target: Target, request: SnapshotRequest) -> Dict[str, Any]:
    """Check mode: everything a snapshot needs, changing nothing that stays.

    Reachability and credentials (a listing), writability (asked of the server, nothing written), the
    lock, free space against an estimate, the database (facts query) and the component paths.
    Returns {"ok": bool, "checks": {...}, "problems": [...]}; raises only for bad configuration.
    """
    checks: Dict[str, Any] = {}
    problems: List[str] = []

    def check(name: str, func: Callable[[], Any]) -> Any:
        try:
            value = func()
        except (TargetError, ApplianceError, LockBusy) as exc:
            checks[name] = {"ok": False, "error": str(exc)}
            problems.append(str(exc))
            return None
        checks[name] = value if isinstance(value, dict) else {"ok": True}
        return value

    reachable = check("target_reachable", lambda: _list_base(target))
    if reachable and reachable.get("exists", True):
        check("target_writable", lambda: _ask_writable(target))
        check("lock_free", lambda: _lock_state(target, request.appliance))
    elif reachable:
        # A first run creates the base path; probing it here would create it, which check mode must not.
        checks["target_writable"] = {"ok": True, "probed": False, "note": reachable["note"]}
        checks["lock_free"] = {"ok": True, "held": False}
    facts = check("appliance", lambda: {"ok": True, "facts": _facts(request)})
    if facts and reachable:
        space = check("free_space", lambda: _check_free_space(target, request, facts["facts"]))
        if space and not space["ok"]:
            problems.append("the target has %s free but the snapshot may need %s"
                            % (describe_bytes(space["free_bytes"]), describe_bytes(space["estimate_bytes"])))
    if "database" in request.components:
        check("database_method", lambda: _check_method(request))
    check("components", lambda: _check_components(request))
    return {"ok": not problems, "checks": checks, "problems": problems}


def _list_base(target: Target) -> Dict[str, Any]:
    """The server answered and the base path is listable, or it does not exist yet (first run)."""
    try:
        return {"ok": True, "entries": len(target.listdir(""))}
    except TargetNotFound:
        return {"ok": True, "entries": 0, "exists": False,
                "note": "%s does not exist yet; the first snapshot creates it" % target.describe()}


def _ask_writable(target: Target) -> Dict[str, Any]:
    """Whether we may create and remove files at the root, asked without writing (check mode writes nothing)."""
    if target.check_writable(""):
        return {"ok": True, "asked": "server"}
    return {"ok": True, "probed": False, "note": "this target cannot tell without a write; the first run will"}


def _lock_state(target: Target, appliance: str) -> Dict[str, Any]:
    relpath = catalog.lock_path(appliance)
    try:
        raw = target.read_bytes(relpath, limit=64 * 1024)
    except TargetNotFound:
        return {"ok": True, "held": False}
    try:
        doc = json.loads(raw.decode("utf-8"))
        expires = catalog.parse_utc(doc["expires"])
    except (ValueError, RecursionError, KeyError, TypeError, UnicodeDecodeError):
        return {"ok": True, "held": True, "note": "unreadable lock; it will be taken over once stale"}
    if expires <= datetime.now(timezone.utc):
        return {"ok": True, "held": False, "stale": True, "holder": doc.get("host")}
    raise LockBusy("appliance %r is locked by host %s (pid %s) until %s"
                   % (appliance, doc.get("host"), doc.get("pid"), doc.get("expires")))


def _check_method(request: SnapshotRequest) -> Dict[str, Any]:
    choice = choose_method(request.db_method, request.database())
    return dict(choice.as_dict(), ok=True, warning=choice.warning)


def _check_components(request: SnapshotRequest) -> Dict[str, Any]:
    problems: List[Problem] = []
    count = 0
    wanted = [c for c in request.components if c in ("config", "secrets")]
    if wanted:
        for _entry in collect_files(request.layout, wanted, problems):
            count += 1
    if "sessions" in request.components and not os.path.isdir(request.layout.arz_path):
        raise ApplianceError("session recordings folder %s does not exist" % request.layout.arz_path)
    if problems:
        raise ApplianceError(problems_message(problems))
    return {"ok": True, "entries": count}


def take_snapshot(target: Target, request: SnapshotRequest, progress: Optional[Progress] = None) -> Dict[str, Any]:
    """Take one snapshot and publish it on ``target``; return what was done (see the module's RETURN).
    ``progress`` hears of each phase and of the bytes written (progress.py; none: nothing is shown)."""
    started = time.monotonic()
    progress = progress or Progress()
    progress.phase("prepare")
    refuse_case_variant(target, request.appliance)  # before makedirs: no folder for a name that collides
    target.makedirs(catalog.snapshots_dir(request.appliance))
    with ApplianceLock(target, request.appliance, ttl=request.lock_ttl) as lock:
        leftovers = heal_after_takeover(target, lock)
        facts = _facts(request)
        space = _check_free_space(target, request, facts)
        if not space["ok"]:
            raise TargetFull("%s has %s free but the snapshot of %s may need %s"
                             % (target.describe(), describe_bytes(space["free_bytes"]), request.appliance,
                                describe_bytes(space["estimate_bytes"])))

        sessions = None
        if "sessions" in request.components:
            progress.phase("sessions", total=estimate_snapshot_size(facts)["sessions_bytes"])

            def on_file(event: Dict[str, Any]) -> None:
                lock.check()
                progress.advance(int(event["size"]))
                if event["action"] == "uploaded":
                    progress.uploaded(int(event["size"]))

            sessions = sync_sessions(target, request.appliance, request.layout, progress=on_file)
            if sessions.problems and request.sessions_on_problem == "fail":
                raise ApplianceError("%s (sessions.on_problem is fail; nothing was published)"
                                     % problems_message(sessions.problems, what="entries of the recordings tree"))

        choice = choose_method(request.db_method, request.database()) if "database" in request.components else None
        warnings = [choice.warning] if choice and choice.warning else []
        if sessions is not None and sessions.problems:
            warnings.append("session recordings partial: %s; everything else was backed up"
                            % problems_message(sessions.problems, what="entries of the recordings tree"))
        created = _utc_now()
        snap_id = catalog.new_snapshot_id()
        name = catalog.object_name(created, snap_id, request.encryption.encrypted)
        header = {
            "format": "segura.backup/1",
            "id": snap_id,
            "appliance": request.appliance,
            "created": catalog.format_utc(created),
            "components": list(request.components),
            "tool_version": TOOL_VERSION,
            "facts": facts,
        }
        if choice is not None:
            header["database"] = choice.as_dict()
        counts = _Counts()
        db_info: Optional[Dict[str, Any]] = None
        database: Optional[Dict[str, Any]] = None
        # The totals the progress report shows: the previous snapshot's (one listing, one sidecar).
        before = _previous_sizes(target, request.appliance) if progress.active else {}
        with catalog.AtomicUpload(target, catalog.object_path(request.appliance, name)) as upload:
            # The upload (the target client's crypto and socket, and its sha256 of the object) runs on a
            # thread of its own while this one compresses and encrypts what follows (pipeline.py).
            behind = WriteBehind(upload, name="snapshot-upload")
            sink = _LockRefreshingSink(behind, lock)
            try:
                writer = ArchiveWriter(sink, request.encryption,
                                       zstd_level=request.zstd_level, zstd_threads=request.zstd_threads,
                                       chunk_size=request.chunk_size, hash_output=False)
            except BaseException:
                behind.abort()
                raise
            try:
                writer.add_json("snapshot.json", header)
                if choice is not None:  # counted as read from the server (what reaches the target lags behind zstd)
                    db_total = before.get("db") or estimate_snapshot_size(facts)["database_bytes"]
                    db_info, database = _archive_database(writer, request, choice, warnings,
                                                          lambda reader: progress.counted("databases", reader, db_total))
                _archive_files(writer, request, counts,
                               lambda phase: progress.phase(phase, total=before.get("object"), count=sink.count))
                extra: Dict[str, Any] = {"facts": facts, "components": list(request.components),
                                         "sessions": sessions.referenced if sessions else []}
                if sessions is not None:
                    extra["sessions_status"] = _sessions_status(sessions)
                if database is not None:
                    extra["db"], extra["database"] = db_info, database
                result = writer.finish(extra)
                behind.close()  # every byte reached the upload, or the upload's error is raised here
            except BaseException:
                writer.abort()
                behind.abort()
                raise

        # The upload completed (no exception left the block), so its size and sha256 are set.
        if upload.size is None or upload.sha256 is None:
            raise AssertionError("a completed upload has no size or sha256")
        sidecar = catalog.Sidecar(
            id=snap_id,
            appliance=request.appliance,
            created=created,
            object=name,
            size=upload.size,
            sha256=upload.sha256,
            components=list(request.components),
            counts={"files": counts.files, "dirs": counts.dirs, "symlinks": counts.symlinks,
                    "db_chunks": db_info["chunks"] if db_info else 0, "members": result.members},
            bytes_in=result.bytes_in,
            versions={"appliance": facts.get("appliance_version"), "tool": TOOL_VERSION},
            encryption=dict({"mode": _encryption_mode(request.encryption),
                             "recipients": request.encryption.recipient_strings()},
                            **({"prelude_sha256": result.prelude_sha256} if result.prelude_sha256 else {})),
            db=dict(db_info, **{k: database[k] for k in _SIDECAR_DB_KEYS}) if db_info and database else None,
            sessions=dict({"count": len(sessions.referenced) if sessions else 0,
                           "bytes": sum(int(s["size"]) for s in sessions.referenced) if sessions else 0},
                          **(_sessions_status(sessions) if sessions else {})),
            duration=round(time.monotonic() - started, 3),
        )
        progress.phase("publish")
        # Still ours, right before publishing (before the sessions list and the sidecar): a run whose lock
        # was broken or taken over stops here with LockLost, and nothing of it looks complete.
        lock.confirm("nothing was published")
        if sessions is not None:
            # Before the sidecar: prune reads this list, as it cannot open the encrypted manifest.
            catalog.write_sessions_list(target, request.appliance, name, sessions.referenced)
        if request.signing_key is None:
            warnings.append("the snapshot is published UNSIGNED (no signing key): verify and restore refuse it "
                            "unless allow_unsigned is set; the runtime role creates the key")
        sidecar_relpath = catalog.publish_sidecar(target, sidecar, request.signing_key)
        index_warning = catalog.update_index(target, request.appliance)  # published: its failure is a warning
        if index_warning:
            warnings.append(index_warning)
    if lock.release_warning:  # published: a lock left behind is a warning, never a failed run
        warnings.append(lock.release_warning)

    duration = time.monotonic() - started
    return {
        "id": snap_id,
        "appliance": request.appliance,
        "created": catalog.format_utc(created),
        "object": catalog.object_path(request.appliance, name),
        "sidecar": sidecar_relpath,
        "location": target.describe_path(catalog.object_path(request.appliance, name)),
        "size": upload.size,
        "sha256": upload.sha256,
        "duration": round(duration, 3),
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "throughput_mb_s": round(result.bytes_in / MiB / duration, 1) if duration > 0 else None,
        "components": list(request.components),
        "counts": {
            "db_chunks": db_info["chunks"] if db_info else 0,
            "db_bytes": db_info["bytes"] if db_info else 0,
            "files": counts.files,
            "dirs": counts.dirs,
            "symlinks": counts.symlinks,
            "sessions_referenced": len(sessions.referenced) if sessions else 0,
            "sessions_uploaded": sessions.uploaded_count if sessions else 0,
            "sessions_uploaded_bytes": sessions.uploaded_bytes if sessions else 0,
            "sessions_skipped": sessions.skipped_count if sessions else 0,
            "sessions_symlinks": sessions.symlinks if sessions else 0,
            "sessions_hardlinks": sessions.hardlinks if sessions else 0,
        },
        "sessions": _sessions_status(sessions) if sessions else None,
        "encryption": sidecar.encryption,
        "signature": ({"key": request.signing_key.fingerprint,
                       "file": catalog.signature_name(name)} if request.signing_key is not None else None),
        "database": database,
        "warnings": warnings,
        "appliance_version": facts.get("appliance_version"),
        "lock_taken_over": lock.took_over is not None,
        "lock_takeover": takeover_message(lock.took_over),
        "leftovers_removed": leftovers.files if leftovers else [],
    }


#: At most this many problems are listed in the sidecar and the result (all are counted).
MAX_LISTED_PROBLEMS = 100


def _sessions_status(sessions: SessionSyncResult) -> Dict[str, Any]:
    """``status`` (complete | partial) and the entries of the recordings tree that were not taken."""
    return {"status": sessions.status, "problem_count": len(sessions.problems),
            "problems": [{"path": p.path, "reason": p.reason} for p in sessions.problems[:MAX_LISTED_PROBLEMS]]}


#: What the sidecar repeats of the manifest's "database" (readable without the key: method and versions
#: decide how, and where, the snapshot can be restored).
_SIDECAR_DB_KEYS = ("method", "server_version", "tool_version", "position")


def _archive_database(writer: ArchiveWriter, request: SnapshotRequest, choice: MethodChoice, warnings: List[str],
                      counted: Callable[[Any], Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The database into the archive: (stream info for ``db``, the manifest's ``database`` record).
    ``counted`` wraps the server's stream for the progress report."""
    db = request.database()
    if choice.method == PHYSICAL:
        backup = PhysicalBackup(db, choice)
        with backup:
            stream = writer.add_stream(PHYSICAL_PREFIX, counted(backup.stdout))
        # The whole instance: the layout's databases are those a restore checks.
        record = dict(choice.as_dict(), members=PHYSICAL_PREFIX + ".*", position=backup.position, losses=[],
                      facts=None, databases=list(request.layout.databases), whole_instance=True)
        return stream.as_dict(), record
    history = dump_history_supported()
    extra_args = ["--dump-history"] if history else []
    with FactsSession(db, request.layout.databases) as session:
        held = session.hold_point(warnings)
        with DatabaseDump(db, request.layout.databases, extra_args=extra_args) as dump:
            source = PointWatcher(dump.stdout, session.release) if held else dump.stdout
            stream = writer.add_stream(DB_PREFIX, counted(source))
        source_facts = session.collect(warnings) if held else None
        tables, float_columns = session.tables, session.float_columns
    if not held:  # what the dump cannot carry is reported all the same
        tables = run_query(db, tables_query(request.layout.databases))
        float_columns = run_query(db, float_columns_query(request.layout.databases))
    losses = logical_losses(tables, float_columns, history)
    for loss in losses:
        if loss["changes_data"]:
            warnings.append("logical dump: %s%s (%s) is not restored exactly: %s; use database method physical"
                            % (loss["table"], "." + loss["column"] if loss["column"] else "", loss["type"],
                               loss["reason"]))
    if source_facts is not None:
        writer.add_json(FACTS_MEMBER, {"method": "logical", "point": "the dump's transaction",
                                       "server_version": source_facts["server_version"],
                                       "tables": source_facts["tables"], "losses": losses})
    record = dict(choice.as_dict(), members=DB_PREFIX + ".*", position={}, losses=losses,
                  facts=FACTS_MEMBER if source_facts is not None else None, dump_history=history,
                  databases=list(request.layout.databases), whole_instance=False)
    return stream.as_dict(), record


def _previous_sizes(target: Target, appliance: str) -> Dict[str, int]:
    """{"object": its size, "db": its database stream's bytes} of the newest complete snapshot of
    ``appliance``, as far as known: what this one may reach (for the progress report only)."""
    for record in catalog.list_snapshots(target, appliance, read_sidecars=False).snapshots:
        if record.complete and record.size:
            try:
                sidecar = catalog.load_sidecar(target, record).sidecar
            except TargetError:  # the report goes without this total
                sidecar = None
            db = (sidecar.db if sidecar is not None else None) or {}
            return {"object": record.size, "db": int(db.get("bytes") or 0)}
    return {}


def _encryption_mode(encryption: Encryption) -> str:
    return {"recipients": "x25519"}.get(encryption.mode, encryption.mode)


def _archive_files(writer: ArchiveWriter, request: SnapshotRequest, counts: _Counts,
                   begin: Callable[[str], None]) -> None:
    """Config and secrets into the archive; any unreadable or vanished file fails the snapshot.
    ``begin`` tells the progress report that config, then secrets, are being written."""
    wanted = [c for c in request.components if c in ("config", "secrets")]
    if not wanted:
        return
    problems: List[Problem] = []
    add = {"file": writer.add_file, "dir": writer.add_dir, "symlink": writer.add_symlink}
    # The secrets folder is walked last, its own entry first: from there on the phase is secrets.
    secrets_root = "files/" + request.layout.secrets_dir if "secrets" in wanted else None
    begin(wanted[0])
    for entry in collect_files(request.layout, wanted, problems):
        if entry.archive_name == secrets_root and wanted[0] != "secrets":
            begin("secrets")
        # A file that changes or vanishes while read raises here and fails the snapshot at once:
        # the tar stream is cut mid-member, so nothing more could be added anyway.
        add[entry.kind](entry.archive_name, entry.abs_path)
        counts.add(entry.kind)
    if problems:
        raise ApplianceError(problems_message(problems))
