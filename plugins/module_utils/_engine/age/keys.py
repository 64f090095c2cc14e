# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""age keys: bech32 (BIP 173), X25519 recipients (``age1...``) and identities (``AGE-SECRET-KEY-1...``)."""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ArchiveError, ConfigError

try:
    from cryptography.exceptions import InvalidTag  # pylint: disable=unused-import  # stream.py takes it from here
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    HAS_CRYPTOGRAPHY = True
except ImportError:  # reported by require_cryptography() so modules fail with a clear message
    HAS_CRYPTOGRAPHY = False

    class InvalidTag(Exception):  # type: ignore[no-redef]
        """Stand-in so the module imports; never raised."""


def require_cryptography() -> None:
    if not HAS_CRYPTOGRAPHY:
        raise ArchiveError("the Python package 'cryptography' is missing on this host "
                           "(the segura.backup.runtime role installs it)")


INTRO = b"age-encryption.org/v1\n"
FOOTER_PREFIX = b"---"
STANZA_PREFIX = b"-> "
X25519_LABEL = b"age-encryption.org/v1/X25519"
SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"

CHUNK_SIZE = 64 * 1024  # plaintext bytes per STREAM chunk
TAG_SIZE = 16
ENCRYPTED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
FILE_KEY_SIZE = 16
PAYLOAD_NONCE_SIZE = 16
ZERO_NONCE = b"\x00" * 12

DEFAULT_WORK_FACTOR = 18  # log2(N) for scrypt when encrypting (the spec's recommendation)
DEFAULT_MAX_WORK_FACTOR = 22  # refuse to spend more than this when decrypting (same as age)

# Bounds on what we accept while parsing a header, so a hostile file cannot make us buffer much.
MAX_HEADER_BYTES = 1024 * 1024
MAX_HEADER_LINE = 4096

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"


# --------------------------------------------------------------------------------------------------
# bech32 (BIP 173, the original checksum constant, which age uses), without the 90-char limit
# --------------------------------------------------------------------------------------------------

_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32_polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ value
        for i in range(5):
            chk ^= _BECH32_GEN[i] if ((top >> i) & 1) else 0
    return chk


def _bech32_hrp_expand(hrp: str) -> List[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> Optional[List[int]]:
    acc = 0
    bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        return None
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Encode bytes as bech32 with the given human-readable part (lower case)."""
    values = _convertbits(data, 8, 5, True)
    if values is None:
        raise AssertionError("only an unpadded conversion can fail")
    checksum_input = _bech32_hrp_expand(hrp) + values + [0] * 6
    polymod = _bech32_polymod(checksum_input) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[v] for v in values + checksum)


def bech32_decode(text: str) -> Tuple[str, bytes]:
    """Decode a bech32 string into (hrp in lower case, bytes); ValueError says what is wrong."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed upper and lower case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("no separator or too short")
    hrp, rest = text[:pos], text[pos + 1:]
    if any(ord(c) < 33 or ord(c) > 126 for c in hrp):
        raise ValueError("invalid characters")
    values = []
    for c in rest:
        idx = _BECH32_CHARSET.find(c)
        if idx < 0:
            raise ValueError("invalid characters")
        values.append(idx)
    if _bech32_polymod(_bech32_hrp_expand(hrp) + values) != 1:
        raise ValueError("bad checksum")
    data = _convertbits(values[:-6], 5, 8, False)
    if data is None:
        raise ValueError("invalid padding")
    return hrp, bytes(data)


# --------------------------------------------------------------------------------------------------
# recipients and identities
# --------------------------------------------------------------------------------------------------


def describe_entry(label: str, index: int, line: Optional[int] = None) -> str:
    where = "%s #%d" % (label, index + 1)
    if line is not None:
        where += " (line %d)" % line
    return where


class Recipient:
    """An X25519 recipient (public key, ``age1...``). Public: safe to show."""

    __slots__ = ("public_bytes",)

    def __init__(self, public_bytes: bytes):
        if len(public_bytes) != 32:
            raise ConfigError("an X25519 recipient must be 32 bytes")
        self.public_bytes = bytes(public_bytes)

    @classmethod
    def parse(cls, text: str, where: str = "recipient") -> "Recipient":
        """Parse ``age1...``; ConfigError names ``where`` and never echoes secret-looking input."""
        if not isinstance(text, str):
            raise ConfigError("%s is not a string" % where)
        text = text.strip()
        if text.upper().startswith("AGE-SECRET-KEY-"):
            raise ConfigError("%s is a secret key (AGE-SECRET-KEY-...), not a recipient: give its public "
                              "key (age1...), the appliance must never hold the secret key" % where)
        if text.startswith("ssh-"):
            raise ConfigError("%s is an SSH key; only age X25519 recipients (age1...) are supported" % where)
        if not text.lower().startswith("age1"):
            raise ConfigError("%s is not an age X25519 recipient (it must start with 'age1')" % where)
        shown = text[:12] + "..." if len(text) > 12 else text
        try:
            hrp, data = bech32_decode(text)
        except ValueError as exc:
            raise ConfigError("%s (%s) is not a valid age recipient: %s" % (where, shown, exc))
        if hrp != RECIPIENT_HRP:
            raise ConfigError("%s (%s) is an age plugin recipient, only X25519 (age1...) is supported"
                              % (where, shown))
        if len(data) != 32:
            raise ConfigError("%s (%s) is not a valid age recipient: wrong length" % (where, shown))
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode(RECIPIENT_HRP, self.public_bytes)

    def __repr__(self) -> str:
        return "Recipient(%s)" % self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipient) and other.public_bytes == self.public_bytes

    def __hash__(self) -> int:
        return hash(self.public_bytes)


