#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: break_lock
short_description: Show who holds the lock of a Segura appliance on a backup target, and break it if its run is dead
version_added: 0.1.0
description:
  - Every run that writes to an appliance's folder on the target (M(segura.backup.snapshot),
    M(segura.backup.prune), M(segura.backup.backup_job)) holds the appliance's lock, the file
    C(<appliance>/lock), and refreshes it while it works.
  - Runs take over a stale lock by themselves, so this module is rarely needed. A lock taken on the same
    host by a process that no longer exists (killed, crashed, rebooted) is taken over at once by the next
    run; any other lock is taken over once its O(segura.backup.snapshot#module:lock_ttl) has passed.
  - This module is for the remaining case, like restic's C(unlock) or borg's C(break-lock) - a run that
    died elsewhere (an execution node that was replaced) and whose lock would block the appliance until
    its TTL ends. It breaks a lock only when its holder is provably gone, when it expired, or when it has
    not been refreshed for a third of its TTL (a live run refreshes it every sixth). A lock that is still
    being refreshed is never broken; the task fails and says until when the holder was last seen.
  - Breaking takes the lock over by the same protocol runs use, so a holder that turns out to be alive
    finds its lock gone at its next refresh and stops without publishing. The broken run's unfinished
    uploads (partial snapshot objects, half-written recordings) are removed, then the lock is released.
author:
  - segura.backup maintainers (@segura-backup)
extends_documentation_fragment:
  - segura.backup.attributes
  - segura.backup.target
attributes:
  check_mode:
    support: full
    details:
      - Check mode reads the lock and reports its holder and whether it would be broken, and changes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - Once the lock is broken there is no lock; a second run reports none and changes nothing.
  safe_file_operations:
    support: full
    details:
      - The lock is replaced in one rename under an exclusive takeover marker, never removed while another
        run may be taking it.
options:
  appliance:
    description:
      - Name of the appliance whose lock to show or break (its folder name on the target).
    type: str
    required: true
  run_id:
    description:
      - Break the lock only if it is held by this run (the RV(holder.run_id) a check-mode run showed),
        so a lock taken by a new run in the meantime is never broken by mistake.
    type: str
requirements:
  - python >= 3.9
seealso:
  - module: segura.backup.snapshot
  - module: segura.backup.prune
  - name: borg break-lock
    description: The same operation in borg.
    link: https://borgbackup.readthedocs.io/en/stable/usage/lock.html
"""

EXAMPLES = r"""
- name: Who holds the lock of segura-primary?
  segura.backup.break_lock:
    target:
      type: nfs
      server: nas.example.com
      export: /exports/segura
    appliance: segura-primary
  check_mode: true
  register: lock

- name: Break it, but only if the same dead run still holds it
  segura.backup.break_lock:
    target:
      type: nfs
      server: nas.example.com
      export: /exports/segura
    appliance: segura-primary
    run_id: "{{ lock.holder.run_id }}"
  when: lock.holder is not none and lock.holder.breakable
"""

RETURN = r"""
holder:
  description: The lock's holder as read before anything was done, or null when the appliance is not locked.
  returned: always
  type: dict
  contains:
    run_id:
      description: The run that took the lock.
      type: str
    host:
      description: Host name of that run.
      type: str
    pid:
      description: Its process id on that host.
      type: int
    started:
      description: When it took the lock (UTC).
      type: str
    refreshed:
      description: When it last refreshed the lock (UTC).
      type: str
    expires:
      description: When the lock expires unless refreshed (UTC).
      type: str
    expired:
      description: Whether the lock is past its expiry.
      type: bool
    process_gone:
      description: Whether the holder ran on this host (same kernel and pid namespace) and its process no longer exists.
      type: bool
    silent:
      description: Seconds since the last refresh (absent when the lock expired or its process is gone).
      type: float
    breakable:
      description: Whether the lock may be broken.
      type: bool
    why:
      description: Why it may or may not be broken, in words.
      type: str
  sample: {"run_id": "5f0c...", "host": "awx-node-2", "pid": 4242, "started": "2026-12-04T02:00:01Z",
           "refreshed": "2026-12-04T02:03:11Z", "expires": "2026-12-04T02:18:11Z", "expired": false,
           "process_gone": false, "silent": 712.4, "breakable": true,
           "why": "it has not been refreshed for 712.4s (two heartbeats missed)", "readable": true}
broken:
  description: Whether the lock was broken (false in check mode, and when there was none).
  returned: always
  type: bool
would_break:
  description: In check mode, whether a real run would break the lock.
  returned: check_mode
  type: bool
leftovers_removed:
  description: Target-relative paths of the broken run's unfinished uploads that were removed.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.segura.backup.plugins.module_utils._engine import deps
from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import stop_cleanly_on_signals
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import break_lock_spec
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from ansible_collections.segura.backup.plugins.module_utils._engine.unlocking import break_lock


def main():
    module = AnsibleModule(argument_spec=break_lock_spec(), supports_check_mode=True)
    params = module.params
    absent = deps.missing(deps.for_target(params["target"]["type"]))
    if absent:
        module.fail_json(msg=missing_required_lib(", ".join(absent)))
    try:
        with stop_cleanly_on_signals():
            with open_target(params["target"]) as target:
                result = break_lock(target, params["appliance"], run_id=params["run_id"], dry_run=module.check_mode)
    except BackupError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)
    if module.check_mode:
        result["would_break"] = result["holder"] is not None
    changed = result["would_break"] if module.check_mode else result["broken"]
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
