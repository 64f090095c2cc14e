# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The age v1 file format (https://age-encryption.org/v1, C2SP), streaming both ways.

Why our own: pyrage only offers a pull-based ``encrypt_io(reader, writer)`` and no streaming
passphrase mode; the archive writer needs a push-based writer (tar -> zstd -> age -> target) and a
pull-based reader, both with bounded memory. Files written here open with ``age -d`` and pyrage,
and files they write open here.

Supported stanzas: ``X25519`` (recipients ``age1...`` / identities ``AGE-SECRET-KEY-1...``) and
``scrypt`` (passphrase). Unknown stanzas (e.g. grease) are ignored when decrypting.

Memory: at most one 64 KiB payload chunk (plus one pending write) is held at a time.
This package: ``keys`` (bech32, recipients, identities) and ``stream`` (header, Encryptor, Decryptor).
"""

from __future__ import annotations

from ansible_collections.segura.backup.plugins.module_utils._engine.age.keys import (  # noqa: F401 - the package's API
    CHUNK_SIZE,
    DEFAULT_MAX_WORK_FACTOR,
    DEFAULT_WORK_FACTOR,
    ENCRYPTED_CHUNK_SIZE,
    HAS_CRYPTOGRAPHY,
    INTRO,
    Identity,
    Recipient,
    bech32_encode,
    generate_identity,
    parse_identities,
    parse_recipients,
    public_of,
    require_cryptography,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.age.stream import Decryptor, Encryptor, looks_like_age, passphrase_bytes  # noqa: F401
