# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # What goes into a snapshot and how (modules snapshot and backup_job); tested against
    # specs.snapshot_spec() in tests/unit/test_house.py.
    DOCUMENTATION = r"""
options:
  signing_key:
    description:
      - The appliance's own Ed25519 signing key (an unencrypted OpenSSH private key, mode 0600, as
        C(ssh-keygen -t ed25519) writes it; the C(segura.backup.runtime) role creates it).
        Every snapshot's sidecar is signed with it (C(<stem>.json.sig)); verify and restore trust only
        snapshots signed by the key pinned for their appliance.
      - When no file is there, the snapshot is published unsigned with a warning (verify and restore then
        refuse it unless told O(segura.backup.verify#module:trust.allow_unsigned)). A key that others can
        read fails the run.
      - Default C(etc/segura-backup/signing_key) below O(appliance.root).
    type: path
  components:
    description:
      - What to back up. V(database), V(config) and V(secrets) go into the object; V(sessions) are synced
        beside it. Segura's own session backup is opt-in too.
    type: list
    elements: str
    choices: [database, config, secrets, sessions]
    default: [database, config, secrets]
  compression:
    description:
      - zstd settings.
    type: dict
    default: {}
    suboptions:
      level:
        description:
          - zstd level, 1 (fast) to 19 (small).
        type: int
        default: 3
      threads:
        description:
          - zstd worker threads; V(0) compresses in the calling thread, V(-1) uses one per CPU (at most
            4, each about 20 MiB of memory), so that reading the database and compressing overlap.
        type: int
        default: -1
  chunk_size_mb:
    description:
      - Size of the database dump members in MiB (1 to 256). One chunk is the most the dump ever
        occupies in memory.
    type: int
    default: 16
  lock_ttl:
    description:
      - Seconds after which a lock whose holder stopped refreshing it counts as stale. The run refreshes
        its lock while it works.
    type: int
    default: 900
  sessions:
    description:
      - How the session recordings are taken (with V(sessions) in O(components)).
      - Symbolic links in the recordings tree are kept as links (their target text, never followed);
        a further name of a hard-linked file is kept as a link to the first name, stored once.
      - An entry that cannot be taken (a FIFO, socket or device, an unreadable file, one that vanishes
        or changes while it is read) is named in the result's C(sessions.problems) and the rest is
        backed up.
    type: dict
    default: {}
    suboptions:
      on_problem:
        description:
          - V(warn) publishes the snapshot with C(sessions.status=partial), every problem named (also a
            warning); the database, config and secrets are always taken.
          - V(fail) publishes nothing when any entry cannot be taken (the recordings already synced stay
            on the target for the next run).
        type: str
        choices: [warn, fail]
        default: warn
"""
