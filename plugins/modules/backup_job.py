#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: backup_job
short_description: One whole backup run of a Segura appliance - snapshot, verify, prune - as the timer runs it
version_added: 0.1.0
description:
  - Runs the same job as the scheduled timer of the P(segura.backup.schedule#role) role, in one task, so a
    playbook run and a timer run cannot behave differently. The P(segura.backup.backup#role) role calls it.
  - "The steps: the cluster role check (only the primary is backed up, O(primary_only)), a snapshot as
    M(segura.backup.snapshot) takes it, a verification of the new snapshot as M(segura.backup.verify) does
    it (O(verify.mode)), and the retention policy O(prune) applied to this appliance as M(segura.backup.prune)
    does it."
  - Every setting of every step is checked before the snapshot starts; a mistake in the retention policy is
    not found only after a full snapshot was taken.
  - A verification or prune failure fails the task after the snapshot was published; the result still says
    which snapshot was taken.
author:
  - segura.backup maintainers (@segura-backup)
extends_documentation_fragment:
  - segura.backup.attributes
  - segura.backup.target
  - segura.backup.encryption
  - segura.backup.appliance
  - segura.backup.snapshot_options
attributes:
  check_mode:
    support: full
    details:
      - In check mode the job checks its settings, the cluster role and runs the snapshot's preflight; it takes,
        verifies and prunes nothing.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Every run takes a new snapshot.
  safe_file_operations:
    support: full
options:
  verify:
    description:
      - How the new snapshot is verified; V(none) skips it.
    type: dict
    default: {}
    suboptions:
      mode:
        description:
          - V(quick) compares the stored object with its sidecar; V(deep) decrypts and checks every member.
          - V(deep) runs where this module runs (the appliance) and needs the private age identity there. The
            P(segura.backup.backup#role) role keeps the key on the controller instead - V(quick) here, then
            M(segura.backup.verify) with O(segura.backup.verify#module:mode=deep) delegated to localhost, then the
            prune - and runs a deep verify here only for a V(path) target with C(backup_verify_on_appliance).
        type: str
        choices: [quick, deep, none]
        default: quick
      check_session_hashes:
        description:
          - With O(verify.mode=deep), also hash every referenced session recording.
        type: bool
        default: false
      decryption:
        description:
          - How to open the snapshot for O(verify.mode=deep), as the O(segura.backup.verify#module:decryption) option.
        type: dict
        suboptions:
          identities:
            description:
              - age X25519 identities. Never logged.
            type: list
            elements: str
          identity_file:
            description:
              - A key file on the managed host.
            type: path
          passphrase:
            description:
              - The passphrase of a passphrase-encrypted snapshot. Never logged.
            type: str
          max_scrypt_work_factor:
            description:
              - The most scrypt work (log2 of N) the snapshot may ask for, as in M(segura.backup.verify).
            type: int
            default: 22
  prune:
    description:
      - The retention policy applied to this appliance after the snapshot, as the options of M(segura.backup.prune).
        Not given, nothing is pruned.
    type: dict
    suboptions:
      keep_last:
        description: Keep the newest N complete snapshots.
        type: int
      keep_hourly:
        description: Keep the newest snapshot of each of the last N hours.
        type: int
      keep_daily:
        description: Keep the newest snapshot of each of the last N days.
        type: int
      keep_weekly:
        description: Keep the newest snapshot of each of the last N weeks.
        type: int
      keep_monthly:
        description: Keep the newest snapshot of each of the last N months.
        type: int
      keep_yearly:
        description: Keep the newest snapshot of each of the last N years.
        type: int
      keep_within:
        description: Keep everything within this duration (for example V(7d)) of the newest complete snapshot.
        type: str
      timezone:
        description: IANA time zone the hourly to yearly buckets are counted in.
        type: str
        default: UTC
      partial_grace:
        description: Age after which an unfinished upload counts as abandoned and is removed.
        type: str
        default: 24h
      prune_sessions:
        description: Also remove session recordings no remaining complete snapshot references.
        type: bool
        default: true
      future_tolerance:
        description:
          - A snapshot dated more than this ahead of now (a clock that ran ahead, or a snapshot planted on the
            target) is kept aside - never removed, never the newest, counted by no rule - as
            O(segura.backup.prune#module:future_tolerance) does. A duration as V(1h) or whole seconds.
        type: str
        default: 1h
  primary_only:
    description:
      - Back up only the primary node of a cluster; other nodes report RV(job.status=skipped).
    type: bool
    default: true
  when_role_unknown:
    description:
      - What to do when the cluster role cannot be told (no health answer) - V(backup), V(skip) or V(fail).
    type: str
    choices: [backup, skip, fail]
    default: backup
requirements:
  - python >= 3.9
  - zstandard
  - cryptography
  - smbprotocol (for SMB targets)
  - nfs-rs (for NFS targets)
  - the MariaDB client tools on the appliance - mariadb-backup of the server's version for the physical method
    (chosen when it can run here - same version, server on this host), else mariadb-dump (logical)
seealso:
  - module: segura.backup.snapshot
  - module: segura.backup.verify
  - module: segura.backup.prune
"""

EXAMPLES = r"""
- name: Back up, verify quick and keep a week of dailies and a month of weeklies
  segura.backup.backup_job:
    target:
      type: smb
      server: backup.example.com
      share: segura
      username: svc-segura-backup
      password: "{{ vault_smb_password }}"
    encryption:
      recipients: ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
    verify:
      mode: quick
    prune:
      keep_daily: 7
      keep_weekly: 4
  register: run

# A deep verify decrypts: the backup role runs it on the controller, where the private key is, before
# its prune (a separate segura.backup.prune task), so a bad new snapshot never costs an old one.
- name: Deep-verify the new snapshot on the controller
  segura.backup.verify:
    target:
      type: smb
      server: backup.example.com
      share: segura
      username: svc-segura-backup
      password: "{{ vault_smb_password }}"
    appliance: "{{ run.job.appliance }}"
    select: ids
    ids: ["{{ run.job.snapshot.id }}"]
    mode: deep
    decryption:
      identity_file: /etc/segura-backup/age-key.txt
  delegate_to: localhost
  when: run.job.status == 'ok'
"""

RETURN = r"""
job:
  description:
    - What the run did.
    - Also in the failed result when the snapshot was taken but its verification or the prune failed
      (then RV(job.status) is V(failed)).
  returned: always
  type: dict
  contains:
    status:
      description:
        - V(ok) (snapshot taken), V(skipped) (not the primary), V(checked) (check mode) or V(failed).
        - A snapshot published with warnings (e.g. C(job.snapshot.sessions.status=partial)) is V(ok) with
          C(job.snapshot.warnings); the scheduled job exits 1 for it.
      type: str
    appliance_version:
      description: Segura version of the appliance (V(unknown) when it cannot be read).
      type: str
    appliance:
      description: Name the snapshots are filed under.
      type: str
    cluster:
      description: The cluster role as the job saw it (role, is_primary, source).
      type: dict
    reason:
      description: Why the node was skipped.
      type: str
      returned: when skipped
    snapshot:
      description:
        - id, created, object, location, size, sha256, duration, throughput_mb_s, components, counts, database
          (method, versions, position, losses), sessions (status, problems) and warnings, as
          M(segura.backup.snapshot) returns them.
      type: dict
      returned: when a snapshot was taken
    verify:
      description: mode, ok and message of the verification.
      type: dict
      returned: when verified
    prune:
      description: policy, removed (snapshot ids; in check mode those that would be removed), errors and dry_run of the retention step.
      type: dict
      returned: when a policy was given
    preflight:
      description: The snapshot's preflight report (check mode).
      type: dict
      returned: check mode
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.segura.backup.plugins.module_utils._engine import deps
from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import stop_cleanly_on_signals
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError
from ansible_collections.segura.backup.plugins.module_utils._engine.job import run_backup
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import backup_job_spec


def main():
    module = AnsibleModule(argument_spec=backup_job_spec(), supports_check_mode=True)
    absent = deps.missing(list(deps.CORE) + deps.for_target(module.params["target"]["type"]))
    if absent:
        module.fail_json(msg=missing_required_lib(", ".join(absent)))
    try:
        with stop_cleanly_on_signals():
            summary = run_backup(module.params, check_mode=module.check_mode)
    except BackupError as exc:
        done = getattr(exc, "summary", None)  # a snapshot taken before verify or prune failed
        module.fail_json(msg=str(exc), error=type(exc).__name__, **({"job": done} if done else {}))
    for step in ("snapshot", "verify", "prune"):  # the index's and prune's warnings too, not only the snapshot's
        for warning in (summary.get(step) or {}).get("warnings") or []:
            module.warn(warning)
    module.exit_json(changed=summary["status"] == "ok", job=summary)


if __name__ == "__main__":
    main()
