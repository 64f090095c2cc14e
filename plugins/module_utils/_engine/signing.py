# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Signed snapshots: each appliance signs the sidecar it publishes with its own Ed25519 key.

Why the sidecar: it holds the object's size and sha256 (and so, through the object, the manifest
and every member's sha256). A valid signature over its exact bytes therefore vouches for the whole
snapshot. Anyone can write to a share; only the appliance holds its key.

The signature is an OpenSSH ``SSHSIG`` (PROTOCOL.sshsig: namespace ``segura-backup``, sha512), in
``<stem>.json.sig`` beside the sidecar, so a standard tool checks it in a disaster::

    ssh-keygen -Y verify -f segura_backup_signers -I <appliance> -n segura-backup \\
        -s <stem>.json.sig < <stem>.json

The key is an OpenSSH ``ssh-ed25519`` private key (``ssh-keygen -t ed25519``), mode 0600, that never
leaves the appliance. The pinned public keys are an OpenSSH *allowed signers* file: one line per
appliance, ``<appliance> namespaces="segura-backup" ssh-ed25519 AAAA... [comment]``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.segura.backup.plugins.module_utils._engine.catalog.names import SIGNATURE_SUFFIX
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, IntegrityError

NAMESPACE = "segura-backup"
#: Where the runtime role puts the appliance's key (and ``.pub`` beside it), below the appliance's root.
DEFAULT_KEY_FILE = "etc/segura-backup/signing_key"
SIGNATURE_LIMIT = 16 * 1024  # an SSHSIG of an Ed25519 key is ~300 bytes; anything larger is not ours
KEY_TYPE = b"ssh-ed25519"
_MAGIC = b"SSHSIG"
_VERSION = 1
_HASH = "sha512"
_ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_ARMOR_END = "-----END SSH SIGNATURE-----"


class TrustError(IntegrityError):
    """A snapshot whose signature is missing, invalid or not by the appliance's pinned key."""


# ---------------------------------------------------------------------------------------------
# SSH wire format


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _Wire:
    """Reads SSH wire strings; any overrun is a TrustError (the input is hostile until checked)."""

    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise TrustError("%s is truncated" % self.what)
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def end(self) -> None:
        if self.pos != len(self.data):
            raise TrustError("%s has trailing bytes" % self.what)


def public_blob(raw_public: bytes) -> bytes:
    """The SSH wire form of an Ed25519 public key (what fingerprints and signatures name)."""
    return _string(KEY_TYPE) + _string(raw_public)


def fingerprint(raw_public: bytes) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(public_blob(raw_public)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _signed_data(message: bytes, namespace: str) -> bytes:
    return (_MAGIC + _string(namespace.encode("utf-8")) + _string(b"") + _string(_HASH.encode("ascii"))
            + _string(hashlib.sha512(message).digest()))


def _armor(blob: bytes) -> bytes:
    text = base64.b64encode(blob).decode("ascii")
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return ("\n".join([_ARMOR_BEGIN] + lines + [_ARMOR_END]) + "\n").encode("ascii")


def _unarmor(armored: bytes) -> bytes:
    try:
        lines = armored.decode("ascii").strip().splitlines()
    except UnicodeDecodeError:
        raise TrustError("the signature file is not an SSH signature (not ASCII)") from None
    if len(lines) < 3 or lines[0].strip() != _ARMOR_BEGIN or lines[-1].strip() != _ARMOR_END:
        raise TrustError("the signature file is not an SSH signature (no BEGIN/END SSH SIGNATURE lines)")
    try:
        return base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True)
    except ValueError:
        raise TrustError("the signature file is not an SSH signature (bad base64)") from None


# ---------------------------------------------------------------------------------------------
# The appliance's key


class SigningKey:
    """An Ed25519 private key; signs sidecars. Never logged, never leaves the host it is on."""

    def __init__(self, private_key: Any, source: str):
        self._key = private_key
        self.source = source
        from cryptography.hazmat.primitives import serialization

        self.raw_public = private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                serialization.PublicFormat.Raw)

    @classmethod
    def generate(cls) -> "SigningKey":
        from cryptography.hazmat.primitives.asymmetric import ed25519

        return cls(ed25519.Ed25519PrivateKey.generate(), "a new key")

    @classmethod
    def from_file(cls, path: str) -> "SigningKey":
        """Load an OpenSSH ed25519 private key; refuses one that others can read (as ssh does)."""
        try:
            info = os.stat(path)
            with open(path, "rb") as handle:
                data = handle.read(64 * 1024)
        except OSError as exc:
            raise ConfigError("cannot read the signing key %s: %s" % (path, exc.strerror or exc)) from None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError("the signing key %s is readable by others (mode %04o): make it 0600"
                              % (path, stat.S_IMODE(info.st_mode)))
        return cls.from_bytes(data, path)

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "SigningKey":
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # The message of cryptography names the format problem, never key material.
            raise ConfigError("the signing key %s is not an unencrypted OpenSSH private key (%s)"
                              % (source, exc)) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError("the signing key %s is not an Ed25519 key (ssh-keygen -t ed25519 makes one)" % source)
        return cls(key, source)

    @property
    def public_line(self) -> str:
        """``ssh-ed25519 AAAA...`` (the form of a ``.pub`` file, without comment)."""
        return "%s %s" % (KEY_TYPE.decode("ascii"), base64.b64encode(public_blob(self.raw_public)).decode("ascii"))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw_public)

    def sign(self, message: bytes, namespace: str = NAMESPACE) -> bytes:
        """An armored SSHSIG over ``message`` (what ``ssh-keygen -Y sign -n <namespace>`` writes)."""
        signature = self._key.sign(_signed_data(message, namespace))
        blob = (_MAGIC + struct.pack(">I", _VERSION) + _string(public_blob(self.raw_public))
                + _string(namespace.encode("utf-8")) + _string(b"") + _string(_HASH.encode("ascii"))
                + _string(_string(KEY_TYPE) + _string(signature)))
        return _armor(blob)


