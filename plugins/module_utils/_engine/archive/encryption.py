# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""How an object is encrypted (``Encryption``) and opened (``Decryption``): age recipients, a passphrase,
or - only when asked for explicitly - not at all."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

from ansible_collections.segura.backup.plugins.module_utils._engine import age
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import SUFFIX_ENCRYPTED, SUFFIX_PLAIN
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ArchiveError, ConfigError


class Encryption:
    """How to encrypt an archive: X25519 recipients, a passphrase, or (explicitly) not at all."""

    def __init__(self, mode: str, recipients: Sequence[age.Recipient] = (), passphrase: Optional[str] = None,
                 work_factor: int = age.DEFAULT_WORK_FACTOR):
        self.mode = mode
        self.recipients = list(recipients)
        self._passphrase = passphrase
        self.work_factor = work_factor

    @classmethod
    def recipients_of(cls, entries: Union[str, Sequence[str]]) -> "Encryption":
        """Recipients (``age1...``), one per entry or per line of a recipients-file text."""
        return cls("recipients", recipients=age.parse_recipients(entries))

    # ``Encryption.recipients([...])`` reads better at call sites; keep both spellings.
    @classmethod
    def passphrase(cls, passphrase: str, work_factor: int = age.DEFAULT_WORK_FACTOR) -> "Encryption":
        age.passphrase_bytes(passphrase)  # validates (non-empty) without echoing it
        return cls("passphrase", passphrase=passphrase, work_factor=work_factor)

    @classmethod
    def none(cls) -> "Encryption":
        return cls("none")

    @classmethod
    def from_options(cls, mode: Optional[str] = None, recipients: Optional[Sequence[str]] = None,
                     passphrase: Optional[str] = None) -> "Encryption":
        """From module options; ``mode`` is 'recipients', 'passphrase', 'none' or None (inferred)."""
        if mode is None:
            if recipients and passphrase:
                raise ConfigError("give either age recipients or a passphrase, not both")
            mode = "recipients" if recipients else "passphrase" if passphrase else None
            if mode is None:
                raise ConfigError("no encryption configured: give age recipients or a passphrase "
                                  "(or set encryption mode 'none' explicitly)")
        if mode == "recipients":
            if passphrase:
                raise ConfigError("encryption mode 'recipients' does not take a passphrase")
            if not recipients:
                raise ConfigError("encryption mode 'recipients' needs at least one age recipient")
            return cls.recipients_of(recipients)
        if mode == "passphrase":
            if recipients:
                raise ConfigError("encryption mode 'passphrase' does not take recipients")
            if not passphrase:
                raise ConfigError("encryption mode 'passphrase' needs a passphrase")
            return cls.passphrase(passphrase)
        if mode == "none":
            if recipients or passphrase:
                raise ConfigError("encryption mode 'none' contradicts the recipients/passphrase given")
            return cls.none()
        raise ConfigError("unknown encryption mode %r (use recipients, passphrase or none)" % (mode,))

    @property
    def encrypted(self) -> bool:
        return self.mode != "none"

    @property
    def suffix(self) -> str:
        return SUFFIX_ENCRYPTED if self.encrypted else SUFFIX_PLAIN

    def recipient_strings(self) -> List[str]:
        """Public keys, for the sidecar (safe to publish)."""
        return [str(r) for r in self.recipients]

    def open_encryptor(self, sink) -> Optional[age.Encryptor]:
        if self.mode == "recipients":
            return age.Encryptor(sink, recipients=self.recipients)
        if self.mode == "passphrase":
            return age.Encryptor(sink, passphrase=self._passphrase, work_factor=self.work_factor)
        return None

    def __repr__(self) -> str:
        if self.mode == "recipients":
            return "Encryption(recipients=%s)" % self.recipient_strings()
        return "Encryption(%s)" % self.mode


Encryption.recipients = Encryption.recipients_of  # type: ignore[assignment]


#: Bounds of decryption.max_scrypt_work_factor (the Encryptor writes 1 to 40; age's own default cap is 22).
MIN_MAX_WORK_FACTOR = 1
MAX_MAX_WORK_FACTOR = 40


