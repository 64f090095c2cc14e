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
