#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: prune
short_description: Thin out old snapshots of Segura appliances on a backup target by a retention policy
version_added: 0.1.0
description:
  - Applies a retention policy to the snapshots of each appliance on an SMB share, an NFS export or a
    local directory, with the semantics of restic's C(forget) - for each rule, the newest snapshot of each
    of the N most recent hours, days, ISO weeks, months or years that hold one is kept; O(keep_last) keeps
    the N newest; O(keep_within) keeps everything taken within that time of the newest complete snapshot.
    A snapshot is kept when any rule keeps it, and the result says which rules did.
  - The newest complete snapshot of each appliance is always kept. Only complete snapshots count toward
    the rules. Orphaned and damaged snapshots are left for a person to look at; partial uploads are removed
    once their last write is older than O(partial_grace).
  - Session recordings that no surviving snapshot references are removed too (O(prune_sessions)). Their
    references come from each snapshot's unencrypted C(<stem>.sessions.json); if a kept snapshot that took
    sessions lacks it (or it cannot be read), no recording is removed and a warning says why.
  - Each appliance is pruned under its lock on the target, so a snapshot run never interleaves with it.
    An appliance whose lock is held, or whose listing is incomplete, is not touched, and the task fails
    after the other appliances were pruned.
  - Deciding needs only the listing of each C(snapshots/) folder. Only the sidecars of the snapshots being
    kept are read and checked against their objects (a kept one that turns out damaged is replaced by
    the next one the policy picks); a snapshot the policy drops is removed without reading its sidecar.
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
      - In check mode the plan is made exactly as for a real run (without taking the lock) and nothing is removed.
  diff_mode:
    support: full
    details:
      - The diff shows, per appliance, the snapshot ids before and after.
  idempotent:
    support: partial
    details:
      - A second run with the same policy removes nothing more, unless time has passed and moved snapshots
        out of their buckets or partial uploads past O(partial_grace).
  safe_file_operations:
    support: full
    details:
      - A snapshot's sidecar is removed first, so a snapshot stops being complete before its object goes;
        recordings are removed only after the snapshots.
