# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Which snapshot signatures are trusted; the trust option of plugins/module_utils/_engine/specs.py.
    DOCUMENTATION = r"""
options:
  trust:
    description:
      - Which signatures are trusted. Every snapshot is signed by the appliance that took it (its own Ed25519
        key, O(segura.backup.snapshot#module:signing_key)); a snapshot is trusted only when its
        C(<stem>.json.sig) is a valid signature of its sidecar by the key pinned for the appliance it is filed
        under. Anyone who can write to the share can plant a snapshot; no one else holds that key.
      - C(playbooks/setup.yml) collects the appliances' public keys into an OpenSSH allowed signers file beside
        the inventory; the same file checks a snapshot by hand with C(ssh-keygen -Y verify).
    type: dict
    default: {}
    suboptions:
      signers:
        description:
          - The pinned public keys, as the text of an OpenSSH allowed signers file (one line per appliance,
            C(<appliance> namespaces="segura-backup" ssh-ed25519 AAAA...)). Public keys, not secrets.
          - In AWX, keep this text in a variable of the inventory (C(backup_signers)).
        type: str
      signers_file:
        description:
          - The same, as a file on the host the module runs on. May be combined with O(trust.signers).
        type: path
      allow_unsigned:
        description:
          - For a disaster only. Accept snapshots that are unsigned, or whose signature is not by the pinned
            key; each is named in a warning. A restore from such a snapshot never restores setuid, setgid or
            sticky bits.
        type: bool
        default: false
"""
