# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The catalog index: ``<appliance>/catalog.json``, copies of the small files a listing reads.

A listing that reads every sidecar costs one round trip per snapshot (27 s for 10,000 snapshots on
an SMB share). The index holds, per file name, the size and modification time the directory listing
showed when the file was read, and the file's exact text. A listing that finds a sidecar (or
verification record) with the same name, size and time as its copy uses the copy's bytes and judges
them exactly as it would judge the file; any other file is read from the share.

The sidecars stay the truth:
- the index is a cache: missing, unreadable, damaged, for another appliance or larger than
  INDEX_LIMIT, it is ignored and the files are read (``state`` says which);
- it is only used to list (backup_info and the fleet report). Prune, verify and restore read the
  real sidecar of every snapshot they act on, and restore and verify check its signature;
- whoever can write the index can write the sidecars too: it trusts nothing they do not.

Written by the runs that change the folder (snapshot, verify, prune), after they changed it, and
only when it differs; a failure to write it is a warning, never a failed run. It is read only up to
what copies of the listed files can weigh, and its numbers are kept small.

Known limits (a cache's): a file rewritten with the same size within its timestamp's resolution
(2 s on FAT; SMB, NFS and local Linux filesystems keep 100 ns or better) keeps its old copy until it
changes again; two runs refreshing at once may leave the older picture until the next refresh.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import Cancelled
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.names import SIDECAR_LIMIT, validate_appliance
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.store import read_small, write_replacing
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import IntegrityError, TargetError, TargetNotFound
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target

INDEX_NAME = "catalog.json"
INDEX_FORMAT = "segura.backup/index/1"
INDEX_LIMIT = 256 * 1024 * 1024  # ~2 KiB a snapshot: room for 100,000 and more
# What an index of the listed files can weigh: JSON escapes a text to at most 6 bytes a byte (\uXXXX),
# plus the name, size and time of each entry. A larger one was not written by us: it is not read.
_ESCAPED = 6
_PER_ENTRY = 512
_OVERHEAD = 4096


def index_path(appliance: str) -> str:
    return "%s/%s" % (validate_appliance(appliance), INDEX_NAME)


class IndexCopies:
    """The copies one appliance's index holds, looked up by a directory entry (name, size, mtime)."""

    def __init__(self, files: Dict[str, List[Any]], state: str):
        self.files = files
        self.state = state  # 'used', 'missing', or why it was ignored
        self.used = 0  # files judged from a copy
        self.read = 0  # files read from the share (no copy, or the file changed)

    def bytes_for(self, entry: Any) -> Optional[bytes]:
        """The copy of this file if it has the listed size and time, else None (the caller reads it)."""
        copy = self.files.get(entry.name)
        if copy is None or copy[0] != entry.size or copy[1] != entry.mtime or entry.size > SIDECAR_LIMIT:
            return None  # a file over the limit is read, and judged damaged, as without the index
        data = copy[2]
        if len(data) != entry.size:  # a copy that cannot be the file's bytes
            return None
        self.used += 1
        return data

    def summary(self) -> Dict[str, Any]:
        return {"state": self.state, "from_index": self.used, "read": self.read}


def load_index(target: Target, appliance: str, entries: List[Any]) -> IndexCopies:
    """The appliance's index, or an empty one that says why (never raises: the index is only a cache).

    ``entries``: the snapshots folder's listing. The index is read only up to what copies of those
    files can weigh, so a planted one cannot make the run hold gigabytes.
    """
    relpath = index_path(appliance)
    budget = _OVERHEAD + sum(_PER_ENTRY + _ESCAPED * entry.size for entry in entries if entry.name.endswith(".json"))
    try:
        data = read_small(target, relpath, limit=min(INDEX_LIMIT, budget))
    except TargetNotFound:
        return IndexCopies({}, "missing")
    except (TargetError, IntegrityError) as exc:
        return IndexCopies({}, "ignored: cannot be read (%s)" % exc)
    try:
        files = _parse(data, appliance)
    except ValueError as exc:
        return IndexCopies({}, "ignored: damaged (%s)" % exc)
    return IndexCopies(files, "used")


def _parse(data: bytes, appliance: str) -> Dict[str, List[Any]]:
    try:
        doc = json.loads(data.decode("utf-8"), parse_int=_small_int)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError("not UTF-8 JSON: %s" % exc) from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise ValueError("not a %s document" % INDEX_FORMAT)
    if doc.get("appliance") != appliance:
        raise ValueError("it is the index of %r" % (doc.get("appliance"),))
    files = doc.get("files")
    if not isinstance(files, dict):
        raise ValueError("'files' is not an object")
    for name, copy in files.items():
        if not (isinstance(copy, list) and len(copy) == 3 and _number(copy[0], int)
                and _number(copy[1], (int, float)) and isinstance(copy[2], str)):
            raise ValueError("the entry for %r is not [size, mtime, text]" % (name,))
        try:
            copy[2] = copy[2].encode("utf-8")  # bytes from here on; a lone surrogate cannot be a file's text
        except UnicodeEncodeError:
            raise ValueError("the text for %r is not UTF-8" % (name,)) from None
    return files


def _small_int(text: str) -> int:
    # json would turn a 100,000-digit literal into an int in quadratic time on Pythons without a digit limit
    if len(text) > 20:
        raise ValueError("a number of %d digits" % len(text))
    return int(text)


def _number(value: Any, kinds: Any) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


def index_document(appliance: str, copies: Dict[str, Tuple[Any, bytes]]) -> bytes:
    """The index for ``copies`` (name -> (directory entry, bytes read)); files that are not UTF-8 are left out."""
    files = {}
    for name, (entry, data) in sorted(copies.items()):
        try:
            files[name] = [entry.size, entry.mtime, data.decode("utf-8")]
        except UnicodeDecodeError:
            continue  # judged from the share every time
    return (json.dumps({"format": INDEX_FORMAT, "appliance": appliance, "files": files},
                       separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")


def refresh_index(target: Target, appliance: str) -> Dict[str, Any]:
    """Bring the appliance's index up to date with its folder; writes it only when it differs.

    Returns {"written": bool, "files": n, "read": m} or, when it could not be refreshed,
    {"written": False, "error": why} (the caller reports it as a warning).
    """
    from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.listing import list_snapshots  # it imports this module

    try:
        listing = list_snapshots(target, appliance, read_sidecars=True, use_index=True)
        index = listing.indexes.get(appliance)
        if index is None:  # the snapshots folder could not be listed (or is gone): nothing to index
            return {"written": False, "error": "; ".join(listing.errors)} if listing.errors else {"written": False}
        copies: Dict[str, Tuple[Any, bytes]] = {}
        for record in listing.snapshots:  # a sidecar that could not be read is left out, and read next time
            copies.update(record._copies)
        document = index_document(appliance, copies)
        summary = {"files": len(copies), "read": index.read}
        if len(document) > INDEX_LIMIT:
            return dict(summary, written=False, error="it would be %d bytes, over its limit of %d" % (len(document), INDEX_LIMIT))
        if index.state == "used" and _same(index.files, document):
            return dict(summary, written=False)
        write_replacing(target, index_path(appliance), document)
        return dict(summary, written=True)
    except Cancelled as stop:
        # The run's work is published by now; a stop asked for while its cache is refreshed ends the refresh,
        # not the run (which reports what it did). The partial is overwritten by the next refresh.
        return {"written": False, "error": "stopped (%s) while it was updated" % stop}
    except Exception as exc:  # noqa: BLE001 - a cache must never fail the run that published the truth
        return {"written": False, "error": "%s: %s" % (type(exc).__name__, exc)}


def update_index(target: Target, appliance: str) -> Optional[str]:
    """``refresh_index`` for the runs that changed the folder: None, or the warning they report."""
    error = refresh_index(target, appliance).get("error")
    if not error:
        return None
    return "the catalog index of %s was not updated (%s); listings read the sidecars instead" % (appliance, error)


def _same(files: Dict[str, List[Any]], document: bytes) -> bool:
    fresh = json.loads(document.decode("utf-8"))["files"]
    return fresh.keys() == files.keys() and all(
        [size, mtime, text.encode("utf-8")] == files[name] for name, (size, mtime, text) in fresh.items())
