#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: backup_info
short_description: List the snapshots of Segura appliances on a backup target
version_added: 0.1.0
description:
  - Lists the snapshots on an SMB share, an NFS export or a local directory, for one appliance or for
    every appliance found there, newest first, with their status and metadata.
  - A snapshot is V(complete) when its object and its sidecar both exist and agree on the size,
    V(partial) while an upload has not finished (or was abandoned), V(orphaned) when the sidecar is left
    but the object is gone, and V(damaged) when the sidecar is invalid or disagrees with the object.
    Only M(segura.backup.verify) reads the objects themselves.
  - Reads one listing of each appliance's C(snapshots/) folder and the small sidecar and verification
    files; with O(include_sessions=true) it also walks the session recordings folder to find recordings
    that no complete snapshot references.
  - O(query) applies a JMESPath expression to the result, so a playbook or an AWX survey can ask for
    exactly what it needs (see the examples). Every snapshot carries C(age_seconds) for such questions.
  - A snapshot dated more than O(future_tolerance) ahead of now (an appliance clock that ran ahead, or a snapshot
    planted on the target) is flagged RV(snapshots[].future_dated), named in a warning, and is not an
    appliance's RV(appliances[].latest) or RV(appliances[].latest_complete).
author:
  - segura.backup maintainers (@segura-backup)
extends_documentation_fragment:
  - segura.backup.attributes
  - segura.backup.target
  - segura.backup.future_tolerance
attributes:
  check_mode:
    support: full
    details:
      - The module only reads; it behaves the same in check mode.
  diff_mode:
    support: none
  idempotent:
    support: full
  safe_file_operations:
    support: N/A
    details:
      - The module writes nothing.
options:
  appliance:
    description:
      - Name of the appliance whose snapshots to list (the folder name on the target).
      - Omit it to list every appliance on the target.
    type: str
  include_sessions:
    description:
      - Also list the session recordings and report those that no complete snapshot references
        (they are what M(segura.backup.prune) would remove). Costs one listing per day folder.
    type: bool
    default: false
  include_snapshots:
    description:
      - Return RV(snapshots), the record of every snapshot. V(false) leaves it out of the result (O(query)
        still sees it), for a fleet report or a staleness check that needs RV(appliances) or a query's answer
        only. At 10,000 snapshots the list is about 10 MB, and Ansible's handling of a result that large
        (scrubbing it of passwords, serialising it, passing it to the controller) costs seconds more than
        the listing itself.
    type: bool
    default: true
  use_index:
    description:
      - Read each appliance's catalog index (C(<appliance>/catalog.json), which M(segura.backup.snapshot),
        M(segura.backup.verify) and M(segura.backup.prune) keep up to date) and judge every sidecar and
        verification record it holds an unchanged copy of (same name, size and time as listed) from that
        copy, so one read per appliance instead of one per snapshot. Files that changed or are not in it are read
        from the target; a missing or damaged index is ignored. The result is the same either way.
      - V(false) reads every file, as when the index is missing. RV(appliances[].index) says what was used.
      - The index only speeds up listings. M(segura.backup.verify), M(segura.backup.restore) and
        M(segura.backup.prune) read the real sidecar of every snapshot they act on.
    type: bool
    default: true
  query:
    description:
      - A JMESPath expression applied to the whole result (the keys under RV(snapshots), RV(appliances),
        RV(sessions) and RV(now)); its value is returned as RV(query_result).
      - Mind Ansible's templating when the expression holds C({{).
    type: str
requirements:
  - python >= 3.9
  - jmespath (only for O(query))
seealso:
  - module: segura.backup.verify
  - module: segura.backup.prune
  - module: segura.backup.snapshot
"""

EXAMPLES = r"""
- name: List every snapshot on the share
  segura.backup.backup_info:
    target:
      type: smb
      server: backup.example.com
      share: segura
      username: svc-segura-backup
      password: "{{ vault_smb_password }}"
  register: backups

- name: The latest complete snapshot of each appliance, when it is older than 26 hours
  segura.backup.backup_info:
    target:
      type: nfs
      server: nfs.example.com
      export: /exports/segura
    query: "appliances[?latest_complete.age_seconds > `93600`].latest_complete.{appliance: appliance, id: id, created: created, age_seconds: age_seconds}"
    include_snapshots: false  # only the query's answer and the summaries: fast at thousands of snapshots
  register: stale

