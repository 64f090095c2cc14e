# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validated module options (specs.py) turned into engine objects."""

from __future__ import annotations

import os
import socket
from typing import Any, Dict, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import DEFAULT_CONFIG_PATHS, DEFAULT_DATABASES, ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import DEFAULT_KEY_FILE, TrustPolicy, load_public_key, load_signers


def build_encryption(options: Dict[str, Any]) -> Encryption:
    """Encryption from the ``encryption`` option; recipients may come from a list and/or a file."""
    options = options or {}
    mode = options.get("mode")  # None: inferred from recipients or passphrase
    recipients = list(options.get("recipients") or [])
    if options.get("recipients_file"):
        path = options["recipients_file"]
        try:
            with open(path, "r", encoding="utf-8") as handle:
                recipients.append(handle.read())
        except OSError as exc:
            raise ConfigError("cannot read recipients file %s: %s" % (path, exc.strerror))
        except UnicodeDecodeError:
            raise ConfigError("recipients file %s is not a text file" % path)
    return Encryption.from_options(mode=mode, recipients=recipients or None,
                                   passphrase=options.get("passphrase"))


def build_decryption(options: Optional[Dict[str, Any]]) -> Decryption:
    options = options or {}
    return Decryption.from_options(identities=options.get("identities"),
                                   identity_file=options.get("identity_file"),
                                   passphrase=options.get("passphrase"),
                                   max_work_factor=options.get("max_scrypt_work_factor"))


def build_layout(options: Optional[Dict[str, Any]]) -> ApplianceLayout:
    options = options or {}
    config_paths = options.get("config_paths")
    return ApplianceLayout(
        root=options.get("root") or "/",
        arz_dir=options.get("arz_dir") or "var/senhasegura/arz",
        secrets_dir=options.get("secrets_dir") or "srv/cache/coba",
        config_paths=DEFAULT_CONFIG_PATHS if config_paths is None else config_paths,
        databases=options.get("databases") or DEFAULT_DATABASES,
    )


DATABASE_HANDLING = ("method", "service", "datadir")


def build_database(options: Optional[Dict[str, Any]]) -> DatabaseConnection:
    """The database connection; with no option given, the appliance's own default."""
    # method, service and datadir say how to back up and restore, not how to connect.
    options = {k: v for k, v in (options or {}).items() if v is not None and k not in DATABASE_HANDLING}
    if not options:
        return DatabaseConnection.appliance_default()
    return DatabaseConnection(**options)


def appliance_name(options: Optional[Dict[str, Any]]) -> str:
    """The name snapshots are filed under on the target: given, or this host's short name."""
    name = (options or {}).get("name")
    return name if name else socket.gethostname().split(".")[0]


def build_trust(options: Optional[Dict[str, Any]], own_appliance: Optional[str] = None,
                own_key_file: Optional[str] = None) -> TrustPolicy:
    """What verify and restore trust: the pinned keys of ``trust`` and, when this host has a signing
    key, its own public key for its own appliance name (a restore onto the appliance that made it)."""
    options = options or {}
    signers = load_signers(options.get("signers"), options.get("signers_file"))
    if own_appliance and own_key_file:
        public = load_public_key(own_key_file)
        if public is not None:
            signers.pin(own_appliance, public, own_key_file)
    return TrustPolicy(signers, bool(options.get("allow_unsigned")))


def signing_key_path(params: Dict[str, Any]) -> str:
    """The ``signing_key`` option, or etc/segura-backup/signing_key below the appliance's root."""
    return params.get("signing_key") or os.path.join((params.get("appliance") or {}).get("root") or "/", DEFAULT_KEY_FILE)
