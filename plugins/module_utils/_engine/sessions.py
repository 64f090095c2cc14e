# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incremental sync of session recordings to ``<appliance>/sessions/<path below arz_dir>``.

Segura keeps one folder per day (``arz/YYYY/MMDD/<file>``); any other nesting is mirrored as is.
Recordings are already encrypted by the appliance and never change once written, so by default a
file moves only when it is absent on the target or has another size there (``compare='size'``).
``compare='sha256'`` hashes every local file on every run and compares contents instead.

A per-appliance index (``<appliance>/sessions/index.json``) remembers size, mtime and sha256 of what
was uploaded, so a run can reference every recording (path, size, sha256) in the snapshot manifest
without re-reading unchanged local files. The index is only a cache: without it every local file is
hashed once, and nothing is uploaded again whose size matches.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import stat as stat_module
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.files import Problem
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import sessions_dir
from ansible_collections.segura.backup.plugins.module_utils._engine.constants import SESSIONS_ON_PROBLEM
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    ApplianceError,
    ConfigError,
    IntegrityError,
    TargetError,
    TargetExists,
    TargetNotFound,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import UPLOAD_SUFFIX, Target, Upload, rename_into_place

BLOCK_SIZE = 4 * 1024 * 1024  # nfs-rs COMMITs every write: write big blocks (LAB.md)
SMALL_FILE = 1024 * 1024  # up to this size a recording is read whole and sent with put_files (many in flight)
INDEX_NAME = "index.json"
INDEX_FORMAT = "segura.backup/sessions-index/2"
INDEX_FORMATS = ("segura.backup/sessions-index/1", INDEX_FORMAT)  # 1: an object per entry
INDEX_LIMIT = 256 * 1024 * 1024  # about 2 million recordings
PARTIAL_SUFFIX = UPLOAD_SUFFIX
COMPARE_MODES = ("size", "sha256")
ON_PROBLEM = SESSIONS_ON_PROBLEM
STATUS_COMPLETE, STATUS_PARTIAL = "complete", "partial"
FILE, SYMLINK, HARDLINK = "file", "symlink", "hardlink"

# What an entry that is neither a file, a folder nor a symlink is, for the problem list.
_ODD_KINDS = ((stat_module.S_ISFIFO, "is a FIFO (named pipe), not a recording"),
              (stat_module.S_ISSOCK, "is a socket, not a recording"),
              (stat_module.S_ISCHR, "is a character device, not a recording"),
              (stat_module.S_ISBLK, "is a block device, not a recording"))


@dataclass
class SessionSyncResult:
    """What a sync did. ``referenced`` lists every recording now on the target, for the manifest.

    Entries: a file ``{"path", "size", "sha256"}``; a symbolic link ``{"path", "type": "symlink",
    "target", "size", "sha256"}`` (size and sha256 of the link's target text, as lstat and tar see a
    link; nothing is uploaded for it); a further name of a hard-linked file ``{"path", "type":
    "hardlink", "link", "size", "sha256"}`` (``link`` is the first name, uploaded once).
    """

    referenced: List[Dict[str, Any]] = field(default_factory=list)
    uploaded_count: int = 0
    uploaded_bytes: int = 0
    skipped_count: int = 0
    hashed_count: int = 0  # local files read only to compute their sha256
    symlinks: int = 0
    hardlinks: int = 0
    problems: List[Problem] = field(default_factory=list)

    @property
    def status(self) -> str:
        """'complete', or 'partial' when some entry of the tree could not be taken (see ``problems``)."""
        return STATUS_PARTIAL if self.problems else STATUS_COMPLETE


class LocalEntry(NamedTuple):
    """A file or symbolic link of the recordings tree, as lstat saw it while listing."""

    name: str
    kind: str  # FILE | SYMLINK
    info: os.stat_result


