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
"""
