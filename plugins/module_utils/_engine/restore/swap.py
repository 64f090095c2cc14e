# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Putting a prepared datadir in place of the live one, and putting the old one back.

By rename when the filesystem allows it: two renames, instant, nothing copied. A datadir that is a
mount point (its own LVM volume) or a directory of a container image's lower layer (overlayfs without
redirect_dir) cannot be renamed (EBUSY, EXDEV): then the datadir folder stays where it is and its
entries move - each by rename where it can, else copied with ``cp -a`` (owner, mode, times, xattrs)
and removed. Every entry moved is remembered, so a rollback moves exactly those back.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from typing import List

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError

#: rename(2) errors that mean "not this way" rather than "something is wrong": try moving the entries.
_CANNOT_RENAME = (errno.EXDEV, errno.EBUSY, errno.EPERM)
_COPY_SECONDS = 6 * 3600


class DatadirSwap:
    """``swap_in()`` puts ``staging`` at ``datadir`` and keeps the old one at ``previous``;
    ``roll_back(failed)`` puts the old one back and keeps the restored one at ``failed``."""

    def __init__(self, datadir: str, staging: str, previous: str):
        self.datadir = datadir
        self.staging = staging
        self.previous = previous
        self.mode = ""  # "rename" or "entries", once swap_in() began
        self._old: List[str] = []  # entries moved from datadir to previous
        self._before: List[str] = []  # the datadir's entries when the entries swap began

    def swap_in(self) -> None:
        try:
            os.rename(self.datadir, self.previous)
        except OSError as exc:
            if exc.errno not in _CANNOT_RENAME:
                raise
            self._swap_entries()
            return
        self.mode = "rename"
        os.rename(self.staging, self.datadir)
        _fsync_dir(os.path.dirname(self.datadir))

    def _swap_entries(self) -> None:
        self.mode = "entries"
        self._before = sorted(os.listdir(self.datadir))
        info = os.stat(self.datadir)
        os.mkdir(self.previous, 0o700)
        os.chown(self.previous, info.st_uid, info.st_gid)
        os.chmod(self.previous, info.st_mode & 0o7777)
        for name in sorted(os.listdir(self.datadir)):
            _move(os.path.join(self.datadir, name), os.path.join(self.previous, name))
            self._old.append(name)
        for name in sorted(os.listdir(self.staging)):
            _move(os.path.join(self.staging, name), os.path.join(self.datadir, name))
        os.rmdir(self.staging)
        _fsync_dir(self.datadir)

    def roll_back(self, failed: str) -> None:
        """Undo what ``swap_in`` did, however far it got."""
        if not self.mode:
            return  # the first rename failed: nothing moved
        if self.mode == "rename":
            if os.path.lexists(self.datadir):
                os.rename(self.datadir, failed)
            elif os.path.isdir(self.staging):
                os.rename(self.staging, failed)  # the second rename failed: keep the copy where the message says
            os.rename(self.previous, self.datadir)
            _fsync_dir(os.path.dirname(self.datadir))
            return
        os.mkdir(failed, 0o700)
        # Everything in the datadir now is the restored server's (its copy and what it created since),
        # except old entries that had not been moved yet when the swap stopped.
        unmoved = set(self._before) - set(self._old)
        for name in sorted(os.listdir(self.datadir)):
            if name not in unmoved:
                _move(os.path.join(self.datadir, name), os.path.join(failed, name))
        for name in reversed(self._old):
            _move(os.path.join(self.previous, name), os.path.join(self.datadir, name))
        os.rmdir(self.previous)
        if os.path.isdir(self.staging):
            os.rename(self.staging, os.path.join(failed, ".staging-left"))
        _fsync_dir(self.datadir)


def _move(source: str, destination: str) -> None:
    """One entry, by rename, else by ``cp -a`` and removal (the source stays until the copy is whole)."""
    try:
        os.rename(source, destination)
        return
    except OSError as exc:
        if exc.errno not in _CANNOT_RENAME:
            raise
    try:
        result = subprocess.run(["cp", "-a", "--", source, destination], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=_COPY_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ApplianceError("could not copy %s to %s: %s" % (source, destination, exc)) from None
    if result.returncode != 0:
        if os.path.isdir(destination) and not os.path.islink(destination):
            shutil.rmtree(destination, ignore_errors=True)  # a partial copy; the source is whole
        elif os.path.lexists(destination):
            os.unlink(destination)
        raise ApplianceError("could not copy %s to %s: %s"
                             % (source, destination, result.stderr.decode("utf-8", "replace").strip()[-500:]))
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.rmtree(source)
    else:
        os.unlink(source)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