def _local_entries(top: str, problems: List[Problem]) -> Iterator[Tuple[str, List[LocalEntry]]]:
    """(relative dir, sorted files and links) per directory below ``top``, in a deterministic order.

    Nothing is followed: a link is an entry of its own. FIFOs, sockets and devices, and what cannot
    be listed or examined, land in ``problems``; the walk goes on.
    """
    pending = [""]
    while pending:
        reldir = pending.pop()
        local_dir = os.path.join(top, reldir) if reldir else top
        try:
            with os.scandir(local_dir) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except FileNotFoundError:
            problems.append(Problem(local_dir, "vanished while being listed"))
            continue
        except OSError as exc:
            problems.append(Problem(local_dir, "cannot be listed (%s)" % os.strerror(exc.errno or 0)))
            continue
        found, subdirs = [], []
        for entry in entries:
            relpath = posixpath.join(reldir, entry.name) if reldir else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                problems.append(Problem(entry.path, "vanished while being listed"))
                continue
            except OSError as exc:
                problems.append(Problem(entry.path, "cannot be examined (%s)" % os.strerror(exc.errno or 0)))
                continue
            if stat_module.S_ISDIR(info.st_mode):
                subdirs.append(relpath)
            elif not reldir and entry.name in (INDEX_NAME, INDEX_NAME + PARTIAL_SUFFIX):
                problems.append(Problem(entry.path, "name is reserved for the sync index"))
            elif stat_module.S_ISREG(info.st_mode):
                found.append(LocalEntry(entry.name, FILE, info))
            elif stat_module.S_ISLNK(info.st_mode):
                found.append(LocalEntry(entry.name, SYMLINK, info))
            else:
                problems.append(Problem(entry.path, next((why for test, why in _ODD_KINDS if test(info.st_mode)),
                                                         "is not a regular file")))
        if found:
            yield reldir, found
        pending.extend(reversed(subdirs))  # pop() then takes them in sorted order


class _Changed(Exception):
    """The local file vanished, changed or failed while being read (a Problem, not a failure)."""


def _same_file(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ino) == (after.st_size, after.st_mtime_ns, after.st_ino)


def _open_local(path: str):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Changed("vanished before it could be read") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Changed("was replaced by a symbolic link while being read") from None
        raise _Changed("cannot be read (%s)" % os.strerror(exc.errno or 0)) from None
    info = os.fstat(fd)
    if not stat_module.S_ISREG(info.st_mode):
        os.close(fd)
        raise _Changed("is no longer a regular file")
    return fd, info


def _read_blocks(fd: int, path: str, block_size: int) -> Iterator[bytes]:
    """Blocks of an open file; then checks the file did not change or vanish while being read."""
    before = os.fstat(fd)
    total = 0
    # Never read past the size seen at open: a file that keeps growing (a live recording) must
    # not keep this loop going; the check below reports it instead.
    while total < before.st_size:
        try:
            block = os.read(fd, min(block_size, before.st_size - total))
        except OSError as exc:
            raise _Changed("read failed (%s)" % os.strerror(exc.errno or 0)) from None
        if not block:
            break
        total += len(block)
        yield block
    after = os.fstat(fd)
    if total != before.st_size or not _same_file(before, after):
        raise _Changed("changed while being read")
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        raise _Changed("vanished while being read") from None
    if not _same_file(before, current):
        raise _Changed("was replaced while being read")


def _hash_local(path: str, block_size: int) -> Tuple[str, os.stat_result]:
    fd, info = _open_local(path)
    try:
        digest = hashlib.sha256()
        for block in _read_blocks(fd, path, block_size):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest(), info


def _read_small(path: str) -> Tuple[bytes, os.stat_result]:
    """The whole content of a small file, checked not to have changed while read."""
    fd, info = _open_local(path)
    try:
        data = b"".join(_read_blocks(fd, path, SMALL_FILE))
    finally:
        os.close(fd)
    return data, info


def _hash_remote(target: Target, relpath: str, block_size: int) -> str:
    digest = hashlib.sha256()
    with target.open_read(relpath) as handle:
        while True:
            block = handle.read(block_size)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


#: An index entry in memory: (size, mtime_ns, sha256) for a file, ("symlink", text), ("hardlink", first relpath).
#: Tuples, not dicts: at 100,000 recordings the index is most of what a sync holds (issue 13: < 150 MB).
IndexEntry = Tuple[Any, ...]


def _index_entry(entry: Any) -> Optional[IndexEntry]:
    """An entry of index.json (format 2: a list; format 1: a dict), or None when it is not valid."""
    if isinstance(entry, dict):  # format 1
        kind = entry.get("type", FILE)
        entry = [kind, entry.get("target") if kind == SYMLINK else entry.get("link")] if kind != FILE \
            else [entry.get("size"), entry.get("mtime_ns"), entry.get("sha256")]
    if not isinstance(entry, list):
        return None
    if len(entry) == 3 and all(isinstance(n, int) and not isinstance(n, bool) for n in entry[:2]) \
            and isinstance(entry[2], str) and len(entry[2]) == 64:
        return (entry[0], entry[1], entry[2])
    if len(entry) == 2 and entry[0] in (SYMLINK, HARDLINK) and isinstance(entry[1], str) and entry[1]:
        return (entry[0], entry[1])
    return None


