# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The catalog of snapshots on a target: names, sidecars, atomic uploads and listing.

Layout (see the format notes)::

    <appliance>/snapshots/<YYYYmmddTHHMMSSZ>-<id>.tar.zst[.age]   the object
    <appliance>/snapshots/<same>.partial                           the object while it is uploaded
    <appliance>/snapshots/<YYYYmmddTHHMMSSZ>-<id>.json.sig         the appliance's signature of the sidecar
    <appliance>/snapshots/<YYYYmmddTHHMMSSZ>-<id>.json             the sidecar, written last
    <appliance>/snapshots/<YYYYmmddTHHMMSSZ>-<id>.sessions.json    session files it references (if any)
    <appliance>/snapshots/<YYYYmmddTHHMMSSZ>-<id>.verify.json      the last verification result
    <appliance>/sessions/YYYY/MMDD/<file>                          session recordings
    <appliance>/lock                                               the appliance lock (locking.py)
    <appliance>/catalog.json                                       copies of the sidecars, for listings (index.py)

A snapshot is complete when its object and its sidecar both exist and agree on the size. Every
write goes to a ``.partial`` name first and is renamed into place, so a crash at any point leaves
nothing that looks complete.

Why ``<stem>.sessions.json`` exists (unencrypted, beside the sidecar): prune must know which session
recordings the kept snapshots reference, but the manifest inside the object is encrypted to keys that
appliances and controllers do not hold. The recording names and sizes are visible on the share
anyway, so the list reveals nothing new. It is written before the sidecar; deep verification checks
that it equals the manifest's session list.

This package: ``names`` (object and file names, folders, times), ``sidecar`` (the sidecar document),
``store`` (atomic uploads and every write), ``listing`` (what exists and how complete it is),
``index`` (the per-appliance cache a listing of many snapshots reads instead of every sidecar). The
names below are the catalog's API; callers use ``catalog.<name>``.
"""

from __future__ import annotations

from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.index import INDEX_NAME, index_path, load_index, refresh_index, update_index  # noqa: F401
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.listing import (  # noqa: F401
    Listing,
    SnapshotRecord,
    appliance_summaries,
    list_appliances,
    list_snapshots,
    load_sidecar,
    records_from_entries,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.names import (  # noqa: F401
    ENCRYPTED_SUFFIX,
    ENCRYPTION_MODES,
    FORMAT,
    OBJECT_SUFFIX,
    PARTIAL_SUFFIX,
    SESSIONS_SUFFIX,
    SIDECAR_SUFFIX,
    SIGNATURE_SUFFIX,
    STATUS_COMPLETE,
    STATUS_DAMAGED,
    STATUS_ORPHANED,
    STATUS_PARTIAL,
    VERIFY_SUFFIX,
    format_utc,
    format_utc_precise,
    lock_path,
    new_snapshot_id,
    object_name,
    object_path,
    parse_object_name,
    parse_utc,
    partial_name,
    sessions_dir,
    sessions_list_name,
    sidecar_name,
    signature_name,
    snapshots_dir,
    validate_appliance,
    verification_name,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.sidecar import Sidecar  # noqa: F401
from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.store import (  # noqa: F401
    AtomicUpload,
    parse_sessions_list,
    publish_sidecar,
    read_sessions_list,
    read_small,
    read_trusted_sidecar,
    record_verification,
    remove_file,
    remove_snapshot,
    session_entries,
    write_sessions_list,
)