options:
  appliance:
    description:
      - Name of the appliance to prune. Omit it to prune every appliance on the target.
    type: str
  keep_last:
    description:
      - Keep the N newest complete snapshots. V(-1) keeps all.
    type: int
  keep_hourly:
    description:
      - Keep the newest snapshot of each of the N most recent hours that hold one. V(-1) for every hour.
    type: int
  keep_daily:
    description:
      - Keep the newest snapshot of each of the N most recent days that hold one. V(-1) for every day.
    type: int
  keep_weekly:
    description:
      - Keep the newest snapshot of each of the N most recent ISO weeks that hold one. V(-1) for every week.
    type: int
  keep_monthly:
    description:
      - Keep the newest snapshot of each of the N most recent months that hold one. V(-1) for every month.
    type: int
  keep_yearly:
    description:
      - Keep the newest snapshot of each of the N most recent years that hold one. V(-1) for every year.
    type: int
  keep_within:
    description:
      - Keep every snapshot taken within this time of the newest complete snapshot, as V(36h), V(7d), V(2w),
        V(6m) (a month counts as 31 days) or V(1y) (366 days), or a combination such as V(1y6m).
    type: str
  timezone:
    description:
      - Time zone (IANA name) in which hours, days, weeks, months and years begin.
    type: str
    default: UTC
  partial_grace:
    description:
      - Remove a partial upload (a snapshot without sidecar, or a recording's C(.partial) file) only when it
        was last written longer ago than this, in the same notation as O(keep_within).
    type: str
    default: 24h
  prune_sessions:
    description:
      - Remove session recordings that no surviving snapshot references.
    type: bool
    default: true
  lock_ttl:
    description:
      - Seconds after which the lock taken for each appliance counts as stale if this run stops refreshing it.
    type: int
    default: 900
requirements:
  - python >= 3.9
notes:
  - At least one O(keep_last), O(keep_hourly), O(keep_daily), O(keep_weekly), O(keep_monthly),
    O(keep_yearly) or O(keep_within) must be given; a policy that keeps nothing is refused.
seealso:
  - module: segura.backup.backup_info
  - module: segura.backup.snapshot
  - name: restic - removing snapshots according to a policy
    description: The semantics this module follows.
    link: https://restic.readthedocs.io/en/stable/060_forget.html
"""

EXAMPLES = r"""
- name: Keep 7 daily, 4 weekly and 12 monthly snapshots of every appliance
  segura.backup.prune:
    target:
      type: smb
      server: backup.example.com
      share: segura
      username: svc-segura-backup
      password: "{{ vault_smb_password }}"
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 12
  register: pruned

- name: Show what a policy would remove, and why each survivor stays
  segura.backup.prune:
    target:
      type: path
      path: /srv/backup_remoto
    appliance: segura-primary
    keep_within: 14d
    keep_monthly: 6
    timezone: America/Sao_Paulo
  check_mode: true
  diff: true
  register: plan
"""

RETURN = r"""
appliances:
  description: One result per appliance. In check mode the lists say what would be removed.
  returned: always
  type: list
  elements: dict
  contains:
    appliance:
      description: Appliance name.
      type: str
    kept:
      description: The surviving snapshots with the rules that keep them.
      type: list
      elements: dict
      sample:
        - {"id": "1a2b3c4d", "created": "2026-11-27T05:00:12Z", "status": "complete",
           "reasons": ["newest complete", "daily snapshot", "weekly snapshot"], "problem": null}
        - {"id": "77aa0b1c", "created": "2026-11-20T05:00:09Z", "status": "damaged",
           "reasons": ["incomplete: not subject to retention"], "problem": "object ... is 10 bytes on the target, the sidecar says 12"}
    removed:
      description: Snapshots the policy removes (id, created, status, bytes, files).
      type: list
      elements: dict
    partials_removed:
      description: Partial uploads older than O(partial_grace) (id, created, status, bytes, files).
      type: list
      elements: dict
    sessions_removed:
      description: Target-relative paths of the session recordings (and stale partial recordings) removed.
      type: list
      elements: str
    sessions_bytes_freed:
      description: Bytes of those recordings.
      type: int
    bytes_freed:
      description: Bytes freed (in check mode, that would be freed), snapshots and recordings together.
      type: int
    before:
      description: Snapshot ids before, newest first.
      type: list
      elements: str
    after:
      description: Snapshot ids after, newest first.
      type: list
      elements: str
    warnings:
      description: Why recordings were not pruned, if they were not.
      type: list
      elements: str
    sidecars_read:
      description: Sidecars read to check the kept snapshots.
      type: int
    files_removed:
      description: Files actually removed (0 in check mode).
      type: int
    error:
      description: Why this appliance was not pruned (lock held, incomplete listing), or null.
      type: str
    lock_takeover:
      description:
        - Whose stale lock this run took over (its run, host, pid and start, and why it was stale), or null.
        - A lock taken on this host by a process that no longer exists is taken over at once; any other
          lock only once it expired.
      type: str
    leftovers_removed:
      description:
        - Target-relative paths of the partial objects and half-written recordings of the run whose lock was
          taken over because its process is gone, removed at once whatever their age (empty otherwise).
      type: list
      elements: str
bytes_freed:
  description: Bytes freed over all appliances (in check mode, that would be freed).
  returned: always
  type: int
removed_count:
  description: Snapshots and partial uploads removed (in check mode, that would be removed).
  returned: always
  type: int
policy:
  description: The policy in words.
  returned: always
  type: str
  sample: keep 7 daily, 4 weekly, 12 monthly
"""

from datetime import datetime, timedelta, timezone

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.segura.backup.plugins.module_utils._engine import deps, retention
from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import stop_cleanly_on_signals
from ansible_collections.segura.backup.plugins.module_utils._engine.clock_skew import parse_future_tolerance
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError, ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import prune
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import prune_spec
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target


def main():
    module = AnsibleModule(argument_spec=prune_spec(), supports_check_mode=True)
    params = module.params
    absent = deps.missing(deps.for_target(params["target"]["type"]))
    if absent:
        module.fail_json(msg=missing_required_lib(", ".join(absent)))

    try:
        policy = retention.Policy.from_options(params)
        zone = retention.time_zone(params["timezone"])
        grace = retention.parse_duration(params["partial_grace"], "partial_grace")
        if params["lock_ttl"] < 1:
            raise ConfigError("lock_ttl must be at least 1 second")
        with stop_cleanly_on_signals("what was removed is reported; nothing that stays was touched"):
            with open_target(params["target"]) as target:
                outcomes = prune(target, policy, appliance=params["appliance"], now=datetime.now(timezone.utc),
                                 partial_grace=grace, tz=zone, prune_sessions=params["prune_sessions"],
                                 dry_run=module.check_mode, lock_ttl=timedelta(seconds=params["lock_ttl"]),
                                 future_tolerance=parse_future_tolerance(params["future_tolerance"]))
    except BackupError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)

    appliances = [outcome.to_dict() for outcome in outcomes]
    for result in appliances:
        for warning in result["warnings"]:
            module.warn(warning)
    removed_count = sum(len(a["removed"]) + len(a["partials_removed"]) for a in appliances)
    would_change = any(a["removed"] or a["partials_removed"] or a["sessions_removed"] for a in appliances)
    result = dict(
        changed=(would_change if module.check_mode
                 else any(a["files_removed"] or a["leftovers_removed"] for a in appliances)),
        appliances=appliances,
        bytes_freed=sum(a["bytes_freed"] for a in appliances),
        removed_count=removed_count,
        policy=policy.describe(),
    )
    if module._diff:
        result["diff"] = {"before": {a["appliance"]: a["before"] for a in appliances},
                          "after": {a["appliance"]: a["after"] for a in appliances}}
    errors = [a["error"] for a in appliances if a["error"]]
    if errors:
        module.fail_json(msg="; ".join(errors), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
