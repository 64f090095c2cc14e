# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The age v1 header and STREAM payload: a push-based Encryptor and a pull-based Decryptor."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from typing import List, Optional, Sequence, Tuple, Union

from ansible_collections.segura.backup.plugins.module_utils._engine.age.keys import (
    CHUNK_SIZE,
    DEFAULT_MAX_WORK_FACTOR,
    DEFAULT_WORK_FACTOR,
    ENCRYPTED_CHUNK_SIZE,
    FILE_KEY_SIZE,
    FOOTER_PREFIX,
    INTRO,
    MAX_HEADER_BYTES,
    MAX_HEADER_LINE,
    PAYLOAD_NONCE_SIZE,
    SCRYPT_LABEL,
    STANZA_PREFIX,
    TAG_SIZE,
    X25519_LABEL,
    ZERO_NONCE,
    Identity,
    InvalidTag,
    Recipient,
    describe_entry,
    require_cryptography,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ArchiveError, ConfigError, IntegrityError
from ansible_collections.segura.backup.plugins.module_utils._engine.streams import ReadMixin

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
except ImportError:  # require_cryptography() says so
    pass
_ARG_RE = re.compile(rb"^[\x21-\x7e]+$")  # VCHAR: printable ASCII without space


def _b64encode(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _b64decode(text: bytes, what: str) -> bytes:
    """Strict unpadded canonical base64, as the spec requires."""
    if b"=" in text or b"\r" in text or b"\n" in text:
        raise IntegrityError("corrupt age header: bad base64 in %s" % what)
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (ValueError, TypeError):
        raise IntegrityError("corrupt age header: bad base64 in %s" % what)
    if _b64encode(data) != text:
        raise IntegrityError("corrupt age header: non-canonical base64 in %s" % what)
    return data


class _Stanza:
    __slots__ = ("kind", "args", "body")

    def __init__(self, kind: bytes, args: List[bytes], body: bytes):
        self.kind = kind
        self.args = args
        self.body = body

    def encode(self) -> bytes:
        out = [STANZA_PREFIX + b" ".join([self.kind] + self.args) + b"\n"]
        text = _b64encode(self.body)
        # Full 64-column lines, then one shorter (possibly empty) final line.
        for i in range(0, len(text) + 1, 64):
            out.append(text[i:i + 64] + b"\n")
        return b"".join(out)


def _hkdf(ikm: bytes, salt: Optional[bytes], info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _header_mac(file_key: bytes, header_up_to_footer: bytes) -> bytes:
    return hmac.new(_hkdf(file_key, None, b"header"), header_up_to_footer, hashlib.sha256).digest()


def _scrypt_key(passphrase: bytes, salt: bytes, work_factor: int) -> bytes:
    return Scrypt(salt=SCRYPT_LABEL + salt, length=32, n=1 << work_factor, r=8, p=1).derive(passphrase)


def passphrase_bytes(passphrase: Union[str, bytes]) -> bytes:
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not isinstance(passphrase, (bytes, bytearray)) or not passphrase:
        raise ConfigError("the passphrase must be a non-empty string")
    return bytes(passphrase)


class _BufferedSource:
    """Reads from a file-like ``source`` and lets the header parser read lines without over-reading."""

    def __init__(self, source, block: int = 64 * 1024):
        self._source = source
        self._block = block
        self._buf = b""
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._source.read(self._block)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def readline(self, limit: int) -> bytes:
        """One line including b'\\n'; IntegrityError if longer than ``limit`` or cut off."""
        while True:
            end = self._buf.find(b"\n", 0, limit + 1)
            if end >= 0:
                line, self._buf = self._buf[:end + 1], self._buf[end + 1:]
                return line
            if len(self._buf) > limit:
                raise IntegrityError("corrupt age header: line too long")
            if not self._fill():
                raise IntegrityError("truncated age header")

    def unread(self, data: bytes) -> None:
        """Put bytes back in front (used to peek one byte past a chunk)."""
        self._buf = data + self._buf

    def read_exact(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the source."""
        while len(self._buf) < n and self._fill():
            pass
        data, self._buf = self._buf[:n], self._buf[n:]
        return data


def _parse_header(src: _BufferedSource) -> Tuple[List[_Stanza], bytes, bytes, bytes]:
    """Read the header: (stanzas, header bytes covered by the MAC, MAC, the MAC line's bytes after "---")."""
    first = src.read_exact(len(INTRO))
    if first != INTRO:
        if first and INTRO.startswith(first):
            raise IntegrityError("truncated age header")
        if first.startswith(b"age-encryption.org/"):
            raise ArchiveError("unsupported age format version (only age-encryption.org/v1 is supported)")
        raise ArchiveError("not an age-encrypted file")
    raw = [first]
    total = len(first)
    stanzas: List[_Stanza] = []
    line = src.readline(MAX_HEADER_LINE)
    while True:
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise IntegrityError("corrupt age header: too large")
        if line.startswith(FOOTER_PREFIX + b" "):
            raw.append(FOOTER_PREFIX)
            mac = _b64decode(line[4:-1], "header MAC")
            if len(mac) != 32:
                raise IntegrityError("corrupt age header: bad MAC length")
            if not stanzas:
                raise IntegrityError("corrupt age header: no recipient stanzas")
            return stanzas, b"".join(raw), mac, line[len(FOOTER_PREFIX):]
        if not line.startswith(STANZA_PREFIX):
            raise IntegrityError("corrupt age header: unexpected line")
        raw.append(line)
        fields = line[3:-1].split(b" ")
        if any(not _ARG_RE.match(f) for f in fields):
            raise IntegrityError("corrupt age header: malformed stanza")
        body_text = []
        while True:
            body_line = src.readline(MAX_HEADER_LINE)
            total += len(body_line)
            if total > MAX_HEADER_BYTES:
                raise IntegrityError("corrupt age header: too large")
            raw.append(body_line)
            content = body_line[:-1]
            if len(content) > 64:
                raise IntegrityError("corrupt age header: stanza body line too long")
            body_text.append(content)
            if len(content) < 64:
                break
        stanzas.append(_Stanza(fields[0], fields[1:], _b64decode(b"".join(body_text), "stanza body")))
        line = src.readline(MAX_HEADER_LINE)


# --------------------------------------------------------------------------------------------------
# STREAM payload
# --------------------------------------------------------------------------------------------------


def _chunk_nonce(counter: int, last: bool) -> bytes:
    if counter >= 1 << 88:
        raise ArchiveError("age payload too large")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class Encryptor:
    """A write-only file-like object that age-encrypts into ``sink``.

    ``Encryptor(sink, recipients=[...])`` or ``Encryptor(sink, passphrase="...")``; recipients may be
    ``Recipient`` objects or ``age1...`` strings. ``close()`` writes the final chunk; it does not
    close ``sink``. The header is written on construction.
    """

    def __init__(self, sink, recipients: Optional[Sequence[Union[Recipient, str]]] = None,
                 passphrase: Optional[Union[str, bytes]] = None, work_factor: int = DEFAULT_WORK_FACTOR):
        require_cryptography()
        if (recipients is None) == (passphrase is None):
            raise ConfigError("age encryption needs either recipients or a passphrase (not both)")
        self._sink = sink
        self._closed = False
        self._counter = 0
        self._pending = bytearray()
        file_key = os.urandom(FILE_KEY_SIZE)
        if recipients is not None:
            parsed = [r if isinstance(r, Recipient) else Recipient.parse(r, describe_entry("recipient", i))
                      for i, r in enumerate(recipients)]
            if not parsed:
                raise ConfigError("no age recipients given")
            stanzas = [self._x25519_stanza(file_key, r) for r in parsed]
        else:
            if passphrase is None:
                raise AssertionError("exactly one of recipients and passphrase (checked above)")
            if not isinstance(work_factor, int) or not 1 <= work_factor <= 40:
                raise ConfigError("scrypt work factor must be an integer from 1 to 40")
            salt = os.urandom(16)
            key = _scrypt_key(passphrase_bytes(passphrase), salt, work_factor)
            body = ChaCha20Poly1305(key).encrypt(ZERO_NONCE, file_key, None)
            stanzas = [_Stanza(b"scrypt", [_b64encode(salt), str(work_factor).encode()], body)]
        header = INTRO + b"".join(s.encode() for s in stanzas) + FOOTER_PREFIX
        mac = _header_mac(file_key, header)
        nonce = os.urandom(PAYLOAD_NONCE_SIZE)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        prelude = header + b" " + _b64encode(mac) + b"\n" + nonce
        #: sha256 of the header and payload nonce: pinned by a signature, it pins the file key, so every
        #: payload chunk is authentic as soon as it decrypts (see Decryptor.prelude_sha256)
        self.prelude_sha256 = hashlib.sha256(prelude).hexdigest()
        sink.write(prelude)

    @staticmethod
    def _x25519_stanza(file_key: bytes, recipient: Recipient) -> _Stanza:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        try:
            shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient.public_bytes))
        except ValueError:
            raise ConfigError("recipient %s is not a usable X25519 public key" % recipient)
        wrap_key = _hkdf(shared, share + recipient.public_bytes, X25519_LABEL)
        body = ChaCha20Poly1305(wrap_key).encrypt(ZERO_NONCE, file_key, None)
        return _Stanza(b"X25519", [_b64encode(share)], body)

    def _emit(self, plaintext, last: bool) -> None:
        self._sink.write(self._aead.encrypt(_chunk_nonce(self._counter, last), bytes(plaintext), None))
        self._counter += 1

    def write(self, data) -> int:
        if self._closed:
            raise ValueError("write to a closed age Encryptor")
        view = memoryview(data).cast("B")
        size = len(view)
        pos = 0
        pending = self._pending
        while pos < size:
            # A chunk is only emitted once more data follows: the last chunk carries a flag.
            if len(pending) == CHUNK_SIZE:
                self._emit(pending, last=False)
                pending.clear()
            if not pending and size - pos > CHUNK_SIZE:
                self._emit(view[pos:pos + CHUNK_SIZE], last=False)
                pos += CHUNK_SIZE
                continue
            take = min(CHUNK_SIZE - len(pending), size - pos)
            pending += view[pos:pos + take]
            pos += take
        return size

    def flush(self) -> None:
        """Nothing to flush before close: a partial chunk cannot be written early."""

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        """Write the final chunk (empty only if the whole payload is empty). Does not close the sink."""
        if self._closed:
            return
        self._emit(self._pending, last=True)
        self._pending = bytearray()
        self._closed = True

    def abort(self) -> None:
        """Stop without writing the final chunk, so the output can never decrypt as complete."""
        self._closed = True
        self._pending = bytearray()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Encryptor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Decryptor(ReadMixin):
    """A read-only file-like object over the plaintext of an age file read from ``source``.

    ``Decryptor(source, identities=[...])`` or ``Decryptor(source, passphrase="...")``; identities
    may be ``Identity`` objects or ``AGE-SECRET-KEY-1...`` strings. The header is read and checked
    on construction. ``read()`` raises IntegrityError on tampering, truncation or trailing data.
    """

    def __init__(self, source, identities: Optional[Sequence[Union[Identity, str]]] = None,
                 passphrase: Optional[Union[str, bytes]] = None,
                 max_work_factor: int = DEFAULT_MAX_WORK_FACTOR):
        require_cryptography()
        if (identities is None) == (passphrase is None):
            raise ConfigError("age decryption needs either identities or a passphrase (not both)")
        self._src = _BufferedSource(source)
        stanzas, header, mac, mac_line = _parse_header(self._src)
        if identities is not None:
            parsed = [i if isinstance(i, Identity) else Identity.parse(i, describe_entry("identity", n))
                      for n, i in enumerate(identities)]
            if not parsed:
                raise ConfigError("no age identities given")
            file_key = self._unwrap_x25519(stanzas, parsed)
        else:
            if passphrase is None:
                raise AssertionError("exactly one of identities and passphrase (checked above)")
            file_key = self._unwrap_scrypt(stanzas, passphrase_bytes(passphrase), max_work_factor)
        if not hmac.compare_digest(_header_mac(file_key, header), mac):
            raise IntegrityError("age header MAC mismatch: the archive header was tampered with")
        nonce = self._src.read_exact(PAYLOAD_NONCE_SIZE)
        if len(nonce) != PAYLOAD_NONCE_SIZE:
            raise IntegrityError("age file truncated: payload nonce missing")
        #: sha256 of the header as read and the payload nonce (Encryptor.prelude_sha256). When it equals a
        #: value the writer signed, the file key is the writer's: a share writer who replaced the object
        #: cannot make a single chunk decrypt, so each chunk is authentic as it comes, not only at the end.
        self.prelude_sha256 = hashlib.sha256(header + mac_line + nonce).hexdigest()
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._plain = b""
        self._offset = 0
        self._done = False
        self._closed = False

    @staticmethod
    def _unwrap_x25519(stanzas: List[_Stanza], identities: List[Identity]) -> bytes:
        if any(s.kind == b"scrypt" for s in stanzas):
            raise ArchiveError("this archive is encrypted with a passphrase, not to X25519 recipients: "
                               "give the passphrase")
        candidates = [s for s in stanzas if s.kind == b"X25519"]
        for stanza in candidates:
            if len(stanza.args) != 1:
                raise IntegrityError("corrupt age header: malformed X25519 stanza")
            share = _b64decode(stanza.args[0], "X25519 share")
            if len(share) != 32 or len(stanza.body) != FILE_KEY_SIZE + TAG_SIZE:
                raise IntegrityError("corrupt age header: malformed X25519 stanza")
            for identity in identities:
                try:
                    shared = identity.exchange(share)
                except ValueError:
                    raise IntegrityError("corrupt age header: invalid X25519 share")
                wrap_key = _hkdf(shared, share + identity.recipient.public_bytes, X25519_LABEL)
                try:
                    return ChaCha20Poly1305(wrap_key).decrypt(ZERO_NONCE, stanza.body, None)
                except InvalidTag:
                    continue
        raise ArchiveError("no identity matches this archive's recipients")

    @staticmethod
    def _unwrap_scrypt(stanzas: List[_Stanza], passphrase: bytes, max_work_factor: int) -> bytes:
        scrypt = [s for s in stanzas if s.kind == b"scrypt"]
        if not scrypt:
            raise ArchiveError("this archive is encrypted to X25519 recipients, not with a passphrase: "
                               "give an identity (AGE-SECRET-KEY-1...)")
        if len(stanzas) != 1:
            raise IntegrityError("corrupt age header: a scrypt stanza must be the only stanza")
        stanza = scrypt[0]
        if len(stanza.args) != 2 or len(stanza.body) != FILE_KEY_SIZE + TAG_SIZE:
            raise IntegrityError("corrupt age header: malformed scrypt stanza")
        salt = _b64decode(stanza.args[0], "scrypt salt")
        factor_text = stanza.args[1]
        if len(salt) != 16 or not re.match(rb"^[1-9][0-9]?$", factor_text):
            raise IntegrityError("corrupt age header: malformed scrypt stanza")
        work_factor = int(factor_text)
        if work_factor > max_work_factor:
            # Checked before any scrypt runs: a share writer must not make us spend GiBs (1 KiB x 2^factor).
            raise ArchiveError("the archive's scrypt work factor %d exceeds the allowed maximum %d "
                               "(decryption.max_scrypt_work_factor): deriving its key would take %d MiB of memory; "
                               "refusing it" % (work_factor, max_work_factor, (1 << work_factor) // 1024))
        key = _scrypt_key(passphrase, salt, work_factor)
        try:
            return ChaCha20Poly1305(key).decrypt(ZERO_NONCE, stanza.body, None)
        except InvalidTag:
            raise ArchiveError("wrong passphrase")

    def _decrypt(self, chunk: bytes, last: bool) -> Optional[bytes]:
        try:
            return self._aead.decrypt(_chunk_nonce(self._counter, last), chunk, None)
        except InvalidTag:
            return None

    def _next_chunk(self) -> None:
        """Decrypt the next chunk into ``self._plain``; sets ``self._done`` after the last one."""
        # Read one byte more than a full chunk: whether more data follows decides the last flag.
        data = self._src.read_exact(ENCRYPTED_CHUNK_SIZE + 1)
        more_follows = len(data) > ENCRYPTED_CHUNK_SIZE
        chunk = data[:ENCRYPTED_CHUNK_SIZE]
        if more_follows:
            self._src.unread(data[ENCRYPTED_CHUNK_SIZE:])
        if len(chunk) < TAG_SIZE:
            if not chunk and self._counter > 0:
                raise IntegrityError("age file truncated: the final chunk is missing")
            raise IntegrityError("age file truncated or corrupt: incomplete chunk")
        if more_follows:
            plain = self._decrypt(chunk, last=False)
            if plain is None:
                if self._decrypt(chunk, last=True) is not None:
                    raise IntegrityError("trailing data after the end of the age payload")
                raise IntegrityError("age payload corrupt or tampered (chunk %d)" % self._counter)
        else:
            plain = self._decrypt(chunk, last=True)
            if plain is None:
                if len(chunk) == ENCRYPTED_CHUNK_SIZE and self._decrypt(chunk, last=False) is not None:
                    raise IntegrityError("age file truncated: the final chunk is missing")
                raise IntegrityError("age payload corrupt, tampered, truncated or followed by trailing data "
                                     "(chunk %d)" % self._counter)
            if not plain and self._counter > 0:
                raise IntegrityError("age payload invalid: empty final chunk")
            self._done = True
        self._counter += 1
        self._plain = plain
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        if self._closed:
            raise ValueError("read from a closed age Decryptor")
        if size is None or size < 0:
            parts: List[bytes] = []
            while True:
                part = self.read(CHUNK_SIZE)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        while self._offset >= len(self._plain):
            if self._done or size == 0:
                return b""
            self._next_chunk()
        end = self._offset + size
        data = self._plain[self._offset:end]
        self._offset += len(data)
        return data

    def close(self) -> None:
        """Forget the key and buffers; does not close the source."""
        self._closed = True
        self._plain = b""

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Decryptor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def looks_like_age(prefix: bytes) -> bool:
    """Whether the first bytes of a file (at least 19 of them) look like an age file."""
    return prefix.startswith(b"age-encryption.org/")
