# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The shared target option; the target option of plugins/module_utils/_engine/specs.py (tests/unit/test_house.py compares them).
    DOCUMENTATION = r"""
options:
  target:
    description:
      - Where snapshots are stored.
      - An SMB share or an NFS export reached directly from the appliance (no mount needed), or a
        local directory (a plain disk, or a kernel CIFS/NFS mount made by the P(segura.backup.mount#role) role).
      - Set it once for all modules of the collection with C(module_defaults) and the action group
        C(group/segura.backup.target).
    type: dict
    required: true
    suboptions:
      type:
        description:
          - The kind of target.
          - V(smb) needs O(target.server), O(target.share), O(target.username) and O(target.password).
          - V(nfs) needs O(target.server) and O(target.export).
          - V(path) needs O(target.path), an absolute local directory that must already exist
            (so an absent mount never fills the local disk).
        type: str
        required: true
        choices: [smb, nfs, path]
      server:
        description:
          - Host name or IP address of the SMB or NFS server.
        type: str
      port:
        description:
          - TCP port of the server.
          - For V(smb) the default is V(445).
          - For V(nfs) the default is to ask the server's portmapper (NFSv3) or to use V(2049) (NFSv4.1).
        type: int
      share:
        description:
          - Name of the SMB share, without slashes.
        type: str
      path:
        description:
          - For V(smb) and V(nfs), the directory inside the share or export that holds the backups
            (created on first use); the default is the share or export root.
          - For V(path), the absolute local directory.
        type: str
      username:
        description:
          - SMB user name.
        type: str
      password:
        description:
          - SMB password. Kept in memory only; never logged.
        type: str
      domain:
        description:
          - SMB domain (or workgroup) of O(target.username).
        type: str
      encrypt:
        description:
          - For V(smb), require SMB3 encryption of the whole session. A server that cannot encrypt is refused.
          - Message signing is always required, whatever this option says.
        type: bool
        default: true
      export:
        description:
          - For V(nfs), the exported path on the server, for example V(/backup).
        type: str
      version:
        description:
          - For V(nfs), the protocol version.
        type: str
        choices: ['3', '4.1']
        default: '4.1'
      uid:
        description:
          - For V(nfs), the numeric user id sent with AUTH_SYS credentials.
        type: int
        default: 0
      gid:
        description:
          - For V(nfs), the numeric group id sent with AUTH_SYS credentials.
        type: int
        default: 0
      timeout:
        description:
          - Seconds to wait when connecting to the server and for each operation.
        type: int
        default: 30
      mode:
        description:
          - Permissions of the files the collection creates on V(path) and V(nfs) targets, in octal
            (V('0640')). SMB servers apply their own create mask.
        type: raw
        default: '0640'
      directory_mode:
        description:
          - Permissions of the directories the collection creates on V(path) and V(nfs) targets, in octal.
        type: raw
        default: '0750'
notes:
  - SMB and NFS targets are reached from Python (smbprotocol, nfs-rs); the appliance needs no kernel mount
    and no credentials file for them.
requirements:
  - smbprotocol >= 1.10 (for O(target.type=smb))
  - nfs-rs >= 0.8 (for O(target.type=nfs))
"""
