# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one ``target`` option every module shares (mirrored by doc_fragments/target.py).

Plain data, so modules can merge it into their argument spec and the engine can validate the same
shape without Ansible::

    argument_spec = dict(appliance=dict(type='str'), **target_argument_spec())
"""

from __future__ import annotations

import copy

TARGET_TYPES = ("smb", "nfs", "path")
NFS_VERSIONS = ("3", "4.1")

_TARGET_SUBOPTIONS = {
    "type": {"type": "str", "required": True, "choices": list(TARGET_TYPES)},
    "server": {"type": "str"},
    "port": {"type": "int"},
    "share": {"type": "str"},
    "path": {"type": "str"},
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "domain": {"type": "str"},
    "encrypt": {"type": "bool", "default": True},
    "export": {"type": "str"},
    "version": {"type": "str", "default": "4.1", "choices": list(NFS_VERSIONS)},
    "uid": {"type": "int", "default": 0},
    "gid": {"type": "int", "default": 0},
    "timeout": {"type": "int", "default": 30},
    "mode": {"type": "raw", "default": "0640"},
    "directory_mode": {"type": "raw", "default": "0750"},
}

# Keys each target type needs; open_target() enforces the same rules outside Ansible.
REQUIRED_BY_TYPE = {
    "smb": ("server", "share", "username", "password"),
    "nfs": ("server", "export"),
    "path": ("path",),
}

SMB_DEFAULT_PORT = 445


def target_argument_spec(required: bool = True) -> dict:
    """Argument spec with the single dict option ``target`` (a fresh copy on every call)."""
    return {
        "target": {
            "type": "dict",
            "required": required,
            "options": copy.deepcopy(_TARGET_SUBOPTIONS),
            "required_if": [["type", kind, list(keys)] for kind, keys in REQUIRED_BY_TYPE.items()],
        }
    }


def target_defaults() -> dict:
    """The defaults of every suboption, for callers that build options without Ansible."""
    return {name: spec.get("default") for name, spec in _TARGET_SUBOPTIONS.items()}
