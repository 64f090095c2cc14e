# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""age v1: round trips, interop with the age CLI and pyrage, tampering, truncation, key handling."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pyrage
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.segura.backup.plugins.module_utils._engine import age
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ArchiveError, ConfigError, IntegrityError

SIZES = [0, 1, 65535, 65536, 65537, 3 * 1024 * 1024 + 7]
FAST = 10  # scrypt work factor for tests (the default 18 takes ~1 s per operation)
CHUNK = age.CHUNK_SIZE
ENC_CHUNK = age.ENCRYPTED_CHUNK_SIZE

needs_age_cli = pytest.mark.skipif(shutil.which("age") is None, reason="age CLI not installed")


def payload(size: int) -> bytes:
    return os.urandom(size)


def encrypt(data: bytes, split: int = 0, **kwargs) -> bytes:
    sink = io.BytesIO()
    enc = age.Encryptor(sink, **kwargs)
    if split:
        for i in range(0, len(data), split):
            enc.write(data[i:i + split])
    else:
        enc.write(data)
    enc.close()
    return sink.getvalue()


def decrypt(blob: bytes, read_size: int = -1, **kwargs) -> bytes:
    dec = age.Decryptor(io.BytesIO(blob), **kwargs)
    if read_size < 0:
        return dec.read()
    parts = []
    while True:
        part = dec.read(read_size)
        if not part:
            return b"".join(parts)
        parts.append(part)


@pytest.fixture(scope="module")
def keypair():
    return age.generate_identity()


@pytest.fixture()
def keyfile(tmp_path, keypair):
    """A 0600 identity file as age-keygen writes it (with comments)."""
    path = tmp_path / "key.txt"
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# created: 2024-01-01T00:00:00Z\n# public key: %s\n%s\n" % (keypair[1], keypair[0]))
    return str(path)


def header_end(blob: bytes) -> int:
    """Offset of the payload nonce (just after the '--- MAC' line)."""
    return blob.index(b"\n---") + blob[blob.index(b"\n---") + 1:].index(b"\n") + 2


# --- keys -------------------------------------------------------------------------------------------