- name: Fail when an appliance has no recent complete snapshot
  ansible.builtin.assert:
    that: stale.query_result | length == 0
    fail_msg: "Stale backups: {{ stale.query_result | map(attribute='appliance') | join(', ') }}"

- name: Appliances without any complete snapshot
  segura.backup.backup_info:
    target:
      type: path
      path: /srv/backup_remoto
    query: "appliances[?latest_complete == null].name"
  register: never_backed_up

- name: Session recordings of one appliance that no complete snapshot references
  segura.backup.backup_info:
    target:
      type: path
      path: /srv/backup_remoto
    appliance: segura-primary
    include_sessions: true
  register: info
"""

RETURN = r"""
now:
  description: UTC time of the listing; C(age_seconds) is measured from it.
  returned: always
  type: str
  sample: "2026-11-28T07:00:00Z"
snapshots:
  description: Every snapshot found, newest first.
  returned: unless O(include_snapshots=false)
  type: list
  elements: dict
  contains:
    id:
      description: Short id of the snapshot.
      type: str
      sample: 1a2b3c4d
    appliance:
      description: Appliance the snapshot belongs to.
      type: str
    created:
      description: UTC time the snapshot was taken.
      type: str
      sample: "2026-11-27T05:00:12Z"
    age_seconds:
      description: Whole seconds from RV(snapshots[].created) to RV(now) (negative for a snapshot dated ahead).
      type: int
      sample: 93600
    future_dated:
      description:
        - Whether the snapshot is dated more than O(future_tolerance) ahead of RV(now); such a snapshot is never
          taken as the latest (only by its id) and retention keeps it aside.
      type: bool
      sample: false
    status:
      description: V(complete), V(partial), V(orphaned) or V(damaged) (see the description).
      type: str
    problem:
      description: Why the snapshot is not complete, or null.
      type: str
    object:
      description: File name of the object.
      type: str
    encrypted:
      description: Whether the object is age-encrypted.
      type: bool
    size:
      description: Bytes of the object as listed on the target (null when it is missing).
      type: int
    sha256:
      description: sha256 of the object, from the sidecar.
      type: str
    components:
      description: Components taken (from the sidecar; absent when the sidecar could not be read).
      type: list
      elements: str
    versions:
      description: Appliance and tool versions recorded with the snapshot.
      type: dict
      sample: {"appliance": "3.32.0.12", "tool": "0.1.0"}
    counts:
      description: Counts recorded with the snapshot (files, dirs, symlinks, db_chunks, members).
      type: dict
    db:
      description: Chunks, bytes and sha256 of the database dump, or null.
      type: dict
    sessions:
      description:
        - Count and bytes of the session recordings the snapshot references; since 0.2 also C(status)
          (V(complete), or V(partial) when entries of the recordings tree could not be taken), C(problem_count)
          and C(problems) (the first 100, C(path) and C(reason)).
      type: dict
    encryption:
      description: Encryption mode and recipients (public keys).
      type: dict
    verification:
      description: The last verification stored by M(segura.backup.verify) (mode, ok, problems, recorded), or null.
      type: dict
    stored_bytes:
      description: Bytes of all files of the snapshot on the target (object, sidecar and the rest).
      type: int
    signed:
      description:
        - Whether a signature file (C(<stem>.json.sig)) is beside the sidecar. Whether it is a valid signature by
          the appliance's pinned key is checked by M(segura.backup.verify) and M(segura.backup.restore).
      type: bool
    files:
      description: Target-relative paths of the snapshot's files.
      type: list
      elements: str
