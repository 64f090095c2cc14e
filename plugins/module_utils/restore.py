# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bringing a snapshot back onto an appliance: safely, verified before and after.

Order of work, and why:
1. select the snapshot (latest complete, or by id) of this appliance; another appliance's snapshot
   only when the caller says so explicitly;
2. preflight (all that check mode runs): the object's size against the sidecar, then pass 1 streams
   the whole object once - its sha256 against the sidecar (quick check) and every member against
   manifest.json (deep check; the manifest is the LAST member, so nothing can be trusted before the
   end) - plus the member rules of a restore (names, paths, symlink targets), the order of the
   databases in the dump, the application version, free space, and what on disk would be replaced;
3. pre commands (e.g. stop Segura's services); a failing one aborts before anything is written;
4. pass 2 streams the object again and restores as it goes, re-checking every member against the
   manifest of pass 1 BEFORE it is used: dump chunks are fed to ONE ``mariadb`` client, files are
   written to a temporary name, hashed, compared and renamed into place;
5. session recordings (optional) are copied back from the target, verified;
6. post-verification: every restored file on disk against the manifest, and the databases re-dumped
   and compared with the dump in the snapshot (comment lines aside);
7. post commands (e.g. start the services), only when everything above succeeded.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import secrets
import stat as stat_module
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ansible_collections.segura.backup.plugins.module_utils import appliance as appliance_mod
from ansible_collections.segura.backup.plugins.module_utils import catalog
from ansible_collections.segura.backup.plugins.module_utils.archive import (
    DB_PREFIX,
    MANIFEST_MEMBER,
    SNAPSHOT_MEMBER,
    ArchiveReader,
    Decryption,
    HashingReader,
    check_member_name,
)
from ansible_collections.segura.backup.plugins.module_utils.errors import (
    ApplianceError,
    ArchiveError,
    ConfigError,
    IntegrityError,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils.targets.base import Target, clean_relpath
from ansible_collections.segura.backup.plugins.module_utils.text import describe_bytes

RESTORABLE_COMPONENTS = ("database", "config", "secrets")
FILES_PREFIX = "files/"
MiB = 1024 * 1024
BLOCK = 1024 * 1024
#: DB chunks larger than this are spooled to an anonymous temporary file (0600, unlinked) while checked.
SPOOL_IN_MEMORY = 64 * MiB
#: InnoDB takes roughly 1.06 bytes per byte of INSERT text (tests/lab/reference.py); keep a margin.
DB_SPACE_FACTOR = 1.25
#: The manifest does not record mode or owner of session recordings: Segura's own (*inferred*).
SESSION_FILE_MODE = 0o640
SESSION_DIR_MODE = 0o750
COMMAND_OUTPUT_LIMIT = 4096
MAX_LISTED = 50  # paths listed in a result (overwrites, problems)

_DB_CHUNK = re.compile(re.escape(DB_PREFIX) + r"\.\d{6}")
_CREATE_DATABASE = re.compile(rb"^CREATE DATABASE (?:/\*!\d+ IF NOT EXISTS\*/ )?`([^`]+)`")
_SNAPSHOT_ID = re.compile(r"[0-9a-f]{8}")


# --------------------------------------------------------------------------------------------------
# request and small helpers
# --------------------------------------------------------------------------------------------------


@dataclass
class RestoreRequest:
    """What to restore, from where, onto which appliance.

    ``appliance`` is the name of the appliance restored ONTO (and, unless ``source_appliance`` says
    otherwise, the folder its snapshots are read from). ``components`` None means every restorable
    component the snapshot holds. ``db`` may be None only when 'database' is not restored.
    """

    appliance: str
    layout: appliance_mod.ApplianceLayout
    decryption: Decryption
    db: Optional[appliance_mod.DatabaseConnection] = None
    snapshot: str = "latest"
    source_appliance: Optional[str] = None
    allow_other_appliance: bool = False
    components: Optional[Sequence[str]] = None
    restore_sessions: bool = False
    force_version_mismatch: bool = False
    pre_commands: Sequence[Sequence[str]] = ()
    post_commands: Sequence[Sequence[str]] = ()
    command_timeout: float = 600.0
    post_verify: bool = True

    def __post_init__(self):
        self.appliance = catalog.validate_appliance(self.appliance)
        if self.source_appliance in (None, ""):
            self.source_appliance = None
        else:
            self.source_appliance = catalog.validate_appliance(self.source_appliance)
        if self.source_appliance and self.source_appliance != self.appliance and not self.allow_other_appliance:
            raise ConfigError("snapshots of appliance %r would be restored onto %r: set allow_other_appliance "
                              "to do that on purpose" % (self.source_appliance, self.appliance))
        if not isinstance(self.snapshot, str) or not (self.snapshot == "latest" or _SNAPSHOT_ID.fullmatch(self.snapshot)):
            raise ConfigError("snapshot must be 'latest' or a snapshot id (8 hex digits), got %r" % (self.snapshot,))
        if self.components is not None:
            components = list(self.components)
            unknown = sorted(set(components) - set(RESTORABLE_COMPONENTS))
            if unknown:
                raise ConfigError("unknown component(s) to restore: %s (known: %s)"
                                  % (", ".join(unknown), ", ".join(RESTORABLE_COMPONENTS)))
            if not components and not self.restore_sessions:
                raise ConfigError("nothing to restore: components is empty and restore_sessions is off")
            self.components = tuple(c for c in RESTORABLE_COMPONENTS if c in components)
        self.pre_commands = _check_commands(self.pre_commands, "pre_commands")
        self.post_commands = _check_commands(self.post_commands, "post_commands")

    @property
    def listed_appliance(self) -> str:
        """The folder on the target whose snapshots are considered."""
        return self.source_appliance or self.appliance


def _check_commands(commands, what: str) -> Tuple[Tuple[str, ...], ...]:
    if commands is None:
        return ()
    if isinstance(commands, (str, bytes)):
        raise ConfigError("%s must be a list of argument lists, e.g. [[systemctl, stop, nginx]]" % what)
    checked = []
    for command in commands:
        if isinstance(command, (str, bytes)) or not command or not all(isinstance(a, str) and a for a in command):
            raise ConfigError("each entry of %s must be a non-empty list of non-empty strings (run without a "
                              "shell), got %r" % (what, command))
        checked.append(tuple(command))
    return tuple(checked)


def _excerpt(data: bytes, limit: int = COMMAND_OUTPUT_LIMIT) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "... (%d more characters)" % (len(text) - limit)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


# --------------------------------------------------------------------------------------------------
# snapshot selection
# --------------------------------------------------------------------------------------------------


def select_snapshot(target: Target, request: RestoreRequest) -> catalog.SnapshotRecord:
    """The complete snapshot to restore: the newest one, or the one with the requested id."""
    listing = catalog.list_snapshots(target, request.listed_appliance)
    records = listing.for_appliance(request.listed_appliance)
    where = target.describe_path(catalog.snapshots_dir(request.listed_appliance))
    if request.snapshot == "latest":
        for record in records:  # newest first
            if record.complete:
                return record
        if listing.errors:
            raise ConfigError("no complete snapshot found in %s (%s)" % (where, "; ".join(listing.errors)))
        raise ConfigError("no complete snapshot of appliance %r in %s" % (request.listed_appliance, where))
    for record in records:
        if record.id == request.snapshot:
            if not record.complete:
                raise IntegrityError("snapshot %s in %s is %s%s; only complete snapshots are restored"
                                     % (record.id, where, record.status,
                                        " (%s)" % record.problem if record.problem else ""))
            return record
    raise ConfigError("snapshot %s not found in %s" % (request.snapshot, where))


# --------------------------------------------------------------------------------------------------
# the dump: which databases it creates, and a digest that two dumps of the same data share
# --------------------------------------------------------------------------------------------------


class DumpScanner:
    """Reads a mariadb-dump stream: the databases it creates, in order, and a content digest.

    The digest hashes every line except ``-- `` comment lines (mariadb-dump writes the server version
    and the host there), so a dump of restored databases can be compared with the snapshot's dump.
    Lines are never held whole: only the first bytes of a line are kept to recognise it.
    """

    _KEEP = 512

    def __init__(self):
        self.databases: List[str] = []
        self.content = hashlib.sha256()
        self._head = b""  # first bytes of the current (unfinished) line
        self._comment: Optional[bool] = None  # is the current line a comment? None: not known yet
        self._pending = b""  # bytes of the current line not hashed while that is unknown

    def feed(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end + 1
            piece = data[start:stop]
            if len(self._head) < self._KEEP:
                self._head += piece[:self._KEEP - len(self._head)]
            if self._comment is None:
                if len(self._head) >= 3 or end >= 0:  # enough to tell a comment line
                    self._comment = self._head.startswith(b"-- ")
                    if not self._comment:
                        self.content.update(self._pending + piece)
                    self._pending = b""
                else:
                    self._pending += piece
            elif not self._comment:
                self.content.update(piece)
            if end < 0:
                return
            self._end_line()
            start = stop

    def _end_line(self) -> None:
        match = _CREATE_DATABASE.match(self._head)
        if match:
            self.databases.append(match.group(1).decode("utf-8", "replace"))
        self._head = b""
        self._pending = b""
        self._comment = None

    def finish(self) -> str:
        if self._pending:  # a last line of one or two bytes without a newline
            self.content.update(self._pending)
        if self._head:
            self._end_line()
        return self.content.hexdigest()


# --------------------------------------------------------------------------------------------------
# the destination tree: writes that never follow a symlink inside the restored paths
# --------------------------------------------------------------------------------------------------


@dataclass
class _Wanted:
    """One filesystem entry the snapshot describes (from the manifest)."""

    relpath: str  # below the layout root
    type: str  # file | dir | symlink
    size: int
    sha256: Optional[str]
    mode: int
    mtime: int
    uid: int
    gid: int
    linkname: str = ""
    component: str = ""


class DestinationTree:
    """The appliance's filesystem below ``root``, restricted to ``allowed_roots`` (relative paths).

    Path components ABOVE an allowed root (``etc``, ``var/senhasegura``) belong to the system and are
    followed like any path; from the allowed root down, every component is opened with O_NOFOLLOW, so
    a symlink - old, or planted by an earlier member - is never written through. Files go to a
    temporary name in their directory, are hashed while written and renamed over the old entry.
    """

    def __init__(self, root: str, allowed_roots: Sequence[str]):
        self.root = root
        self.allowed_roots = sorted(set(allowed_roots), key=len, reverse=True)
        self.can_chown = hasattr(os, "geteuid") and os.geteuid() == 0

    def root_of(self, relpath: str) -> Optional[str]:
        for root in self.allowed_roots:
            if _is_within(relpath, root):
                return root
        return None

    # -- directory walking -------------------------------------------------------------------------

    def _open_parent(self, relpath: str, create: bool, dir_mode: int = 0o700) -> Optional[Tuple[int, str]]:
        """(fd of the parent directory, base name); None when a parent is missing and not created."""
        allowed = self.root_of(relpath)
        if allowed is None:
            raise ArchiveError("refusing to restore %s: outside the restored paths" % self._local(relpath))
        parts = relpath.split("/")
        first_guarded = len(allowed.split("/")) - 1  # index of the allowed root's own component
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for index, part in enumerate(parts[:-1]):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                if index >= first_guarded:
                    flags |= os.O_NOFOLLOW
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    os.mkdir(part, 0o755 if index < first_guarded else dir_mode, dir_fd=fd)
                    child = os.open(part, flags, dir_fd=fd)
                except OSError as exc:
                    where = self._local("/".join(parts[:index + 1]))
                    if os.path.islink(where):
                        raise ArchiveError("refusing to write through the symbolic link %s" % where) from None
                    raise ApplianceError("cannot open directory %s: %s" % (where, exc.strerror)) from None
                os.close(fd)
                fd = child
        except BaseException:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        return fd, parts[-1]

    def _local(self, relpath: str) -> str:
        return os.path.join(self.root, relpath)

    # -- comparing -------------------------------------------------------------------------------

    def state(self, wanted: _Wanted) -> str:
        """'missing', 'same', 'metadata' (content equal, mode/owner/mtime not), 'differs' or 'conflict'."""
        opened = self._open_parent(wanted.relpath, create=False)
        if opened is None:
            return "missing"
        dfd, name = opened
        try:
            try:
                info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return "missing"
            kind = _kind(info.st_mode)
            if wanted.type == "dir":
                if kind != "dir":
                    return "conflict"
            elif kind == "dir":
                return "conflict"
            elif kind != wanted.type:
                return "differs"
            elif kind == "symlink":
                if os.readlink(name, dir_fd=dfd) != wanted.linkname:
                    return "differs"
            elif kind == "file":
                if info.st_size != wanted.size or _hash_at(dfd, name) != wanted.sha256:
                    return "differs"
            return "same" if self._same_metadata(info, wanted) else "metadata"
        finally:
            os.close(dfd)

    def _same_metadata(self, info: os.stat_result, wanted: _Wanted) -> bool:
        if wanted.type != "symlink" and stat_module.S_IMODE(info.st_mode) != wanted.mode:
            return False
        if self.can_chown and (info.st_uid, info.st_gid) != (wanted.uid, wanted.gid):
            return False
        return int(info.st_mtime) == int(wanted.mtime)

    # -- writing ---------------------------------------------------------------------------------

    def write_file(self, wanted: _Wanted, blocks: Iterator[bytes]) -> None:
        """Write to a temporary name, check size + sha256 against ``wanted``, then rename into place."""
        dfd, name = self._open_parent(wanted.relpath, create=True)
        temp = _temp_name(name)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
            try:
                digest = hashlib.sha256()
                size = 0
                for block in blocks:
                    view = memoryview(block)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    digest.update(block)
                    size += len(block)
                if size != wanted.size or digest.hexdigest() != wanted.sha256:
                    raise IntegrityError("%s: restored content (%d bytes) does not match the manifest; not "
                                         "renamed into place" % (self._local(wanted.relpath), size))
                self._apply_metadata_fd(fd, wanted)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._replace(dfd, temp, name, wanted)
        except BaseException:
            _unlink_quietly(temp, dfd)
            raise
        finally:
            os.close(dfd)

    def write_symlink(self, wanted: _Wanted) -> None:
        dfd, name = self._open_parent(wanted.relpath, create=True)
        temp = _temp_name(name)
        try:
            os.symlink(wanted.linkname, temp, dir_fd=dfd)
            if self.can_chown:
                os.chown(temp, wanted.uid, wanted.gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(temp, (wanted.mtime, wanted.mtime), dir_fd=dfd, follow_symlinks=False)
            self._replace(dfd, temp, name, wanted)
        except BaseException:
            _unlink_quietly(temp, dfd)
            raise
        finally:
            os.close(dfd)

    def make_dir(self, wanted: _Wanted) -> None:
        """Create the directory (metadata comes later, in ``set_dir_metadata``: entries change mtimes)."""
        dfd, name = self._open_parent(wanted.relpath, create=True)
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat_module.S_ISDIR(info.st_mode):
                    raise ArchiveError("%s exists and is not a directory; refusing to replace it"
                                       % self._local(wanted.relpath)) from None
        finally:
            os.close(dfd)

    def set_metadata(self, wanted: _Wanted) -> None:
        """Mode, owner and mtime of an existing entry, without following a symlink."""
        dfd, name = self._open_parent(wanted.relpath, create=False) or (None, None)
        if dfd is None:
            raise ApplianceError("%s vanished during the restore" % self._local(wanted.relpath))
        try:
            if wanted.type == "symlink":
                if self.can_chown:
                    os.chown(name, wanted.uid, wanted.gid, dir_fd=dfd, follow_symlinks=False)
                os.utime(name, (wanted.mtime, wanted.mtime), dir_fd=dfd, follow_symlinks=False)
                return
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            if wanted.type == "dir":
                flags |= os.O_DIRECTORY
            fd = os.open(name, flags, dir_fd=dfd)
            try:
                self._apply_metadata_fd(fd, wanted)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    def _apply_metadata_fd(self, fd: int, wanted: _Wanted) -> None:
        if self.can_chown:
            os.fchown(fd, wanted.uid, wanted.gid)  # before chmod: chown clears set-id bits
        os.fchmod(fd, wanted.mode)
        os.utime(fd, (wanted.mtime, wanted.mtime))

    def _replace(self, dfd: int, temp: str, name: str, wanted: _Wanted) -> None:
        try:
            existing = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat_module.S_ISDIR(existing.st_mode):
            raise ArchiveError("%s is a directory where the snapshot has a %s; refusing to replace it"
                               % (self._local(wanted.relpath), wanted.type))
        os.rename(temp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # replaces a file or a symlink itself

    def fsync_dirs(self, relpaths: Sequence[str]) -> None:
        for relpath in relpaths:
            try:
                fd = os.open(self._local(relpath), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _kind(mode: int) -> str:
    if stat_module.S_ISREG(mode):
        return "file"
    if stat_module.S_ISDIR(mode):
        return "dir"
    if stat_module.S_ISLNK(mode):
        return "symlink"
    return "other"


def _temp_name(name: str) -> str:
    return ".%s.segura-restore-%s" % (name[:80], secrets.token_hex(4))


def _unlink_quietly(name: str, dfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def _hash_at(dfd: int, name: str) -> Optional[str]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# the plan: what pass 1 proved, and what a restore would do
# --------------------------------------------------------------------------------------------------


@dataclass
class RestorePlan:
    """What the preflight found. ``problems`` non-empty means the restore is refused."""

    record: catalog.SnapshotRecord
    snapshot: Dict[str, Any]  # snapshot.json
    manifest: Dict[str, Any]  # manifest.json, verified against every member
    components: List[str]
    wanted: List[_Wanted]  # files/dirs/symlinks to restore, in archive order
    members: Dict[str, Dict[str, Any]]  # manifest entries by name
    databases: List[str]  # in the order the dump creates them
    dump_digest: Optional[str]  # DumpScanner digest of the snapshot's dump
    states: Dict[str, str] = field(default_factory=dict)  # relpath -> state()
    sessions: List[Dict[str, Any]] = field(default_factory=list)
    session_states: Dict[str, str] = field(default_factory=dict)
    checks: Dict[str, Any] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    fetch_seconds: float = 0.0

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
        return any(state != "same" for state in self.session_states.values())

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
            "snapshot": _snapshot_facts(self.record, self.snapshot),
            "components": list(self.components),
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
            "sessions_to_copy": sum(1 for s in self.session_states.values() if s != "same"),
            "checks": self.checks,
            "problems": list(self.problems),
            "ok": self.ok,
        }


def _snapshot_facts(record: catalog.SnapshotRecord, snapshot: Dict[str, Any]) -> Dict[str, Any]:
    facts = snapshot.get("facts") if isinstance(snapshot.get("facts"), dict) else {}
    return {"id": record.id, "appliance": record.appliance, "created": catalog.format_utc(record.created),
            "object": record.object_relpath, "size": record.size, "sha256": record.sha256,
            "appliance_version": facts.get("appliance_version")}


def _allowed_roots(layout: appliance_mod.ApplianceLayout) -> Dict[str, str]:
    """Allowed root (relative path) -> component: the configured paths and the secrets folder."""
    roots = {entry.path: "config" for entry in layout.config_paths}
    roots[layout.secrets_dir] = "secrets"
    return roots


def _component_of(relpath: str, roots: Dict[str, str]) -> Optional[str]:
    best = None
    for root, component in roots.items():
        if _is_within(relpath, root) and (best is None or len(root) > len(best[0])):
            best = (root, component)
    return best[1] if best else None


def check_symlink_target(relpath: str, linkname: str, allowed_roots: Sequence[str]) -> Optional[str]:
    """None when a symlink at ``relpath`` pointing to ``linkname`` stays inside the restored paths.

    Absolute targets are read as paths on the appliance (``/`` = the layout root); relative ones are
    resolved from the link's folder. Either must land inside one of ``allowed_roots``.
    """
    if not linkname or "\x00" in linkname:
        return "empty or invalid link target"
    if linkname.startswith("/"):
        resolved = posixpath.normpath(linkname).lstrip("/")
    else:
        base = posixpath.dirname(relpath)
        joined = posixpath.join("/" + base, linkname)
        resolved = posixpath.normpath(joined).lstrip("/")
        # normpath("/..") is "/": climbing above the root must not be silently clipped
        depth = len([p for p in base.split("/") if p])
        for part in linkname.split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    return "target %r climbs above the appliance root" % linkname
            elif part not in ("", "."):
                depth += 1
    if not any(_is_within(resolved, root) for root in allowed_roots):
        return "target %r points outside the restored paths" % linkname
    return None


def _manifest_entries(manifest: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    members = manifest.get("members")
    if not isinstance(members, list):
        raise IntegrityError("manifest.json has no member list")
    return {m["name"]: m for m in members if isinstance(m, dict) and isinstance(m.get("name"), str)}


def _wanted_of(name: str, entry: Dict[str, Any], component: str) -> _Wanted:
    try:
        return _Wanted(relpath=name[len(FILES_PREFIX):], type=entry["type"], size=int(entry.get("size") or 0),
                       sha256=entry.get("sha256"), mode=int(entry["mode"]) & 0o7777, mtime=int(entry["mtime"]),
                       uid=int(entry["uid"]), gid=int(entry["gid"]), linkname=entry.get("linkname") or "",
                       component=component)
    except (KeyError, TypeError, ValueError):
        raise IntegrityError("manifest entry of %s lacks type, mode, mtime, uid or gid" % name) from None


def _open_object(target: Target, record: catalog.SnapshotRecord):
    try:
        return target.open_read(record.object_relpath)
    except TargetNotFound:
        raise IntegrityError("%s vanished from the target" % target.describe_path(record.object_relpath)) from None


def _first_pass(target: Target, record: catalog.SnapshotRecord, decryption: Decryption) -> Tuple[ArchiveReader, Optional[str], List[str]]:
    """Stream the object once: quick check (size, sha256) and deep check (every member). Nothing is written."""
    problems: List[str] = []
    stored = target.stat(record.object_relpath).size
    if stored != record.sidecar.size:
        raise IntegrityError("%s holds %d bytes, its sidecar says %d"
                             % (target.describe_path(record.object_relpath), stored, record.sidecar.size))
    scanner = DumpScanner()
    saw_db = False
    where = "snapshot %s (%s)" % (record.id, target.describe_path(record.object_relpath))
    with _open_object(target, record) as handle:
        counted = HashingReader(handle)
        try:
            reader = ArchiveReader(counted, decryption, max_content_bytes=record.sidecar.bytes_in)
        except IntegrityError as exc:
            raise IntegrityError("%s failed deep verification, nothing was restored: %s" % (where, exc)) from None
        except ArchiveError as exc:  # wrong key or passphrase, or none given
            raise ArchiveError("cannot open %s: %s" % (where, exc)) from None
        try:
            for info, content in reader.members(strict=False):
                if _DB_CHUNK.fullmatch(info.name):
                    saw_db = True
                    for block in iter(lambda: content.read(BLOCK), b""):
                        scanner.feed(block)
            problems.extend(reader.problems())
        except IntegrityError as exc:
            raise IntegrityError("%s failed deep verification, nothing was restored: %s" % (where, exc)) from None
        finally:
            reader.close()
    if counted.bytes != record.sidecar.size or counted.sha256.hexdigest() != record.sidecar.sha256:
        problems.insert(0, "the object's sha256 differs from its sidecar (the stored object was changed or damaged)")
    digest = scanner.finish() if saw_db else None
    reader.dump_databases = scanner.databases  # type: ignore[attr-defined]
    return reader, digest, problems


def plan_restore(target: Target, request: RestoreRequest) -> RestorePlan:
    """Preflight: select, quick-check and deep-verify the snapshot, and compare it with the appliance.

    Writes nothing. Raises for what makes a plan impossible (no snapshot, wrong key, corrupt or
    tampered object, unsafe member); returns a plan whose ``problems`` say what else refuses it.
    """
    record = select_snapshot(target, request)
    sidecar = record.sidecar
    checks: Dict[str, Any] = {}
    problems: List[str] = []
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

    current = appliance_mod.appliance_version(request.layout)
    # Fail fast on the sidecar's word before downloading; snapshot.json confirms it below.
    _check_version(sidecar.versions.get("appliance"), current, request, record.id)

    started = time.monotonic()
    reader, dump_digest, integrity = _first_pass(target, record, request.decryption)
    fetch_seconds = time.monotonic() - started
    if integrity:
        raise IntegrityError("snapshot %s failed deep verification, nothing was restored: %s"
                             % (record.id, "; ".join(integrity[:10])))
    snapshot, manifest = reader.snapshot or {}, reader.manifest or {}
    checks["quick"] = {"ok": True, "size": sidecar.size, "sha256": sidecar.sha256}
    checks["deep"] = {"ok": True, "members": len(reader.seen) + 1, "seconds": round(fetch_seconds, 3)}

    for doc, label in ((snapshot, SNAPSHOT_MEMBER), (manifest, MANIFEST_MEMBER)):
        if doc.get("appliance") != record.appliance or doc.get("id") != record.id:
            raise IntegrityError("%s of snapshot %s says appliance %r, id %r, but it is filed as %s/%s; refusing "
                                 "a snapshot made by another appliance"
                                 % (label, record.id, doc.get("appliance"), doc.get("id"), record.appliance, record.id))
    if snapshot.get("appliance") != request.appliance and not request.allow_other_appliance:
        raise ConfigError("snapshot %s was made by appliance %r, not %r: set allow_other_appliance to restore "
                          "it here on purpose" % (record.id, snapshot.get("appliance"), request.appliance))
    facts = snapshot.get("facts") if isinstance(snapshot.get("facts"), dict) else {}
    checks["version"] = _check_version(facts.get("appliance_version"), current, request, record.id)

    entries = _manifest_entries(manifest)
    roots = _allowed_roots(request.layout)
    wanted: List[_Wanted] = []
    for name, entry in entries.items():
        if name in (SNAPSHOT_MEMBER, MANIFEST_MEMBER) or _DB_CHUNK.fullmatch(name):
            continue
        if not name.startswith(FILES_PREFIX):
            raise IntegrityError("snapshot %s holds member %r outside files/ and db/; refusing it" % (record.id, name))
        relpath = name[len(FILES_PREFIX):]
        check_member_name(relpath)
        component = _component_of(relpath, roots)
        if component is None:
            raise IntegrityError("snapshot %s holds %s, outside the configured paths of this appliance (%s); "
                                 "refusing it (add the path to appliance.config_paths if it is wanted)"
                                 % (record.id, "/" + relpath, ", ".join("/" + r for r in sorted(roots))))
        item = _wanted_of(name, entry, component)
        if item.type == "symlink":
            reason = check_symlink_target(relpath, item.linkname, list(roots))
            if reason:
                raise IntegrityError("snapshot %s holds the symbolic link %s whose %s; refusing it"
                                     % (record.id, "/" + relpath, reason))
        if component in components:
            wanted.append(item)

    databases: List[str] = list(getattr(reader, "dump_databases", []))
    if "database" in components:
        checks["database_order"] = _check_database_order(databases, request.layout.databases, record.id)

    plan = RestorePlan(record=record, snapshot=snapshot, manifest=manifest, components=components, wanted=wanted,
                       members=entries, databases=databases, dump_digest=dump_digest, checks=checks,
                       problems=problems, fetch_seconds=fetch_seconds)
    tree = DestinationTree(request.layout.root, list(roots))
    for item in wanted:
        plan.states[item.relpath] = tree.state(item)
    conflicts = [w.relpath for w in wanted if plan.states[w.relpath] == "conflict"]
    if conflicts:
        problems.append("these paths exist with another type (a directory where the snapshot has a file, or the "
                        "reverse) and are not replaced: %s" % ", ".join("/" + c for c in conflicts[:10]))
    if request.restore_sessions:
        plan.sessions = _session_entries(manifest, record.appliance)
        _plan_sessions(target, request, plan)
    if "database" in components:
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
    rows = appliance_mod.run_query(request.db, "SELECT @@datadir, VERSION();")
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
    if plan.restores_database:
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


# --------------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------------


def _session_entries(manifest: Dict[str, Any], source_appliance: str) -> List[Dict[str, Any]]:
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


def _session_wanted(request: RestoreRequest, entry: Dict[str, Any]) -> _Wanted:
    return _Wanted(relpath=posixpath.join(request.layout.arz_dir, entry["relpath"]), type="file",
                   size=entry["size"], sha256=entry["sha256"], mode=SESSION_FILE_MODE, mtime=0, uid=0, gid=0)


def _plan_sessions(target: Target, request: RestoreRequest, plan: RestorePlan) -> None:
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
        wanted = _session_wanted(request, entry)
        state = tree.state(wanted)
        # Recordings carry no metadata in the manifest: equal content is enough.
        plan.session_states[entry["path"]] = "same" if state in ("same", "metadata") else state
    if missing:
        plan.problems.append("%d referenced session recordings are missing on the target or have another size: %s"
                             % (len(missing), ", ".join(missing[:10])))


def _restore_sessions(target: Target, request: RestoreRequest, plan: RestorePlan) -> Dict[str, int]:
    tree = DestinationTree(request.layout.root, [request.layout.arz_dir])
    copied = skipped = copied_bytes = 0
    for entry in plan.sessions:
        wanted = _session_wanted(request, entry)
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
        tree.make_dir(_Wanted(relpath=relpath, type="dir", size=0, sha256=None, mode=SESSION_DIR_MODE,
                              mtime=0, uid=0, gid=0))
        dfd, name = tree._open_parent(relpath, create=False)
        try:
            os.chmod(name, SESSION_DIR_MODE, dir_fd=dfd, follow_symlinks=True)
        finally:
            os.close(dfd)


# --------------------------------------------------------------------------------------------------
# commands and the database client
# --------------------------------------------------------------------------------------------------


def run_commands(commands: Sequence[Sequence[str]], phase: str, timeout: float) -> List[Dict[str, Any]]:
    """Run argv lists without a shell, in order; the first failure raises ApplianceError."""
    results = []
    for argv in commands:
        started = time.monotonic()
        try:
            done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=timeout, close_fds=True, check=False)
        except FileNotFoundError:
            raise ApplianceError("%s command %s: program not found" % (phase, argv[0])) from None
        except subprocess.TimeoutExpired:
            raise ApplianceError("%s command %s did not finish within %d s" % (phase, " ".join(argv), timeout)) from None
        except OSError as exc:
            raise ApplianceError("%s command %s could not run: %s" % (phase, argv[0], exc.strerror)) from None
        result = {"argv": list(argv), "rc": done.returncode, "stdout": _excerpt(done.stdout),
                  "stderr": _excerpt(done.stderr), "seconds": round(time.monotonic() - started, 3)}
        results.append(result)
        if done.returncode != 0:
            error = ApplianceError("%s command %s failed (exit code %d): %s"
                                   % (phase, " ".join(argv), done.returncode,
                                      appliance_mod._stderr_excerpt(done.stderr or done.stdout)))
            error.results = results  # type: ignore[attr-defined]
            raise error
    return results


class DatabaseLoader:
    """ONE ``mariadb`` client fed the dump on stdin; stderr kept for the error message.

    Credentials only through the connection's defaults file. ``abort()`` kills the client so a
    half-fed statement is never committed by an orderly end of input.
    """

    def __init__(self, connection: appliance_mod.DatabaseConnection):
        tool = appliance_mod._first_tool("mariadb", "mysql")
        self.command = ([tool] + connection.client_args()
                        + ["--binary-mode", "--batch", "--default-character-set=utf8mb4", "--max-allowed-packet=1G"])
        self.describe = connection.describe()
        self.process: Optional[subprocess.Popen] = None
        self._stderr = bytearray()
        self._thread: Optional[threading.Thread] = None
        self.bytes = 0

    def start(self) -> "DatabaseLoader":
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            raise ApplianceError("could not start %s: %s" % (self.command[0], exc.strerror)) from None
        self._thread = threading.Thread(target=self._drain, name="mariadb-stderr", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        for block in iter(lambda: self.process.stderr.read1(65536), b""):
            room = 65536 - len(self._stderr)
            if room > 0:
                self._stderr += block[:room]

    def feed(self, source) -> None:
        try:
            for block in iter(lambda: source.read(BLOCK), b""):
                self.process.stdin.write(block)
                self.bytes += len(block)
        except BrokenPipeError:
            self._fail_after_exit()

    def finish(self) -> None:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        code = self.process.wait()
        self._thread.join(timeout=30)
        if code != 0:
            self._raise(code)

    def _fail_after_exit(self) -> None:
        code = self.process.wait()
        self._thread.join(timeout=30)
        self._raise(code)

    def _raise(self, code: int) -> None:
        raise ApplianceError("loading the database dump into %s failed (mariadb exit code %d after %s): %s"
                             % (self.describe, code, describe_bytes(self.bytes),
                                appliance_mod._stderr_excerpt(bytes(self._stderr))))

    def abort(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(timeout=30)
        try:
            self.process.stdin.close()
        except OSError:
            pass


def _spool_chunk(content, expected: Dict[str, Any], name: str):
    """Read one dump chunk completely and check it against the manifest BEFORE it is fed."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    digest = hashlib.sha256()
    size = 0
    for block in iter(lambda: content.read(BLOCK), b""):
        digest.update(block)
        size += len(block)
        spool.write(block)
    if size != expected.get("size") or digest.hexdigest() != expected.get("sha256"):
        spool.close()
        raise IntegrityError("%s differs from the manifest verified in the first pass (the object changed on the "
                             "target since?); not fed to the database" % name)
    spool.seek(0)
    return spool


# --------------------------------------------------------------------------------------------------
# the restore
# --------------------------------------------------------------------------------------------------


def restore(target: Target, request: RestoreRequest, plan: Optional[RestorePlan] = None,
            progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Restore a snapshot onto the appliance; returns what was done, per-phase durations included."""
    started = time.monotonic()
    if plan is None:
        plan = plan_restore(target, request)
        preflight_outside = 0.0  # the preflight ran here: already inside the total
    else:
        # The caller planned (the module does): count the preflight's pass 1 into the total (RTO).
        preflight_outside = plan.fetch_seconds
    if not plan.ok:
        raise ConfigError("restore refused, nothing was written: %s" % "; ".join(plan.problems))
    durations = {"fetch_verify": round(plan.fetch_seconds, 3), "database": 0.0, "files": 0.0, "sessions": 0.0,
                 "post_verify": 0.0}
    result: Dict[str, Any] = {"snapshot": _snapshot_facts(plan.record, plan.snapshot),
                              "components": list(plan.components), "warnings": []}
    result["pre_commands"] = run_commands(request.pre_commands, "pre", request.command_timeout)

    written = {"files": 0, "dirs": 0, "symlinks": 0, "metadata": 0, "unchanged": 0}
    overwritten: List[str] = []
    roots = _allowed_roots(request.layout)
    tree = DestinationTree(request.layout.root, list(roots))
    by_relpath = {w.relpath: w for w in plan.wanted}
    loader: Optional[DatabaseLoader] = None
    db_done = False
    db_seconds = files_seconds = 0.0
    dir_entries: List[_Wanted] = []
    with _open_object(target, plan.record) as handle:
        counted = HashingReader(handle)
        reader = ArchiveReader(counted, request.decryption, max_content_bytes=plan.record.sidecar.bytes_in)
        try:
            for info, content in reader:
                expected = plan.members.get(info.name)
                if info.name == SNAPSHOT_MEMBER:
                    continue
                if expected is None:
                    raise IntegrityError("member %s is not in the manifest verified in the first pass" % info.name)
                if _DB_CHUNK.fullmatch(info.name):
                    if not plan.restores_database:
                        continue
                    tick = time.monotonic()
                    spool = _spool_chunk(content, expected, info.name)
                    try:
                        if loader is None:
                            loader = DatabaseLoader(request.db).start()
                        loader.feed(spool)
                    finally:
                        spool.close()
                    db_seconds += time.monotonic() - tick
                    if progress:
                        progress({"phase": "database", "member": info.name, "bytes": loader.bytes})
                    continue
                if loader is not None and not db_done:  # the dump ended: let the client finish
                    tick = time.monotonic()
                    loader.finish()
                    db_done = True
                    db_seconds += time.monotonic() - tick
                wanted = by_relpath.get(info.name[len(FILES_PREFIX):]) if info.name.startswith(FILES_PREFIX) else None
                if wanted is None:
                    continue  # a component not restored this time
                if info.type != wanted.type or info.size != wanted.size or info.linkname != wanted.linkname:
                    raise IntegrityError("member %s differs from the manifest verified in the first pass" % info.name)
                tick = time.monotonic()
                _restore_entry(tree, wanted, content, written, overwritten, dir_entries)
                files_seconds += time.monotonic() - tick
            if loader is not None and not db_done:
                tick = time.monotonic()
                loader.finish()
                db_done = True
                db_seconds += time.monotonic() - tick
        except BaseException:
            if loader is not None and not db_done:
                loader.abort()
            raise
        finally:
            reader.close()
    tick = time.monotonic()
    # Directories last and deepest first: creating entries changes a directory's mtime.
    for wanted in sorted(dir_entries, key=lambda w: w.relpath.count("/"), reverse=True):
        tree.set_metadata(wanted)
    tree.fsync_dirs(sorted({posixpath.dirname(w.relpath) for w in plan.wanted} | {w.relpath for w in dir_entries}))
    files_seconds += time.monotonic() - tick
    if counted.sha256.hexdigest() != plan.record.sha256:
        result["warnings"].append("the object changed on the target between the two passes; every restored "
                                  "member still matched the verified manifest")
    durations["database"] = round(db_seconds, 3)
    durations["files"] = round(files_seconds, 3)

    sessions = {"restored": 0, "skipped": 0, "bytes": 0}
    if request.restore_sessions:
        tick = time.monotonic()
        sessions = _restore_sessions(target, request, plan)
        durations["sessions"] = round(time.monotonic() - tick, 3)

    verification: Dict[str, Any] = {}
    if request.post_verify:
        tick = time.monotonic()
        verification = post_verify(request, plan)
        durations["post_verify"] = round(time.monotonic() - tick, 3)
        if not verification["ok"]:
            raise IntegrityError("the restore finished but its verification failed: %s"
                                 % "; ".join(verification["problems"][:10]))

    result["post_commands"] = run_commands(request.post_commands, "post", request.command_timeout)
    durations["total"] = round(time.monotonic() - started + preflight_outside, 3)
    result.update({
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


def _restore_entry(tree: DestinationTree, wanted: _Wanted, content, written: Dict[str, int],
                   overwritten: List[str], dir_entries: List[_Wanted]) -> None:
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


# --------------------------------------------------------------------------------------------------
# post-verification
# --------------------------------------------------------------------------------------------------


def post_verify(request: RestoreRequest, plan: RestorePlan) -> Dict[str, Any]:
    """Files on disk against the manifest; databases re-dumped and compared with the snapshot's dump."""
    problems: List[str] = []
    tree = DestinationTree(request.layout.root, list(_allowed_roots(request.layout)))
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
        bad = [e["path"] for e in plan.sessions if stree.state(_session_wanted(request, e)) not in ("same", "metadata")]
        problems.extend("session recording %s was not restored intact" % p for p in bad[:10])
        result["sessions"] = {"checked": len(plan.sessions), "ok": not bad}
    if plan.restores_database:
        digest = dump_digest(request.db, plan.databases)
        same = digest == plan.dump_digest
        result["database"] = {"method": "re-dump compared with the snapshot's dump (comment lines aside)",
                              "databases": list(plan.databases), "ok": same}
        if not same:
            problems.append("a fresh dump of %s differs from the dump in the snapshot" % ", ".join(plan.databases))
    result["problems"] = problems
    result["ok"] = not problems
    return result


def dump_digest(connection: appliance_mod.DatabaseConnection, databases: Sequence[str]) -> str:
    """DumpScanner digest of a fresh dump of ``databases`` (same options as a snapshot's dump)."""
    scanner = DumpScanner()
    with appliance_mod.DatabaseDump(connection, databases) as dump:
        for block in iter(lambda: dump.stdout.read(BLOCK), b""):
            scanner.feed(block)
    return scanner.finish()


__all__ = ["RestoreRequest", "RestorePlan", "DestinationTree", "DumpScanner", "DatabaseLoader", "select_snapshot",
           "plan_restore", "restore", "post_verify", "dump_digest", "run_commands", "check_symlink_target",
           "RESTORABLE_COMPONENTS"]
