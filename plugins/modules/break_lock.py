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
    C(<appliance>/lock), and refreshes it while its data moves.
  - Runs take over a stale lock by themselves, so this module is rarely needed. A lock taken on the same
    host by a process that no longer exists (killed, crashed) is taken over at once by the next run; any
    other lock (from another host, or from before a reboot) once its
    O(segura.backup.snapshot#module:lock_ttl) has passed.
  - Check mode shows the holder (host, pid, run, when it last refreshed the lock) and whether a real run
    would break it, and why. Use it to find the pid of a run that still works on an appliance.
  - A lock whose holder provably still runs (on this host, same pid and start time) is never broken. A stale
    lock (expired, or its process gone from this host) is broken on request. Any other lock only with
    O(force), like borg's C(break-lock), and even then not while it is being refreshed (refreshed within
    the last third of its TTL; a working run refreshes it every sixth). Silence is no proof that a run is
    gone - a run whose database dump waits on a table lock refreshes nothing - so O(force) is your word
    that the run's host is down.
  - Breaking takes the lock over by the same protocol runs use, waits a moment and checks the lock is still
    its own (a refresh that was in flight would have replaced it; then nothing is removed and the task
    fails). It then removes the broken run's unfinished uploads (partial snapshot objects, half-written
    recordings) and releases the lock. A broken holder that is alive after all finds its lock gone at its
    next refresh, at the latest right before it publishes, and stops.
author:
  - segura.backup maintainers (@segura-backup)
extends_documentation_fragment:
  - segura.backup.attributes
  - segura.backup.target
attributes:
  check_mode:
    support: full
    details:
      - Check mode reads the lock and reports its holder, whether it would be broken and why not, and changes
        nothing; it does not fail when the lock may not be broken.
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
  force:
    description:
      - Also break a lock that is not stale, once it has not been refreshed for a third of its TTL.
      - Only when you know the run that holds it is gone (its host is down or was replaced).
    type: bool
    default: false
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

- name: Break it, but only if the same run still holds it (its execution node is gone)
  segura.backup.break_lock:
    target:
      type: nfs
      server: nas.example.com
      export: /exports/segura
    appliance: segura-primary
    run_id: "{{ lock.holder.run_id }}"
    force: true
  when: lock.holder is not none
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
      description: Seconds since the last refresh (absent when the lock does not say when that was).
      type: float
    readable:
      description: Whether the lock could be read (false while it is being written, or when damaged; then only RV(holder.breakable) and RV(holder.why) are set).
      type: bool
    breakable:
      description: Whether the lock may be broken.
      type: bool
    why:
      description: Why it may or may not be broken, in words.
      type: str
  sample: {"run_id": "5f0c...", "host": "awx-node-2", "pid": 4242, "started": "2026-12-04T02:00:01Z",
           "refreshed": "2026-12-04T02:03:11Z", "expires": "2026-12-04T02:18:11Z", "expired": false,
           "process_gone": false, "silent": 712.4, "breakable": true,
           "why": "force, and it has not been refreshed for 712.4s", "readable": true}
broken:
  description: Whether the lock was broken (false in check mode, and when there was none).
  returned: always
  type: bool
would_break:
  description: Whether the lock may be broken (in check mode, whether a real run would break it).
  returned: always
  type: bool
refusal:
  description: In check mode, why a real run would refuse to break the lock (null when it would break it or there is none).
  returned: check_mode
  type: str
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
                result = break_lock(target, params["appliance"], run_id=params["run_id"],
                                    force=params["force"], dry_run=module.check_mode)
    except BackupError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__, holder=getattr(exc, "holder", None))
    changed = result["would_break"] if module.check_mode else result["broken"]
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
