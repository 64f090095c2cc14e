# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The one retry policy for operations on a share.

Why only here: a share can fail one request now and then (nfs-rs reports some NFSv4.1 operations
against nfs-ganesha as "uncertain" and does not repeat them itself). Reads have no side effect and
are simply repeated; a remove is repeated only after looking whether the failed attempt did it.
A missing file (TargetNotFound) is an answer, not a failure, and is never retried.

Layers, so the budget is bounded and visible: a target repeats one protocol request only when its
library says that is safe (targets/nfs.py: at most 8 attempts, about 4.5 s of backoff, never nested);
this policy sits above the targets, so one read costs at most ATTEMPTS x 8 requests.
"""

from __future__ import annotations

from typing import Any, Callable

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import TargetError, TargetNotFound

ATTEMPTS = 3


def retry_read(read: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``read`` (something that only reads) up to ATTEMPTS times on a TargetError."""
    for attempt in range(ATTEMPTS):
        try:
            return read(*args, **kwargs)
        except TargetNotFound:
            raise
        except TargetError:
            if attempt + 1 == ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def remove_checked(remove: Callable[[str], None], exists: Callable[[str], bool], relpath: str) -> bool:
    """Remove one file: True if we removed it, False if it was already gone.

    A failed remove may still have happened ("verify then resume"): look, and try again only while
    the file is still there.
    """
    for attempt in range(ATTEMPTS):
        try:
            remove(relpath)
            return True
        except TargetNotFound:
            return attempt > 0  # gone after an uncertain attempt: that attempt removed it
        except TargetError:
            if attempt + 1 == ATTEMPTS:
                raise
            if not retry_read(exists, relpath):
                return True  # the attempt that looked failed did remove it
    raise AssertionError("unreachable")  # pragma: no cover


class ResumingReader:
    """A target file read once from start to end that survives a failed read.

    On a TargetError it reopens the file and skips to where it was, at most ATTEMPTS - 1 times in all;
    every byte is still checked downstream (sha256 of the object, of each member). Used by both passes of
    a restore: a share that drops one read in the middle of a 2 GB object must not cost the restore,
    least of all after the databases were dropped.
    """

    _SKIP = 1024 * 1024

    def __init__(self, target: Any, relpath: str):
        self._target = target
        self._relpath = relpath
        self._offset = 0
        self._failures = 0
        self._handle: Any = retry_read(target.open_read, relpath)

    def read(self, size: int = -1) -> bytes:
        while True:
            try:
                if self._handle is None:
                    self._reopen()
                data = self._handle.read(size)
            except TargetNotFound:
                raise
            except TargetError:
                self._failures += 1
                if self._failures >= ATTEMPTS:
                    raise
                self._drop_handle()
                continue
            self._offset += len(data)
            return data

    def _drop_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except TargetError:
                pass  # the failed handle; the next one decides

    def _reopen(self) -> None:
        self._handle = self._target.open_read(self._relpath)
        left = self._offset
        while left:
            skipped = self._handle.read(min(left, self._SKIP))
            if not skipped:
                raise TargetError("%s is shorter than before (%d bytes) when opened again after a failed read"
                                  % (self._relpath, self._offset))
            left -= len(skipped)

    def close(self) -> None:
        self._drop_handle()

    def __enter__(self) -> "ResumingReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
