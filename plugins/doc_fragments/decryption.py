# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # How snapshots are opened; the decryption option of plugins/module_utils/_engine/specs.py (tests/unit/test_house.py compares them).
    DOCUMENTATION = r"""
options:
  decryption:
    description:
      - How to open encrypted snapshots. Give one of the suboptions; none is needed for unencrypted ones.
    type: dict
    suboptions:
      identities:
        description:
          - age X25519 identities (C(AGE-SECRET-KEY-1...)). Never logged.
        type: list
        elements: str
      identity_file:
        description:
          - A key file on the managed host as C(age-keygen) writes it.
        type: path
      passphrase:
        description:
          - The passphrase of snapshots encrypted with a passphrase. Never logged.
        type: str
      max_scrypt_work_factor:
        description:
          - The most scrypt work (log2 of N) a passphrase-encrypted object may ask for before its key is derived.
            An object on the share may be crafted by anyone who can write there; a higher factor costs
            1 KiB x 2^factor of memory (V(22) is 4 GiB) and as much time, so a larger one is refused, unread.
          - Snapshots are written with V(18), age's default; V(22) is age's own limit.
        type: int
        default: 22
"""
