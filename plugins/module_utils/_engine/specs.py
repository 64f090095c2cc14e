# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Every argument spec of the collection, once, with its defaults.

The modules pass these to AnsibleModule; the scheduled job's CLI and the engine validate the same
specs with ansible-core's ArgumentSpecValidator (``validate``), so a default or a rule cannot differ
between a playbook run and a timer run. The doc fragments are tested against these specs
(tests/unit/test_house.py). Each function returns a fresh copy: callers may change what they get.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.errors import UnsupportedError

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import COMPONENTS, DEFAULT_DATABASES
from ansible_collections.segura.backup.plugins.module_utils._engine.constants import (
    DEFAULT_COMPONENTS,
    DEFAULT_FUTURE_TOLERANCE,
    RESTORABLE_COMPONENTS,
    SESSIONS_ON_PROBLEM,
    VERIFY_MODES,
    VERIFY_SELECTIONS,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.retention import COUNT_OPTIONS

TARGET_TYPES = ("smb", "nfs", "path")
NFS_VERSIONS = ("3", "4.1")
SMB_DEFAULT_PORT = 445
# Keys each target type needs.
REQUIRED_BY_TYPE = {
    "smb": ("server", "share", "username", "password"),
    "nfs": ("server", "export"),
    "path": ("path",),
}
ROLE_UNKNOWN_CHOICES = ("backup", "skip", "fail")

_TARGET = {
    "type": "dict",
    "required": True,
    "options": {
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
    },
    "required_if": [["type", kind, list(keys)] for kind, keys in REQUIRED_BY_TYPE.items()],
}

_ENCRYPTION = {
    "type": "dict",
    "required": True,
    "options": {
        # No default: the mode follows from what is given (recipients or a passphrase).
        "mode": {"type": "str", "choices": ["recipients", "passphrase", "none"]},
        "recipients": {"type": "list", "elements": "str"},
        "recipients_file": {"type": "path"},
        "passphrase": {"type": "str", "no_log": True},
    },
    "mutually_exclusive": [["recipients", "passphrase"], ["recipients_file", "passphrase"]],
}

_DECRYPTION = {
    "type": "dict",
    "options": {
        "identities": {"type": "list", "elements": "str", "no_log": True},
        "identity_file": {"type": "path"},
        "passphrase": {"type": "str", "no_log": True},
        "max_scrypt_work_factor": {"type": "int", "default": 22},
    },
    "mutually_exclusive": [["identities", "identity_file", "passphrase"]],
}

_APPLIANCE = {
    "type": "dict",
    "default": {},
    "options": {
        "name": {"type": "str"},
        "root": {"type": "path", "default": "/"},
        "arz_dir": {"type": "str", "default": "var/senhasegura/arz"},
        "secrets_dir": {"type": "str", "default": "srv/cache/coba", "no_log": False},  # a folder name, not a secret
        "config_paths": {"type": "list", "elements": "raw"},
        "databases": {"type": "list", "elements": "str", "default": list(DEFAULT_DATABASES)},
        "health_url": {"type": "str"},
        "validate_certs": {"type": "bool", "default": True},
    },
}

_DATABASE = {
    "type": "dict",
    "default": {},
    "options": {
        "defaults_file": {"type": "path"},
        "socket": {"type": "path"},
        "host": {"type": "str"},
        "port": {"type": "int"},
        "user": {"type": "str"},
        "method": {"type": "str", "choices": ["physical", "logical"]},
        "service": {"type": "str", "default": "mariadb"},
        "datadir": {"type": "path"},
    },
}

_SNAPSHOT_OWN = {
    "components": {"type": "list", "elements": "str", "choices": list(COMPONENTS), "default": list(DEFAULT_COMPONENTS)},
    "compression": {"type": "dict", "default": {}, "options": {
        "level": {"type": "int", "default": 3},
        "threads": {"type": "int", "default": -1},
    }},
    "chunk_size_mb": {"type": "int", "default": 16},
    "lock_ttl": {"type": "int", "default": 900},
    "sessions": {"type": "dict", "default": {}, "options": {
        "on_problem": {"type": "str", "choices": list(SESSIONS_ON_PROBLEM), "default": "warn"},
    }},
}

# How far ahead of now a snapshot may be dated before it is future-dated (clock_skew.py).
_FUTURE_TOLERANCE = {"type": "str", "default": DEFAULT_FUTURE_TOLERANCE}

_PRUNE_RULES = dict(
    {option: {"type": "int"} for option in COUNT_OPTIONS},
    keep_within={"type": "str"},
    timezone={"type": "str", "default": "UTC"},
    partial_grace={"type": "str", "default": "24h"},
    prune_sessions={"type": "bool", "default": True},
    future_tolerance=_FUTURE_TOLERANCE,
)

# Which snapshot signatures verify and restore trust (signing.py).
_TRUST = {
    "type": "dict",
    "default": {},
    "options": {
        "signers": {"type": "str"},
        "signers_file": {"type": "path"},
        "allow_unsigned": {"type": "bool", "default": False},
    },
}
# The appliance's own Ed25519 key: signs what a snapshot publishes; restore trusts its public half.
# Unset: etc/segura-backup/signing_key below appliance.root (options.signing_key_path).
_SIGNING_KEY = {"type": "path", "no_log": False}  # a path, not a secret

_VERIFY_RULES = {
    "mode": {"type": "str", "choices": list(VERIFY_MODES), "default": "quick"},
    "check_session_hashes": {"type": "bool", "default": False},
}


def _fresh(**options: Any) -> Dict[str, Any]:
    return copy.deepcopy(options)


def target_spec() -> Dict[str, Any]:
    return _fresh(target=_TARGET)


def snapshot_spec() -> Dict[str, Any]:
    return _fresh(target=_TARGET, encryption=_ENCRYPTION, appliance=_APPLIANCE, database=_DATABASE,
                  signing_key=_SIGNING_KEY, **_SNAPSHOT_OWN)


def verify_spec() -> Dict[str, Any]:
    return _fresh(target=_TARGET, decryption=_DECRYPTION, appliance={"type": "str"},
                  select={"type": "str", "choices": list(VERIFY_SELECTIONS), "default": "latest"},
                  ids={"type": "list", "elements": "str"}, sample_size={"type": "int", "default": 1},
                  future_tolerance=_FUTURE_TOLERANCE,
                  fail_on_error={"type": "bool", "default": True}, trust=_TRUST, **_VERIFY_RULES)


def prune_spec() -> Dict[str, Any]:
    return _fresh(target=_TARGET, appliance={"type": "str"}, lock_ttl={"type": "int", "default": 900}, **_PRUNE_RULES)


def break_lock_spec() -> Dict[str, Any]:
    return _fresh(target=_TARGET, appliance={"type": "str", "required": True}, run_id={"type": "str"},
                  force={"type": "bool", "default": False})


def restore_spec() -> Dict[str, Any]:
    return _fresh(
        target=_TARGET, decryption=_DECRYPTION, appliance=_APPLIANCE, database=_DATABASE,
        snapshot={"type": "str", "default": "latest"},
        source_appliance={"type": "str"},
        allow_other_appliance={"type": "bool", "default": False},
        components={"type": "list", "elements": "str", "choices": list(RESTORABLE_COMPONENTS)},
        restore_sessions={"type": "bool", "default": False},
        force_version_mismatch={"type": "bool", "default": False},
        pre_commands={"type": "list", "elements": "list", "default": []},
        post_commands={"type": "list", "elements": "list", "default": []},
        command_timeout={"type": "int", "default": 600},
        post_verify={"type": "bool", "default": True},
        future_tolerance=_FUTURE_TOLERANCE,
        trust=_TRUST,
        signing_key=_SIGNING_KEY,
        special_bits_paths={"type": "list", "elements": "str", "default": []},
    )


def backup_info_spec() -> Dict[str, Any]:
    return _fresh(target=_TARGET, appliance={"type": "str"}, include_sessions={"type": "bool", "default": False},
                  query={"type": "str"}, future_tolerance=_FUTURE_TOLERANCE, use_index={"type": "bool", "default": True},
                  include_snapshots={"type": "bool", "default": True})


def appliance_info_spec() -> Dict[str, Any]:
    return _fresh(appliance=_APPLIANCE, database=_DATABASE, gather_database={"type": "bool", "default": True},
                  health_timeout={"type": "float", "default": 5.0}, name_only={"type": "bool", "default": False})


def backup_job_spec() -> Dict[str, Any]:
    """One scheduled run (the backup_job module and the timer's CLI): snapshot -> verify -> prune."""
    spec = snapshot_spec()
    spec.update(_fresh(
        verify={"type": "dict", "default": {}, "options": dict(
            _VERIFY_RULES, mode={"type": "str", "choices": list(VERIFY_MODES) + ["none"], "default": "quick"},
            decryption=_DECRYPTION)},
        prune={"type": "dict", "options": _PRUNE_RULES},
        primary_only={"type": "bool", "default": True},
        when_role_unknown={"type": "str", "choices": list(ROLE_UNKNOWN_CHOICES), "default": "backup"},
    ))
    return spec


def validate(spec: Mapping[str, Any], params: Mapping[str, Any], what: str) -> Dict[str, Any]:
    """``params`` checked against ``spec`` with defaults filled in, as AnsibleModule would do.

    ConfigError lists every problem, with the values of no_log options masked (the validator's own
    messages may quote them).
    """
    result = ArgumentSpecValidator(dict(spec)).validate(dict(params))
    if result.error_messages:  # (result.errors is an exception object: always true)
        # An unsupported-parameter message starts with the option's name alone: say what it is.
        messages = [remove_values("unknown option %s" % error.msg if isinstance(error, UnsupportedError) else error.msg,
                                  result._no_log_values)
                    for error in result.errors]
        raise ConfigError("%s: %s" % (what, "; ".join(messages)))
    return result.validated_parameters