def load_index(target: Target, appliance: str) -> Dict[str, IndexEntry]:
    """The sync index ({relpath: entry}, see ``IndexEntry``); empty when missing or unreadable.

    The index is only a cache: a damaged or forged entry costs a re-read or an upload, never a wrong
    reference (the manifest gets what was read now).
    """
    try:
        data = json.loads(target.read_bytes(sessions_dir(appliance) + "/" + INDEX_NAME, limit=INDEX_LIMIT))
    except TargetNotFound:
        return {}
    except (ValueError, RecursionError, UnicodeDecodeError, IntegrityError):
        return {}  # a damaged (or oversized) cache costs re-hashing, nothing else
    if not isinstance(data, dict) or data.get("format") not in INDEX_FORMATS or not isinstance(data.get("files"), dict):
        return {}
    files = data["files"]
    for relpath in list(files):  # converted in place: no second copy of a large index
        entry = _index_entry(files[relpath])
        if entry is None:
            del files[relpath]
        else:
            files[relpath] = entry
    return files


def _write_index(target: Target, appliance: str, files: Dict[str, IndexEntry]) -> None:
    """Atomically: write ``index.json.partial``, then rename over ``index.json``."""
    path = sessions_dir(appliance) + "/" + INDEX_NAME
    body = json.dumps({"format": INDEX_FORMAT, "files": files}, sort_keys=True, separators=(",", ":")).encode("utf-8")
    target.write_bytes(path + PARTIAL_SUFFIX, body)
    target.rename(path + PARTIAL_SUFFIX, path, replace=True)


def _upload_stream(target: Target, local: str, remote: str, replace: bool, block_size: int) -> Tuple[str, os.stat_result]:
    """Stream one large file to ``remote`` through ``remote.partial``; returns (sha256, local stat)."""
    partial = remote + PARTIAL_SUFFIX
    fd, info = _open_local(local)
    digest = hashlib.sha256()
    written = 0
    try:
        try:
            with target.open_write(partial) as out:
                for block in _read_blocks(fd, local, block_size):
                    digest.update(block)
                    out.write(block)
                    written += len(block)
            stored = target.stat(partial).size
            if stored != written:
                raise TargetError("%s holds %d bytes after writing %d" % (target.describe_path(partial), stored, written))
            rename_into_place(target, partial, remote, replace=replace)
        except TargetExists:
            _remove_quietly(target, partial)
            raise _Changed("appeared on the target while being uploaded") from None
        except BaseException:
            _remove_quietly(target, partial)
            raise
    finally:
        os.close(fd)
    return digest.hexdigest(), info


def _remove_quietly(target: Target, relpath: str) -> None:
    try:
        target.remove(relpath)
    except Exception:  # noqa: BLE001 - best effort: prune removes stale partial uploads later
        pass


def _link_text(link: str) -> str:
    """The target text of a link, never followed; names that are not UTF-8 keep their bytes (surrogates)."""
    try:
        return os.readlink(link)
    except FileNotFoundError:
        raise _Changed("vanished before it could be read") from None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise _Changed("is no longer a symbolic link") from None
        raise _Changed("cannot be read (%s)" % os.strerror(exc.errno or 0)) from None


def _text_digest(text: str) -> Tuple[int, str]:
    data = os.fsencode(text)
    return len(data), hashlib.sha256(data).hexdigest()


