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

import hashlib
import json
import os
import posixpath
import stat as stat_module
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.files import Problem
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import sessions_dir
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ConfigError, TargetError, TargetExists, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target, rename_into_place

BLOCK_SIZE = 4 * 1024 * 1024  # nfs-rs COMMITs every write: write big blocks (LAB.md)
INDEX_NAME = "index.json"
INDEX_FORMAT = "segura.backup/sessions-index/1"
PARTIAL_SUFFIX = ".partial"
COMPARE_MODES = ("size", "sha256")


@dataclass
class SessionSyncResult:
    """What a sync did. ``referenced`` lists every recording now on the target, for the manifest."""

    referenced: List[Dict[str, Any]] = field(default_factory=list)  # {"path", "size", "sha256"}
    uploaded_count: int = 0
    uploaded_bytes: int = 0
    skipped_count: int = 0
    hashed_count: int = 0  # local files read only to compute their sha256
    problems: List[Problem] = field(default_factory=list)


def _local_files(top: str, problems: List[Problem]) -> Iterator[Tuple[str, List[str]]]:
    """(relative dir, sorted file names) per directory below ``top``, in a deterministic order."""
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
        files, subdirs = [], []
        for entry in entries:
            relpath = posixpath.join(reldir, entry.name) if reldir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(relpath)
                elif entry.is_file(follow_symlinks=False):
                    if not reldir and entry.name in (INDEX_NAME, INDEX_NAME + PARTIAL_SUFFIX):
                        problems.append(Problem(entry.path, "name is reserved for the sync index"))
                    else:
                        files.append(entry.name)
                else:
                    problems.append(Problem(entry.path, "is not a regular file"))
            except OSError as exc:
                problems.append(Problem(entry.path, "cannot be examined (%s)" % os.strerror(exc.errno or 0)))
        if files:
            yield reldir, files
        pending.extend(reversed(subdirs))  # pop() then takes them in sorted order


class _Changed(Exception):
    """The local file vanished, changed or failed while being read (a Problem, not a failure)."""


def _same_file(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ino) == (after.st_size, after.st_mtime_ns, after.st_ino)


def _open_local(path: str):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Changed("vanished before it could be read") from None
    except OSError as exc:
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


def _hash_remote(target: Target, relpath: str, block_size: int) -> str:
    digest = hashlib.sha256()
    with target.open_read(relpath) as handle:
        while True:
            block = handle.read(block_size)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def load_index(target: Target, appliance: str) -> Dict[str, Dict[str, object]]:
    """The sync index ({relpath: {size, mtime_ns, sha256}}); empty when missing or unreadable."""
    try:
        data = json.loads(target.read_bytes(sessions_dir(appliance) + "/" + INDEX_NAME).decode("utf-8"))
    except TargetNotFound:
        return {}
    except (ValueError, UnicodeDecodeError):
        return {}  # a damaged cache costs re-hashing, nothing else
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("files"), dict):
        return {}
    files = {}
    for relpath, entry in data["files"].items():
        if (isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("mtime_ns"), int)
                and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):
            files[relpath] = {"size": entry["size"], "mtime_ns": entry["mtime_ns"], "sha256": entry["sha256"]}
    return files


def _write_index(target: Target, appliance: str, files: Dict[str, Dict[str, object]]) -> None:
    """Atomically: write ``index.json.partial``, then rename over ``index.json``."""
    path = sessions_dir(appliance) + "/" + INDEX_NAME
    body = json.dumps({"format": INDEX_FORMAT, "files": files}, sort_keys=True, indent=0).encode("utf-8")
    target.write_bytes(path + PARTIAL_SUFFIX, body)
    target.rename(path + PARTIAL_SUFFIX, path, replace=True)


def _upload(target: Target, local: str, remote: str, replace: bool, block_size: int) -> Tuple[str, os.stat_result]:
    """Stream one file to ``remote`` through ``remote.partial``; returns (sha256, local stat)."""
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
    except Exception:  # best effort: prune removes stale partial uploads later
        pass