def load_public_key(path: str) -> Optional[bytes]:
    """The raw public half of the key at ``path``: from ``<path>.pub`` when there is one (the private key
    is then not read at all), else from the key itself; None when neither exists."""
    try:
        with open(path + ".pub", "r", encoding="ascii") as handle:
            fields = handle.read(16 * 1024).split()
    except (OSError, UnicodeDecodeError):
        key = load_signing_key(path)
        return key.raw_public if key is not None else None
    if len(fields) < 2 or fields[0] != KEY_TYPE.decode("ascii"):
        raise ConfigError("%s.pub is not an ssh-ed25519 public key" % path)
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except ValueError:
        raise ConfigError("%s.pub: the key is not base64" % path) from None
    return _raw_ed25519(blob, path + ".pub")


def load_signing_key(path: Optional[str]) -> Optional[SigningKey]:
    """The key at ``path``; None when ``path`` is empty or no file is there (the caller warns)."""
    if not path or not os.path.lexists(path):
        return None
    return SigningKey.from_file(path)


# ---------------------------------------------------------------------------------------------
# Pinned keys


@dataclass
class PinnedKey:
    raw_public: bytes
    namespaces: Optional[List[str]]  # None: every namespace (no namespaces= option)
    source: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.raw_public)


@dataclass
class Signers:
    """Pinned public keys by appliance name (an OpenSSH allowed signers file, Ed25519 keys only)."""

    keys: Dict[str, List[PinnedKey]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, source: str) -> "Signers":
        signers = cls()
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = "%s line %d" % (source, number)
            principals, options, blob = _parse_line(line, where)
            raw = _raw_ed25519(blob, where)
            for principal in principals:
                signers.keys.setdefault(principal, []).append(PinnedKey(raw, options, where))
        return signers

    def pin(self, appliance: str, raw_public: bytes, source: str) -> None:
        pinned = self.keys.setdefault(appliance, [])
        if all(k.raw_public != raw_public for k in pinned):
            pinned.append(PinnedKey(raw_public, [NAMESPACE], source))

    def for_appliance(self, appliance: str) -> List[PinnedKey]:
        return [k for k in self.keys.get(appliance, []) if k.namespaces is None or NAMESPACE in k.namespaces]

    def __len__(self) -> int:
        return sum(len(v) for v in self.keys.values())


def _parse_line(line: str, where: str) -> Tuple[List[str], Optional[List[str]], bytes]:
    """(principals, namespaces or None, key blob) of one allowed-signers line."""
    fields = line.split(None, 1)
    if len(fields) != 2:
        raise ConfigError("%s is not '<appliance> [options] ssh-ed25519 <key>'" % where)
    principals = [p for p in fields[0].split(",") if p]
    rest = fields[1].lstrip()
    namespaces: Optional[List[str]] = None
    if not rest.startswith("ssh-") and not rest.startswith("sk-") and not rest.startswith("ecdsa-"):
        options, rest = _split_options(rest, where)
        for option in options:
            name, _sep, value = option.partition("=")
            if name.lower() == "namespaces" and value:
                namespaces = [n for n in value.strip('"').split(",") if n]
            else:
                raise ConfigError("%s: option %r is not supported here (only namespaces=)" % (where, name))
    parts = rest.split()
    if len(parts) < 2:
        raise ConfigError("%s has no key after the appliance name" % where)
    if parts[0] != KEY_TYPE.decode("ascii"):
        raise ConfigError("%s: key type %r; segura.backup signing keys are ssh-ed25519" % (where, parts[0]))
    for principal in principals:
        if any(c in principal for c in "*?!"):
            raise ConfigError("%s: patterns (%r) are not supported; name each appliance" % (where, principal))
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ConfigError("%s: the key is not base64" % where) from None
    return principals, namespaces, blob


def _split_options(text: str, where: str) -> Tuple[List[str], str]:
    """Split the comma-separated options (quotes may hold commas) from the rest of the line."""
    options, current, quoted = [], "", False
    for index, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        if not quoted and char in " \t":
            options.append(current)
            return [o for o in options if o], text[index:].lstrip()
        if not quoted and char == ",":
            options.append(current)
            current = ""
            continue
        current += char
    raise ConfigError("%s has options but no key" % where)


