# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Config files and the secrets staging folder, collected in a deterministic order."""

from __future__ import annotations

import os
import posixpath
import stat as stat_module
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import COMPONENTS, ApplianceLayout, file_type
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ConfigError


class Problem(NamedTuple):
    """A file that could not be taken as it should: its path and why."""

    path: str
    reason: str

    def __str__(self):
        return "%s: %s" % (self.path, self.reason)


class CollectedFile(NamedTuple):
    """One member to archive: 'files/<path below root>', the local path, and 'file'|'dir'|'symlink'."""

    archive_name: str
    abs_path: str
    kind: str


def problems_message(problems: Sequence[Problem], what: str = "files", limit: int = 10) -> str:
    """One message naming the problem paths (the first ``limit``)."""
    shown = "; ".join(str(p) for p in problems[:limit])
    more = " (and %d more)" % (len(problems) - limit) if len(problems) > limit else ""
    return "%d %s could not be read: %s%s" % (len(problems), what, shown, more)


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _check_readable(path: str) -> Optional[str]:
    """None if ``path`` is a regular file we can open for reading now, else the reason."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "vanished while being collected"
    except OSError as exc:
        return "cannot be read (%s)" % _reason(exc)
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            return "was replaced while being collected"
    finally:
        os.close(fd)
    return None


def _walk_entry(layout: ApplianceLayout, relpath: str, problems: List[Problem],
                seen: set) -> Iterator[CollectedFile]:
    """Pre-order walk of one path (lstat: symlinks are archived as links, never followed)."""
    path = layout.local(relpath)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        problems.append(Problem(path, "vanished while being collected"))
        return
    except OSError as exc:
        problems.append(Problem(path, "cannot be examined (%s)" % _reason(exc)))
        return
    kind = file_type(info.st_mode)
    if kind is None:
        problems.append(Problem(path, "is not a regular file, directory or symlink"))
        return
    name = "files/" + relpath
    if name in seen:
        return
    if kind == "file":
        reason = _check_readable(path)
        if reason:
            problems.append(Problem(path, reason))
            return
    seen.add(name)
    yield CollectedFile(name, path, kind)
    if kind != "dir":
        return
    try:
        children = sorted(os.listdir(path))
    except FileNotFoundError:
        problems.append(Problem(path, "vanished while being collected"))
        return
    except OSError as exc:
        problems.append(Problem(path, "cannot be listed (%s)" % _reason(exc)))
        return
    for child in children:
        yield from _walk_entry(layout, posixpath.join(relpath, child), problems, seen)


def collect_files(layout: ApplianceLayout, components: Iterable[str],
                  problems: Optional[List[Problem]] = None) -> Iterator[CollectedFile]:
    """Config files ('config') and the secrets staging folder ('secrets'), deterministic order.

    Configured paths in their given order, then the secrets folder; directories before their
    content, names sorted. Every top-level path is checked when this is called (before any walk):
    a missing one is an ApplianceError unless optional. Files that are unreadable, vanish or are not
    regular files/dirs/symlinks are appended to ``problems`` (the caller decides); without a
    ``problems`` list they raise one ApplianceError naming them all once the walk ends.
    """
    components = set(components)
    unknown = components - set(COMPONENTS)
    if unknown:
        raise ConfigError("unknown component(s): %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(COMPONENTS)))
    roots: List[str] = []
    if "config" in components:
        for entry in layout.config_paths:
            if os.path.lexists(layout.local(entry.path)):
                roots.append(entry.path)
            elif not entry.optional:
                raise ApplianceError("configured path %s does not exist" % layout.local(entry.path))
    if "secrets" in components:
        if not os.path.isdir(layout.secrets_path):
            raise ApplianceError("secrets staging folder %s does not exist (leave out the 'secrets' "
                                 "component if this appliance exports no secrets)" % layout.secrets_path)
        roots.append(layout.secrets_dir)
    return _collect(layout, roots, problems)


def _collect(layout: ApplianceLayout, roots: List[str], problems: Optional[List[Problem]]) -> Iterator[CollectedFile]:
    collected = [] if problems is None else problems
    seen: set = set()
    for relpath in roots:
        yield from _walk_entry(layout, relpath, collected, seen)
    if problems is None and collected:
        raise ApplianceError(problems_message(collected))