def sync_sessions(target: Target, appliance: str, layout: ApplianceLayout,
                  progress: Optional[Callable[[Dict[str, object]], None]] = None,
                  compare: str = "size", block_size: int = BLOCK_SIZE) -> SessionSyncResult:
    """Upload new (or changed) recordings and reference every one of them.

    One listing per target directory; a file is uploaded only when absent there or different
    (see the module docstring). Files that vanish or change while read land in ``problems`` with
    their path; the caller (the snapshot) decides whether that fails the run. Target errors raise.
    ``progress`` is called once per file with {'action': 'uploaded'|'skipped'|'problem', 'path', 'size'}.
    """
    if compare not in COMPARE_MODES:
        raise ConfigError("compare must be one of %s, got %r" % (", ".join(COMPARE_MODES), compare))
    if block_size < 64 * 1024:
        raise ConfigError("block_size must be at least 64 KiB")
    top = layout.arz_path
    if not os.path.isdir(top):
        raise ApplianceError("session recordings folder %s does not exist" % top)
    remote_top = sessions_dir(appliance)
    old_index = load_index(target, appliance)
    new_index: Dict[str, Dict[str, object]] = {}
    result = SessionSyncResult()

    def report(action: str, relpath: str, size: int) -> None:
        if progress is not None:
            progress({"action": action, "path": relpath, "size": size})

    completed = False
    try:
        for reldir, names in _local_files(top, result.problems):
            remote_dir = posixpath.join(remote_top, reldir) if reldir else remote_top
            try:
                remote_files = {e.name: e for e in target.listdir(remote_dir) if not e.is_dir}
            except TargetNotFound:
                remote_files = {}
            for name in names:
                relpath = posixpath.join(reldir, name) if reldir else name
                local = os.path.join(top, relpath)
                remote = remote_dir + "/" + name
                try:
                    sha256, info, uploaded = _sync_one(target, local, remote, remote_files.get(name),
                                                       old_index.get(relpath), compare, block_size, result)
                except _Changed as exc:
                    result.problems.append(Problem(local, str(exc)))
                    report("problem", relpath, 0)
                    continue
                new_index[relpath] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256}
                result.referenced.append({"path": remote, "size": info.st_size, "sha256": sha256})
                if uploaded:
                    result.uploaded_count += 1
                    result.uploaded_bytes += info.st_size
                else:
                    result.skipped_count += 1
                report("uploaded" if uploaded else "skipped", relpath, info.st_size)
        completed = True
    finally:
        # After a failure keep what the old index knew too: entries not reached are still valid.
        final = new_index if completed else dict(old_index, **new_index)
        if final != old_index:
            try:
                _write_index(target, appliance, final)
            except Exception:
                if completed:
                    raise
    return result


def _sync_one(target: Target, local: str, remote: str, remote_entry, indexed: Optional[Dict[str, object]],
              compare: str, block_size: int, result: SessionSyncResult):
    """(sha256, local stat, uploaded?) for one file; raises _Changed for a per-file problem."""
    if remote_entry is None:
        sha256, info = _upload(target, local, remote, replace=False, block_size=block_size)
        return sha256, info, True
    # sha256 of the copy on the target, as far as the index knows it
    remote_sha = indexed["sha256"] if indexed and indexed["size"] == remote_entry.size else None
    try:
        info = os.lstat(local)
    except FileNotFoundError:
        raise _Changed("vanished before it could be read") from None
    if compare == "size":
        if info.st_size != remote_entry.size:
            sha256, info = _upload(target, local, remote, replace=True, block_size=block_size)
            return sha256, info, True
        if remote_sha and indexed is not None and indexed["mtime_ns"] == info.st_mtime_ns:
            return remote_sha, info, False  # unchanged since we uploaded it: no read at all
        local_sha, info = _hash_local(local, block_size)
        result.hashed_count += 1
        if remote_sha is None or remote_sha == local_sha:
            return local_sha, info, False  # same size, recordings are immutable: same file
    else:
        local_sha, info = _hash_local(local, block_size)
        result.hashed_count += 1
        if info.st_size == remote_entry.size:
            if remote_sha is None:
                remote_sha = _hash_remote(target, remote, block_size)
            if remote_sha == local_sha:
                return local_sha, info, False
    sha256, info = _upload(target, local, remote, replace=True, block_size=block_size)
    return sha256, info, True