class Decryption:
    """How to open an archive: identities, a passphrase, or none (unencrypted archives)."""

    def __init__(self, mode: str, identities: Sequence[age.Identity] = (), passphrase: Optional[str] = None,
                 max_work_factor: int = age.DEFAULT_MAX_WORK_FACTOR):
        self.mode = mode
        self.identities = list(identities)
        self._passphrase = passphrase
        self.max_work_factor = max_work_factor

    @classmethod
    def identities_of(cls, entries: Union[str, Sequence[str]]) -> "Decryption":
        """Identities (``AGE-SECRET-KEY-1...``), one per entry or per line of a key-file text."""
        return cls("identities", identities=age.parse_identities(entries))

    @classmethod
    def identity_file(cls, path: str) -> "Decryption":
        """Identities from a key file as ``age-keygen`` writes it (comments allowed)."""
        try:
            with open(path, "r", encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError("cannot read identity file %s: %s" % (path, exc.strerror))
        except UnicodeDecodeError:
            raise ConfigError("identity file %s is not a text file" % path)
        try:
            return cls.identities_of(text)
        except ConfigError as exc:
            raise ConfigError("identity file %s: %s" % (path, exc))

    @classmethod
    def passphrase(cls, passphrase: str, max_work_factor: int = age.DEFAULT_MAX_WORK_FACTOR) -> "Decryption":
        age.passphrase_bytes(passphrase)
        if isinstance(max_work_factor, bool) or not isinstance(max_work_factor, int) \
                or not MIN_MAX_WORK_FACTOR <= max_work_factor <= MAX_MAX_WORK_FACTOR:
            raise ConfigError("decryption.max_scrypt_work_factor must be an integer from %d to %d, not %r"
                              % (MIN_MAX_WORK_FACTOR, MAX_MAX_WORK_FACTOR, max_work_factor))
        return cls("passphrase", passphrase=passphrase, max_work_factor=max_work_factor)

    @classmethod
    def none(cls) -> "Decryption":
        return cls("none")

    @classmethod
    def from_options(cls, mode: Optional[str] = None, identities: Optional[Sequence[str]] = None,
                     identity_file: Optional[str] = None, passphrase: Optional[str] = None,
                     max_work_factor: Optional[int] = None) -> "Decryption":
        """From module options; ``mode`` is 'identities', 'passphrase', 'none' or None (inferred).
        ``max_work_factor``: the most scrypt work a passphrase object may ask for (None: age's 22)."""
        if max_work_factor is None:
            max_work_factor = age.DEFAULT_MAX_WORK_FACTOR
        elif isinstance(max_work_factor, bool) or not isinstance(max_work_factor, int) \
                or not MIN_MAX_WORK_FACTOR <= max_work_factor <= MAX_MAX_WORK_FACTOR:
            raise ConfigError("decryption.max_scrypt_work_factor must be an integer from %d to %d, not %r"
                              % (MIN_MAX_WORK_FACTOR, MAX_MAX_WORK_FACTOR, max_work_factor))
        given = [n for n, v in (("identities", identities), ("identity_file", identity_file),
                                ("passphrase", passphrase)) if v]
        if mode is None:
            if len(given) > 1:
                raise ConfigError("give only one of %s" % ", ".join(given))
            if not given:
                return cls.none()
            mode = "passphrase" if given[0] == "passphrase" else "identities"
        if mode == "identities":
            if passphrase:
                raise ConfigError("decryption with identities does not take a passphrase")
            if identities and identity_file:
                raise ConfigError("give either identities or identity_file, not both")
            if identity_file:
                return cls.identity_file(identity_file)
            if not identities:
                raise ConfigError("decryption with identities needs at least one age identity")
            return cls.identities_of(identities)
        if mode == "passphrase":
            if identities or identity_file:
                raise ConfigError("decryption with a passphrase does not take identities")
            if not passphrase:
                raise ConfigError("decryption with a passphrase needs the passphrase")
            return cls.passphrase(passphrase, max_work_factor=max_work_factor)
        if mode == "none":
            if given:
                raise ConfigError("decryption mode 'none' contradicts the %s given" % ", ".join(given))
            return cls.none()
        raise ConfigError("unknown decryption mode %r (use identities, passphrase or none)" % (mode,))

    def open_decryptor(self, source) -> age.Decryptor:
        if self.mode == "identities":
            return age.Decryptor(source, identities=self.identities)
        if self.mode == "passphrase":
            return age.Decryptor(source, passphrase=self._passphrase, max_work_factor=self.max_work_factor)
        raise ArchiveError("this archive is age-encrypted: give identities or a passphrase to open it")

    def __repr__(self) -> str:
        if self.mode == "identities":
            return "Decryption(identities=%s)" % [str(i.recipient) for i in self.identities]
        return "Decryption(%s)" % self.mode


Decryption.identities = Decryption.identities_of  # type: ignore[assignment]