def _raw_ed25519(blob: bytes, where: str) -> bytes:
    wire = _Wire(blob, where)
    try:
        if wire.string() != KEY_TYPE:
            raise ConfigError("%s: the key is not ssh-ed25519" % where)
        raw = wire.string()
        wire.end()
    except TrustError as exc:
        raise ConfigError("%s: the key is malformed (%s)" % (where, exc)) from None
    if len(raw) != 32:
        raise ConfigError("%s: an Ed25519 key has 32 bytes, this one %d" % (where, len(raw)))
    return raw


def load_signers(text: Optional[str] = None, path: Optional[str] = None) -> Signers:
    """Signers from an allowed-signers text and/or file (both may be given; either may be empty)."""
    signers = Signers()
    if path:
        try:
            with open(path, "r", encoding="utf-8") as handle:
                file_text = handle.read(4 * 1024 * 1024)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("cannot read the signers file %s: %s" % (path, getattr(exc, "strerror", None) or exc)) from None
        for name, keys in Signers.parse(file_text, path).keys.items():
            signers.keys.setdefault(name, []).extend(keys)
    if text:
        for name, keys in Signers.parse(text, "signers").keys.items():
            signers.keys.setdefault(name, []).extend(keys)
    return signers


# ---------------------------------------------------------------------------------------------
# Checking a signature


def check_signature(message: bytes, armored: bytes, appliance: str, signers: Signers) -> str:
    """The fingerprint of the pinned key of ``appliance`` that signed ``message``; TrustError otherwise."""
    pinned = signers.for_appliance(appliance)
    if not pinned:
        raise TrustError("no signing key is pinned for appliance %r (run playbooks/setup.yml to collect the "
                         "appliances' public keys, or give signers)" % appliance)
    if len(armored) > SIGNATURE_LIMIT:
        raise TrustError("the signature file is %d bytes: not an SSH signature" % len(armored))
    wire = _Wire(_unarmor(armored), "the SSH signature")
    if wire.take(6) != _MAGIC or wire.uint32() != _VERSION:
        raise TrustError("the signature file is not an SSHSIG version 1 signature")
    key_blob = wire.string()
    namespace = wire.string()
    wire.string()  # reserved
    hash_name = wire.string()
    sig_blob = wire.string()
    wire.end()
    if namespace != NAMESPACE.encode("ascii"):
        raise TrustError("the signature is for namespace %r, not %r" % (namespace.decode("utf-8", "replace"), NAMESPACE))
    if hash_name not in (b"sha512", b"sha256"):
        raise TrustError("the signature uses hash %r" % hash_name.decode("utf-8", "replace"))
    key_wire = _Wire(key_blob, "the signature's public key")
    if key_wire.string() != KEY_TYPE:
        raise TrustError("the signature is not made with an Ed25519 key")
    raw = key_wire.string()
    key_wire.end()
    match = [k for k in pinned if k.raw_public == raw]
    if not match:
        raise TrustError("signed by key %s, which is not the pinned key of appliance %r (%s)"
                         % (fingerprint(raw), appliance, ", ".join(k.fingerprint for k in pinned)))
    sig_wire = _Wire(sig_blob, "the signature")
    if sig_wire.string() != KEY_TYPE:
        raise TrustError("the signature is not an ssh-ed25519 signature")
    signature = sig_wire.string()
    sig_wire.end()
    digest = hashlib.sha512(message).digest() if hash_name == b"sha512" else hashlib.sha256(message).digest()
    signed = (_MAGIC + _string(namespace) + _string(b"") + _string(hash_name) + _string(digest))
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(signature, signed)
    except (InvalidSignature, ValueError):
        raise TrustError("the signature by %s does not match the sidecar (the sidecar was changed after it was "
                         "signed, or the signature was forged)" % fingerprint(raw)) from None
    return fingerprint(raw)


@dataclass
class TrustPolicy:
    """What verify and restore accept: a valid signature by a pinned key, or (loudly) unsigned."""

    signers: Signers
    allow_unsigned: bool = False

    def judge(self, sidecar_bytes: bytes, signature: Optional[bytes], appliance: str) -> Dict[str, Any]:
        """{"status": "valid", "key"} or, with allow_unsigned, {"status": "unsigned"|"invalid", "reason"}.

        Raises TrustError (naming why) when the snapshot is not trusted and allow_unsigned is off.
        """
        try:
            if signature is None:
                raise TrustError("the snapshot is not signed (no %s file beside its sidecar)" % SIGNATURE_SUFFIX)
            return {"status": "valid", "key": check_signature(sidecar_bytes, signature, appliance, self.signers)}
        except TrustError as exc:
            if not self.allow_unsigned:
                raise TrustError("%s; refused (allow_unsigned is off)" % exc) from None
            return {"status": "unsigned" if signature is None else "invalid", "key": None, "reason": str(exc)}