class Identity:
    """An X25519 identity (secret key). Its repr and str show only the public key."""

    __slots__ = ("_private", "recipient")

    def __init__(self, secret_bytes: bytes):
        require_cryptography()
        if len(secret_bytes) != 32:
            raise ConfigError("an X25519 identity must be 32 bytes")
        self._private = X25519PrivateKey.from_private_bytes(bytes(secret_bytes))
        self.recipient = Recipient(self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def generate(cls) -> "Identity":
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str, where: str = "identity") -> "Identity":
        """Parse ``AGE-SECRET-KEY-1...``; the error names ``where`` and never echoes the input."""
        if not isinstance(text, str):
            raise ConfigError("%s is not a string" % where)
        text = text.strip()
        if text.lower().startswith("age1"):
            raise ConfigError("%s is a public key (age1...), not an identity: decryption needs the "
                              "secret key (AGE-SECRET-KEY-1...)" % where)
        if not text.upper().startswith("AGE-SECRET-KEY-1"):
            raise ConfigError("%s is not an age X25519 identity (it must start with 'AGE-SECRET-KEY-1')"
                              % where)
        try:
            hrp, data = bech32_decode(text)
        except ValueError as exc:
            raise ConfigError("%s is not a valid age identity: %s" % (where, exc))
        if hrp != IDENTITY_HRP or len(data) != 32:
            raise ConfigError("%s is not a valid age X25519 identity" % where)
        return cls(data)

    def secret_string(self) -> str:
        """The ``AGE-SECRET-KEY-1...`` text. Handle with care: this is the secret."""
        raw = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return bech32_encode(IDENTITY_HRP, raw).upper()

    def exchange(self, share: bytes) -> bytes:
        return self._private.exchange(X25519PublicKey.from_public_bytes(share))

    def __repr__(self) -> str:
        return "Identity(public=%s)" % self.recipient

    __str__ = __repr__


def _split_entries(entries: Union[str, Sequence[str]]) -> List[Tuple[str, int, Optional[int]]]:
    """Turn a list of keys and/or key-file texts into (key, entry index, line) triples.

    Each entry may hold several lines (a file as ``age-keygen`` writes it): blank lines and ``#``
    comments are skipped.
    """
    if isinstance(entries, str):
        entries = [entries]
    out = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise ConfigError("entry #%d is not a string" % (index + 1))
        lines = entry.splitlines()
        multi = len(lines) > 1
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            out.append((line, index, lineno if multi else None))
    return out


def parse_recipients(entries: Union[str, Sequence[str]]) -> List[Recipient]:
    """Parse recipients (``age1...``), one per entry or per line of a recipients file text."""
    found = [Recipient.parse(text, describe_entry("recipient", index, line))
             for text, index, line in _split_entries(entries)]
    if not found:
        raise ConfigError("no age recipients given")
    return found


def parse_identities(entries: Union[str, Sequence[str]]) -> List[Identity]:
    """Parse identities (``AGE-SECRET-KEY-1...``), one per entry or per line of a key file text."""
    found = [Identity.parse(text, describe_entry("identity", index, line))
             for text, index, line in _split_entries(entries)]
    if not found:
        raise ConfigError("no age identities given")
    return found


def generate_identity() -> Tuple[str, str]:
    """A new X25519 key pair as (``AGE-SECRET-KEY-1...``, ``age1...``)."""
    identity = Identity.generate()
    return identity.secret_string(), str(identity.recipient)


def public_of(identity: str) -> str:
    """The recipient (``age1...``) of an identity string."""
    return str(Identity.parse(identity).recipient)


# --------------------------------------------------------------------------------------------------
# header
# --------------------------------------------------------------------------------------------------