class _Sync:
    """One run of ``sync_sessions``: the walk, what it decided per entry, and the new index."""

    def __init__(self, target: Target, appliance: str, top: str, compare: str, block_size: int,
                 progress: Optional[Callable[[Dict[str, object]], None]]):
        self.target, self.top, self.compare, self.block_size = target, top, compare, block_size
        self.remote_top = sessions_dir(appliance)
        self.progress = progress
        self.old_index = load_index(target, appliance)
        self.new_index: Dict[str, IndexEntry] = {}
        self.index_changed = False
        self.result = SessionSyncResult()
        self.large: List[Tuple[str, bool]] = []  # (relpath, replace): streamed after the small ones
        self.claimed: Dict[Tuple[int, int], str] = {}  # (dev, ino) of hard-linked files -> the name taken
        self.first_names: Dict[Tuple[int, int], Tuple[str, int, str]] = {}  # (dev, ino) -> (relpath, size, sha256) stored
        self.further_names: List[Tuple[str, Tuple[int, int]]] = []  # hard-link names after the first

    def remember(self, relpath: str, entry: IndexEntry) -> None:
        """Index ``entry`` for ``relpath``; the old entry leaves the old index (one copy in memory)."""
        if self.old_index.pop(relpath, None) != entry:
            self.index_changed = True
        self.new_index[relpath] = entry

    def final_index(self, completed: bool) -> Optional[Dict[str, IndexEntry]]:
        """The index to write, or None when it would not change. After a failure, what the old
        index knew of the entries not reached is kept: they are still valid."""
        if completed:
            return self.new_index if self.index_changed or self.old_index else None
        if not self.index_changed:
            return None
        self.old_index.update(self.new_index)
        return self.old_index

    def report(self, action: str, relpath: str, size: int) -> None:
        if self.progress is not None:
            self.progress({"action": action, "path": relpath, "size": size})

    def problem(self, relpath: str, reason: str) -> None:
        self.result.problems.append(Problem(os.path.join(self.top, relpath), reason))
        self.report("problem", relpath, 0)

    def remote(self, relpath: str) -> str:
        return self.remote_top + "/" + relpath

    def done(self, relpath: str, sha256: str, info: os.stat_result, uploaded: bool) -> None:
        """A file is on the target as the local one: index, reference, count and report it."""
        self.remember(relpath, (info.st_size, info.st_mtime_ns, sha256))
        self.result.referenced.append({"path": self.remote(relpath), "size": info.st_size, "sha256": sha256})
        if info.st_nlink > 1:
            self.first_names.setdefault((info.st_dev, info.st_ino), (relpath, info.st_size, sha256))
        if uploaded:
            self.result.uploaded_count += 1
            self.result.uploaded_bytes += info.st_size
        else:
            self.result.skipped_count += 1
        self.report("uploaded" if uploaded else "skipped", relpath, info.st_size)

    # -- the walk: decides each entry; yields the small uploads for put_files -------------------

    def small_uploads(self) -> Iterator[Upload]:
        for reldir, entries in _local_entries(self.top, self.result.problems):
            remote_dir = posixpath.join(self.remote_top, reldir) if reldir else self.remote_top
            try:
                remote_files = {e.name: e for e in self.target.listdir(remote_dir) if not e.is_dir}
            except TargetNotFound:
                remote_files = {}
            for entry in entries:
                relpath = posixpath.join(reldir, entry.name) if reldir else entry.name
                try:
                    if entry.kind == SYMLINK:
                        self.take_symlink(relpath)
                        continue
                    inode = (entry.info.st_dev, entry.info.st_ino)
                    if entry.info.st_nlink > 1 and inode in self.claimed:
                        self.further_names.append((relpath, inode))
                        continue
                    upload = self.decide(relpath, remote_files.get(entry.name), entry.info)
                    if entry.info.st_nlink > 1:
                        self.claimed[inode] = relpath
                except _Changed as exc:
                    self.problem(relpath, str(exc))
                    continue
                if upload is not None:
                    yield upload

    def take_symlink(self, relpath: str) -> None:
        text = _link_text(os.path.join(self.top, relpath))
        size, sha256 = _text_digest(text)
        self.remember(relpath, (SYMLINK, text))
        self.result.referenced.append({"path": self.remote(relpath), "type": SYMLINK, "target": text,
                                       "size": size, "sha256": sha256})
        self.result.symlinks += 1
        self.report("symlink", relpath, size)

    def decide(self, relpath: str, remote_entry, listed: os.stat_result) -> Optional[Upload]:
        """Skip (recorded at once), stream later (large), or an Upload for put_files (small)."""
        local = os.path.join(self.top, relpath)
        indexed = self.old_index.get(relpath)
        if indexed is not None and len(indexed) != 3:
            indexed = None  # was a link last time
        replace = remote_entry is not None
        if remote_entry is not None:
            # sha256 of the copy on the target, as far as the index knows it
            remote_sha = indexed[2] if indexed and indexed[0] == remote_entry.size else None
            same = self.same_as_remote(relpath, listed, remote_entry, indexed, remote_sha)
            if same is not None:
                self.done(relpath, same[0], same[1], uploaded=False)
                return None
        if listed.st_size > SMALL_FILE:
            self.large.append((relpath, replace))
            return None
        data, info = _read_small(local)
        return Upload(self.remote(relpath), data, replace=replace,
                      tag=(relpath, hashlib.sha256(data).hexdigest(), info))

    def same_as_remote(self, relpath: str, listed: os.stat_result, remote_entry, indexed, remote_sha):
        """(sha256, stat) when the copy on the target is this file (per ``compare``), else None."""
        local = os.path.join(self.top, relpath)
        if self.compare == "size":
            if listed.st_size != remote_entry.size:
                return None
            if remote_sha and indexed is not None and indexed[1] == listed.st_mtime_ns:
                return remote_sha, listed  # unchanged since we uploaded it: no read at all
            local_sha, info = _hash_local(local, self.block_size)
            self.result.hashed_count += 1
            if remote_sha is None or remote_sha == local_sha:
                return local_sha, info  # same size, recordings are immutable: same file
            return None
        local_sha, info = _hash_local(local, self.block_size)
        self.result.hashed_count += 1
        if info.st_size == remote_entry.size:
            if remote_sha is None:
                remote_sha = _hash_remote(self.target, self.remote(relpath), self.block_size)
            if remote_sha == local_sha:
                return local_sha, info
        return None

    # -- after the walk ---------------------------------------------------------------------------

    def stream_large(self) -> None:
        for relpath, replace in self.large:
            try:
                sha256, info = _upload_stream(self.target, os.path.join(self.top, relpath), self.remote(relpath),
                                              replace, self.block_size)
            except _Changed as exc:
                self.problem(relpath, str(exc))
                continue
            self.done(relpath, sha256, info, uploaded=True)

    def link_further_names(self) -> None:
        """Further names of a hard-linked file: referenced as links to the first name, stored once."""
        for relpath, inode in self.further_names:
            first = self.first_names.get(inode)
            if first is None:  # the name taken for this inode failed after the walk had passed this one
                self.problem(relpath, "not stored: a hard link to %s, which could not be stored"
                             % os.path.join(self.top, self.claimed[inode]))
                continue
            first_relpath, size, sha256 = first
            self.remember(relpath, (HARDLINK, first_relpath))
            self.result.referenced.append({"path": self.remote(relpath), "type": HARDLINK,
                                           "link": self.remote(first_relpath), "size": size, "sha256": sha256})
            self.result.hardlinks += 1
            self.report("hardlink", relpath, size)