appliances:
  description: One summary per appliance.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Appliance name.
      type: str
    snapshots:
      description: Number of snapshots listed.
      type: int
    complete:
      description: Number of complete snapshots (likewise V(partial), V(orphaned), V(damaged)).
      type: int
    stored_bytes:
      description: Bytes of all snapshot files of the appliance.
      type: int
    latest:
      description: The newest snapshot (as in RV(snapshots)) that is not future-dated, whatever its status, or null.
      type: dict
    latest_complete:
      description: The newest complete snapshot (as in RV(snapshots)) that is not future-dated, or null.
      type: dict
    future_dated:
      description: Number of its snapshots dated more than O(future_tolerance) ahead of RV(now).
      type: int
    last_verification:
      description: The most recent verification stored for any of its snapshots, or null.
      type: dict
    index:
      description:
        - How its catalog index was used, with O(use_index=true). C(state) is V(used), V(missing) or
          C(ignored) followed by why; C(from_index) counts the files judged from their copies, C(read) those read from
          the target.
      type: dict
      returned: when O(use_index=true) and the appliance's snapshots folder could be listed
      sample: {"state": "used", "from_index": 498, "read": 2}
sessions:
  description: Per appliance, the session recordings on the target.
  returned: when O(include_sessions=true)
  type: dict
  sample:
    segura-primary:
      files: 840
      bytes: 6754123776
      orphaned: [{"path": "segura-primary/sessions/2026/0101/a.arz", "size": 8042}]
      orphaned_bytes: 8042
      partial_uploads: []
      problem: null
complete:
  description: Whether every folder and sidecar could be read. When false, RV(errors) says what is missing.
  returned: always
  type: bool
errors:
  description: What could not be read.
  returned: always
  type: list
  elements: str
query_result:
  description: The value of O(query) applied to the result.
  returned: when O(query) is given
  type: raw
"""

from datetime import datetime, timezone

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, deps
from ansible_collections.segura.backup.plugins.module_utils._engine.clock_skew import describe_future_dated, parse_future_tolerance
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import list_session_files, referenced_sessions
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import backup_info_spec
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target


def _sessions_report(target, listing, appliance):
    """Recordings of one appliance and those no complete snapshot references."""
    files, partials = list_session_files(target, appliance)
    complete = [r for r in listing.for_appliance(appliance) if r.complete]
    referenced, warnings = referenced_sessions(target, complete)
    report = {"files": len(files), "bytes": sum(f.size for f in files),
              "partial_uploads": [f.path for f in partials], "orphaned": None, "orphaned_bytes": None,
              "problem": warnings[0] if warnings else None}
    if referenced is not None:
        orphaned = [f for f in files if f.path not in referenced]
        report["orphaned"] = [{"path": f.path, "size": f.size} for f in orphaned]
        report["orphaned_bytes"] = sum(f.size for f in orphaned)
    return report


def main():
    module = AnsibleModule(argument_spec=backup_info_spec(), supports_check_mode=True)
    params = module.params
    wanted = deps.for_target(params["target"]["type"]) + (["jmespath"] if params["query"] else [])
    absent = deps.missing(wanted)
    if absent:
        module.fail_json(msg=missing_required_lib(", ".join(absent)))

    now = datetime.now(timezone.utc)
    try:
        with open_target(params["target"]) as target:
            listing = catalog.list_snapshots(target, params["appliance"], use_index=params["use_index"])
            future = listing.flag_future_dated(now, parse_future_tolerance(params["future_tolerance"]))
            result = listing.to_dict(now, snapshots=params["include_snapshots"] or bool(params["query"]))
            result["appliances"] = catalog.appliance_summaries(listing, now)
            for summary in result["appliances"]:
                if summary["name"] in listing.indexes:
                    summary["index"] = listing.indexes[summary["name"]].summary()
            result["now"] = catalog.format_utc(now)
            if params["include_sessions"]:
                result["sessions"] = {}
                for appliance in listing.appliances:
                    report = _sessions_report(target, listing, appliance)
                    result["sessions"][appliance] = report
                    if report["problem"]:
                        module.warn(report["problem"])
    except BackupError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)
    for error in listing.errors:
        module.warn("incomplete listing: %s" % error)
    for record in future:
        module.warn(describe_future_dated(record, now))

    if params["query"]:
        import jmespath

        try:
            result["query_result"] = jmespath.search(params["query"], result)
        except jmespath.exceptions.JMESPathError as exc:
            module.fail_json(msg="query is not a valid JMESPath expression: %s" % exc)
    if not params["include_snapshots"]:
        del result["snapshots"]
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
