# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # How snapshots are encrypted; the encryption option of plugins/module_utils/_engine/specs.py (tests/unit/test_house.py compares them).
    DOCUMENTATION = r"""
options:
  encryption:
    description:
      - How the snapshot object is encrypted, in the L(age,https://age-encryption.org/v1) format,
        so that C(age -d -i KEY | zstd -d | tar -x) opens it in a disaster.
      - The default, X25519 recipients, keeps only public keys on the appliance; a stolen appliance
        configuration cannot open old backups.
    type: dict
    required: true
    suboptions:
      mode:
        description:
          - V(recipients) encrypts to the age public keys in O(encryption.recipients) and O(encryption.recipients_file).
          - V(passphrase) encrypts with O(encryption.passphrase) (scrypt).
          - V(none) writes an unencrypted object; it must be chosen explicitly.
          - When not given, it follows from what is given - recipients or a passphrase.
        type: str
        choices: [recipients, passphrase, none]
      recipients:
        description:
          - age X25519 public keys (C(age1...)). Any one of the matching identities can open the snapshot.
        type: list
        elements: str
      recipients_file:
        description:
          - A file on the managed host with one age public key per line (C(#) comments allowed),
            as C(age-keygen -y) prints them.
        type: path
      passphrase:
        description:
          - The passphrase for O(encryption.mode=passphrase). Never logged.
        type: str
"""