def sync_sessions(target: Target, appliance: str, layout: ApplianceLayout,
                  progress: Optional[Callable[[Dict[str, object]], None]] = None,
                  compare: str = "size", block_size: int = BLOCK_SIZE) -> SessionSyncResult:
    """Upload new (or changed) recordings and reference every one of them.

    One listing per target directory; a file is uploaded only when absent there or different
    (see the module docstring). Small files go through ``target.put_files`` (many in flight), larger
    ones are streamed one by one afterwards. Symbolic links are referenced with their target text
    (never followed, nothing uploaded); a further name of a hard-linked file references the first.
    Whatever cannot be taken (FIFOs, sockets, devices, unreadable files, files that vanish or change
    while read) lands in ``problems`` with its path and the walk goes on; the caller decides what a
    problem means (the snapshot publishes with ``sessions.status: partial``). Target errors raise.
    ``progress`` is called once per entry with {'action': 'uploaded'|'skipped'|'symlink'|'hardlink'|
    'problem', 'path', 'size'}.
    """
    if compare not in COMPARE_MODES:
        raise ConfigError("compare must be one of %s, got %r" % (", ".join(COMPARE_MODES), compare))
    if block_size < 64 * 1024:
        raise ConfigError("block_size must be at least 64 KiB")
    top = layout.arz_path
    if not os.path.isdir(top):
        raise ApplianceError("session recordings folder %s does not exist" % top)
    run = _Sync(target, appliance, top, compare, block_size, progress)
    completed = False
    try:
        for upload, exists in target.put_files(run.small_uploads()):
            relpath, sha256, info = upload.tag
            if exists is not None:
                run.problem(relpath, "appeared on the target while being uploaded")
            else:
                run.done(relpath, sha256, info, uploaded=True)
        run.stream_large()
        run.link_further_names()
        completed = True
    finally:
        final = run.final_index(completed)
        if final is not None:
            try:
                _write_index(target, appliance, final)
            except Exception:
                if completed:
                    raise
    run.result.referenced.sort(key=lambda item: item["path"])
    run.result.problems.sort()
    return run.result