def test_generated_identity_matches_age_keygen(keyfile, keypair):
    out = subprocess.run(["age-keygen", "-y", keyfile], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == keypair[1] == age.public_of(keypair[0])


def test_parse_age_keygen_file(tmp_path):
    path = tmp_path / "k.txt"
    subprocess.run(["age-keygen", "-o", str(path)], capture_output=True, check=True)
    text = path.read_text()
    identities = age.parse_identities(text)
    public = [line.split(": ")[1] for line in text.splitlines() if line.startswith("# public key")][0]
    assert [str(i.recipient) for i in identities] == [public]


def test_identity_repr_hides_secret(keypair):
    identity = age.parse_identities([keypair[0]])[0]
    assert keypair[0] not in repr(identity) and keypair[0] not in str(identity)
    assert keypair[0].lower() not in repr(identity).lower()
    assert keypair[1] in repr(identity)
    assert identity.secret_string() == keypair[0]


@pytest.mark.parametrize("bad, words", [
    ("age1qqqq", "not a valid age recipient"),
    ("hello", "must start with 'age1'"),
    ("ssh-ed25519 AAAAC3Nza", "SSH key"),
    (age.bech32_encode("age1yubikey", b"\x02" * 33), "plugin recipient"),
])
def test_bad_recipient_named(bad, words, keypair):
    with pytest.raises(ConfigError) as err:
        age.parse_recipients([keypair[1], bad])
    assert "recipient #2" in str(err.value) and words in str(err.value)


def test_recipient_bad_checksum(keypair):
    broken = keypair[1][:-1] + ("q" if keypair[1][-1] != "q" else "p")
    with pytest.raises(ConfigError, match="recipient #1.*checksum"):
        age.parse_recipients([broken])


def test_secret_key_as_recipient_is_refused_without_echo(keypair):
    with pytest.raises(ConfigError) as err:
        age.parse_recipients([keypair[0]])
    assert "secret key" in str(err.value) and keypair[0] not in str(err.value)


def test_bad_identity_line_named_without_echo(keypair):
    broken = keypair[0][:-3] + "QQQ"
    text = "# comment\n\n%s\n%s\n" % (keypair[0], broken)
    with pytest.raises(ConfigError) as err:
        age.parse_identities(text)
    message = str(err.value)
    assert "identity #1 (line 4)" in message
    assert broken not in message and keypair[0] not in message and broken[20:40] not in message


def test_public_key_as_identity_is_refused(keypair):
    with pytest.raises(ConfigError, match="public key"):
        age.parse_identities([keypair[1]])


def test_empty_lists_refused():
    with pytest.raises(ConfigError):
        age.parse_recipients(["# only a comment\n"])
    with pytest.raises(ConfigError):
        age.parse_identities([])
    with pytest.raises(ConfigError):
        age.Encryptor(io.BytesIO(), recipients=[])
    with pytest.raises(ConfigError):
        age.Encryptor(io.BytesIO(), passphrase="")


def test_low_order_recipient_refused():
    zero_point = age.bech32_encode("age", b"\x00" * 32)
    with pytest.raises(ConfigError, match="not a usable"):
        age.Encryptor(io.BytesIO(), recipients=[zero_point])


# --- round trips and interop -----------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_roundtrip_x25519_multi_recipient(size, keypair):
    other = age.generate_identity()
    data = payload(size)
    blob = encrypt(data, recipients=[keypair[1], other[1]])
    assert decrypt(blob, identities=[keypair[0]]) == data
    assert decrypt(blob, read_size=1000, identities=[other[0]]) == data
    expected_chunks = max(1, -(-size // CHUNK))
    assert len(blob) - header_end(blob) == 16 + size + 16 * expected_chunks


@needs_age_cli
@pytest.mark.parametrize("size", SIZES)
def test_age_cli_decrypts_ours(size, keypair, keyfile):
    data = payload(size)
    blob = encrypt(data, recipients=[age.generate_identity()[1], keypair[1]])
    out = subprocess.run(["age", "-d", "-i", keyfile], input=blob, capture_output=True, check=True)
    assert out.stdout == data


@needs_age_cli
@pytest.mark.parametrize("size", SIZES)
def test_we_decrypt_age_cli(size, keypair):
    data = payload(size)
    other = age.generate_identity()
    blob = subprocess.run(["age", "-r", keypair[1], "-r", other[1]], input=data, capture_output=True,
                          check=True).stdout
    assert decrypt(blob, identities=[keypair[0]]) == data
    assert decrypt(blob, read_size=4097, identities=[other[0]]) == data


@pytest.mark.parametrize("size", SIZES)
def test_pyrage_interop_x25519(size, keypair):
    data = payload(size)
    ours = encrypt(data, recipients=[keypair[1]])
    assert pyrage.decrypt(ours, [pyrage.x25519.Identity.from_str(keypair[0])]) == data
    theirs = pyrage.encrypt(data, [pyrage.x25519.Recipient.from_str(keypair[1])])
    assert decrypt(theirs, identities=[keypair[0]]) == data


@pytest.mark.parametrize("size", SIZES)
def test_pyrage_decrypts_our_passphrase(size):
    data = payload(size)
    ours = encrypt(data, passphrase="correct horse", work_factor=FAST)
    assert pyrage.passphrase.decrypt(ours, "correct horse") == data


def test_we_decrypt_pyrage_passphrase():
    """One size only: rage calibrates its scrypt work factor to about a second per call."""
    data = payload(2 * CHUNK + 5)
    theirs = pyrage.passphrase.encrypt(data, "correct horse")
    assert decrypt(theirs, passphrase="correct horse") == data
    with pytest.raises(ArchiveError, match="wrong passphrase"):
        decrypt(theirs, passphrase="correct horsE")


def test_passphrase_default_work_factor_is_18():
    blob = encrypt(b"x", passphrase="pw")
    assert blob.split(b"\n")[1].split(b" ")[-1] == b"18"
    assert decrypt(blob, passphrase="pw") == b"x"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3 * CHUNK + 10), split=st.integers(min_value=0, max_value=CHUNK + 3),
       read_size=st.integers(min_value=-1, max_value=CHUNK + 3))
def test_roundtrip_property(data, split, read_size):
    secret, public = _PROPERTY_KEYS
    blob = encrypt(data, split=split, recipients=[public])
    assert decrypt(blob, read_size=read_size or 1, identities=[secret]) == data


_PROPERTY_KEYS = age.generate_identity()


@settings(max_examples=15, deadline=None)
@given(data=st.binary(max_size=2 * CHUNK + 10), split=st.integers(min_value=0, max_value=CHUNK + 3))
def test_passphrase_roundtrip_property(data, split):
    blob = encrypt(data, split=split, passphrase="pw ü", work_factor=2)
    assert decrypt(blob, passphrase="pw ü") == data


# --- wrong keys --------------------------------------------------------------------------------------


def test_wrong_identity(keypair):
    blob = encrypt(b"secret", recipients=[keypair[1]])
    with pytest.raises(ArchiveError, match="no identity matches") as err:
        decrypt(blob, identities=[age.generate_identity()[0]])
    assert not isinstance(err.value, IntegrityError)


def test_wrong_passphrase():
    blob = encrypt(b"secret", passphrase="right", work_factor=FAST)
    with pytest.raises(ArchiveError, match="wrong passphrase"):
        decrypt(blob, passphrase="wrong")


def test_passphrase_versus_key_mismatch(keypair):
    with pytest.raises(ArchiveError, match="encrypted with a passphrase"):
        decrypt(encrypt(b"x", passphrase="pw", work_factor=FAST), identities=[keypair[0]])
    with pytest.raises(ArchiveError, match="encrypted to X25519 recipients"):
        decrypt(encrypt(b"x", recipients=[keypair[1]]), passphrase="pw")


def test_excessive_work_factor_refused():
    blob = encrypt(b"x", passphrase="pw", work_factor=12)
    with pytest.raises(ArchiveError, match="work factor 12 exceeds"):
        age.Decryptor(io.BytesIO(blob), passphrase="pw", max_work_factor=11)


def test_not_age():
    with pytest.raises(ArchiveError, match="not an age-encrypted file"):
        age.Decryptor(io.BytesIO(b"\x28\xb5\x2f\xfd garbage"), passphrase="pw")


# --- tampering and truncation --------------------------------------------------------------------------


def flip(blob: bytes, offset: int) -> bytes:
    return blob[:offset] + bytes([blob[offset] ^ 0x01]) + blob[offset + 1:]


@pytest.fixture(scope="module")
def sealed(keypair):
    data = payload(2 * CHUNK + 1000)
    return data, encrypt(data, recipients=[keypair[1]])


def test_header_bit_flips_refused(sealed, keypair):
    data, blob = sealed
    end = header_end(blob)
    for offset in range(0, end - 1, 7):  # every 7th header byte, except the final newline
        with pytest.raises(ArchiveError):
            decrypt(flip(blob, offset), identities=[keypair[0]])


def test_mac_flip_is_integrity_error(sealed, keypair):
    _data, blob = sealed
    with pytest.raises(IntegrityError):
        decrypt(flip(blob, header_end(blob) - 5), identities=[keypair[0]])


@pytest.mark.parametrize("where", ["nonce", "first chunk", "middle chunk", "final chunk", "final tag"])
def test_body_bit_flips_refused(where, sealed, keypair):
    _data, blob = sealed
    start = header_end(blob)
    offset = {"nonce": start + 3, "first chunk": start + 16 + 10, "middle chunk": start + 16 + ENC_CHUNK + 500,
              "final chunk": start + 16 + 2 * ENC_CHUNK + 3, "final tag": len(blob) - 1}[where]
    with pytest.raises(IntegrityError):
        decrypt(flip(blob, offset), identities=[keypair[0]])


def test_truncations_refused(sealed, keypair):
    _data, blob = sealed
    start = header_end(blob)
    cuts = [10, start - 10, start, start + 8, start + 16, start + 16 + 100, start + 16 + ENC_CHUNK,
            start + 16 + 2 * ENC_CHUNK, len(blob) - 1]
    for cut in cuts:
        with pytest.raises(IntegrityError):
            decrypt(blob[:cut], identities=[keypair[0]])


def test_missing_final_chunk_message(sealed, keypair):
    _data, blob = sealed
    with pytest.raises(IntegrityError, match="final chunk is missing"):
        decrypt(blob[:header_end(blob) + 16 + 2 * ENC_CHUNK], identities=[keypair[0]])


def test_trailing_data_refused(sealed, keypair):
    _data, blob = sealed
    with pytest.raises(IntegrityError, match="trailing data"):  # a short final chunk cannot tell which
        decrypt(blob + b"x", identities=[keypair[0]])
    exact = encrypt(payload(CHUNK), recipients=[keypair[1]])
    with pytest.raises(IntegrityError, match="trailing data"):
        decrypt(exact + b"\x00" * 20, identities=[keypair[0]])


def test_swapped_chunks_refused(sealed, keypair):
    _data, blob = sealed
    body = header_end(blob) + 16
    first, second = blob[body:body + ENC_CHUNK], blob[body + ENC_CHUNK:body + 2 * ENC_CHUNK]
    swapped = blob[:body] + second + first + blob[body + 2 * ENC_CHUNK:]
    with pytest.raises(IntegrityError):
        decrypt(swapped, identities=[keypair[0]])


@needs_age_cli
def test_empty_final_chunk_after_full_chunk_refused(keypair, keyfile):
    """The spec forbids an empty last chunk unless the payload is empty; age and we both refuse it."""
    sink = io.BytesIO()
    enc = age.Encryptor(sink, recipients=[keypair[1]])
    enc.write(payload(CHUNK))
    enc._emit(enc._pending, last=False)  # hand-craft the forbidden layout
    enc._emit(b"", last=True)
    blob = sink.getvalue()
    with pytest.raises(IntegrityError, match="empty final chunk"):
        decrypt(blob, identities=[keypair[0]])
    assert subprocess.run(["age", "-d", "-i", keyfile], input=blob, capture_output=True, check=False).returncode != 0


def test_abort_leaves_undecryptable_output(keypair):
    sink = io.BytesIO()
    enc = age.Encryptor(sink, recipients=[keypair[1]])
    enc.write(payload(3 * CHUNK))
    enc.abort()
    with pytest.raises(ValueError):
        enc.write(b"more")
    with pytest.raises(IntegrityError):
        decrypt(sink.getvalue(), identities=[keypair[0]])


@pytest.mark.parametrize("kwargs", [{"recipients": None}, {"passphrase": "correct horse", "work_factor": FAST}])
def test_the_prelude_hash_is_the_same_for_writer_and_reader_and_new_for_each_file(kwargs):
    """What a signed sidecar pins (Encryptor/Decryptor.prelude_sha256): the header and payload nonce,
    the same on both sides, different for every file even of the same plaintext and key."""
    identity, recipient = age.generate_identity()
    if "recipients" in kwargs:
        kwargs = {"recipients": [recipient]}
    opener = {"identities": [identity]} if "recipients" in kwargs else {"passphrase": kwargs["passphrase"]}
    hashes = []
    for _round in range(2):
        sink = io.BytesIO()
        enc = age.Encryptor(sink, **kwargs)
        enc.write(b"same plaintext")
        enc.close()
        dec = age.Decryptor(io.BytesIO(sink.getvalue()), **opener)
        assert dec.read() == b"same plaintext"
        assert dec.prelude_sha256 == enc.prelude_sha256
        hashes.append(enc.prelude_sha256)
    assert hashes[0] != hashes[1]
