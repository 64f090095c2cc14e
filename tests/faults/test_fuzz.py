"""Fuzzing the readers with hypothesis (bounded examples, no deadline).

- The archive reader on mutated copies of a small valid archive (byte flips, truncations,
  insertions): it fails only with our BackupError subclasses, and whenever it accepts an archive
  whose bytes changed, every member it yielded is byte for byte the original (a change never
  yields a member that verifies).
- The same on an age-encrypted archive (any change must be refused).
- The sidecar, session-list and manifest parsers on random JSON: only IntegrityError, never a crash.
Retention properties live in tests/unit/test_retention.py.
"""

import io
import json
import tarfile

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.archive import reader as archive_reader
from ansible_collections.segura.backup.plugins.module_utils._engine.age import generate_identity
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.reader import ArchiveReader
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.writer import ArchiveWriter
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError, IntegrityError

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def _small_archive(encryption):
    out = io.BytesIO()
    writer = ArchiveWriter(out, encryption, chunk_size=4096)
    writer.add_json("snapshot.json", {"format": "segura.backup/1", "id": "0badc0de", "appliance": "fuzz",
                                      "created": "2026-01-01T00:00:00Z", "components": ["database"], "facts": {}})
    writer.add_stream("db/dump.sql", io.BytesIO(b"INSERT INTO t VALUES (1);\n" * 400))
    writer.finish({"sessions": []})
    return out.getvalue()


def _members(data, decryption):
    """{name: content} of every member, read strictly (manifest checked at the end)."""
    reader = ArchiveReader(io.BytesIO(data), decryption)
    try:
        return {info.name: content.read() for info, content in reader}
    finally:
        reader.close()


PLAIN = _small_archive(Encryption.none())
PLAIN_MEMBERS = _members(PLAIN, Decryption.none())
SECRET, RECIPIENT = generate_identity()
ENCRYPTED = _small_archive(Encryption.recipients_of([RECIPIENT]))
KEY = Decryption.identities_of([SECRET])


def _mutations(size):
    position = st.integers(min_value=0, max_value=size - 1)
    flip = st.tuples(st.just("flip"), position, st.integers(min_value=1, max_value=255))
    truncate = st.tuples(st.just("truncate"), position, st.just(0))
    insert = st.tuples(st.just("insert"), position, st.integers(min_value=0, max_value=255))
    return st.lists(st.one_of(flip, truncate, insert), min_size=1, max_size=4)


def _apply(data, mutations):
    buffer = bytearray(data)
    for kind, position, value in mutations:
        position = min(position, max(len(buffer) - 1, 0))
        if kind == "flip" and buffer:
            buffer[position] ^= value
        elif kind == "truncate":
            del buffer[position:]
        elif kind == "insert":
            buffer.insert(position, value)
    return bytes(buffer)


def _read_mutated(data, decryption):
    try:
        members = _members(data, decryption)
    except BackupError:
        return None
    return members


@settings(max_examples=200, **SETTINGS)
@given(_mutations(len(PLAIN)))
def test_mutated_plain_archive_never_yields_changed_members(mutations):
    mutated = _apply(PLAIN, mutations)
    members = _read_mutated(mutated, Decryption.none())  # anything but a BackupError fails the test
    if members is not None:
        assert members == PLAIN_MEMBERS  # accepted: then nothing that matters changed
        report = archive_reader.verify(io.BytesIO(mutated), Decryption.none())
        assert report.ok, report.problems


@settings(max_examples=40, **SETTINGS)
@given(_mutations(len(ENCRYPTED)))
def test_mutated_encrypted_archive_is_refused(mutations):
    mutated = _apply(ENCRYPTED, mutations)
    if mutated == ENCRYPTED:
        return
    assert _read_mutated(mutated, KEY) is None
    try:
        assert not archive_reader.verify(io.BytesIO(mutated), KEY).ok
    except BackupError:
        pass  # a header that no longer opens with the key: ArchiveError, as documented


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)
SIDECAR_KEYS = ["format", "id", "appliance", "created", "object", "size", "sha256", "components", "counts",
                "bytes_in", "versions", "encryption", "db", "sessions", "duration"]


def _sidecar_like(draw_values):
    """A real sidecar with some fields replaced by random JSON (reaches the deeper checks)."""
    doc = {"format": "segura.backup/1", "id": "0badc0de", "appliance": "fuzz", "created": "2026-01-01T00:00:00Z",
           "object": "20260101T000000Z-0badc0de.tar.zst.age", "size": 1, "sha256": "0" * 64,
           "components": ["database"], "counts": {}, "bytes_in": 1, "versions": {"appliance": None, "tool": "0.1"},
           "encryption": {"mode": "x25519", "recipients": []}, "db": None, "sessions": {"count": 0, "bytes": 0},
           "duration": 0.1}
    doc.update(draw_values)
    return doc


@settings(max_examples=200, **SETTINGS)
@given(st.one_of(JSON, st.dictionaries(st.sampled_from(SIDECAR_KEYS), JSON, max_size=4).map(_sidecar_like)),
       st.binary(max_size=40))
def test_sidecar_and_session_list_parsers_raise_only_integrity_errors(doc, garbage):
    for data in (json.dumps(doc).encode(), garbage):
        try:
            catalog.Sidecar.from_json(data, "fuzz.json")
        except IntegrityError:
            pass
        try:
            catalog.parse_sessions_list(data, "fuzz.sessions.json", "0badc0de", "fuzz")
        except IntegrityError:
            pass


def _archive_with_manifest(manifest_bytes):
    """snapshot.json + manifest.json (any bytes), compressed, unencrypted."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("snapshot.json", b'{"id": "0badc0de", "appliance": "fuzz"}'),
                           ("manifest.json", manifest_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor().compress(raw.getvalue())


MANIFEST_KEYS = ["format", "id", "appliance", "members", "db", "sessions"]


@settings(max_examples=200, **SETTINGS)
@given(st.one_of(JSON, st.dictionaries(st.sampled_from(MANIFEST_KEYS), JSON, max_size=6),
                 st.fixed_dictionaries({"format": st.just("segura.backup/1"),
                                        "members": st.lists(st.dictionaries(st.sampled_from(
                                            ["name", "type", "size", "sha256", "mode"]), JSON), max_size=3),
                                        "db": JSON})))
def test_manifest_checks_report_problems_never_crash(manifest):
    report = archive_reader.verify(io.BytesIO(_archive_with_manifest(json.dumps(manifest).encode())), Decryption.none())
    assert not report.ok  # snapshot.json is not in any of these manifests


def test_manifest_member_name_that_is_not_a_string_is_a_problem_not_a_crash():
    """Regression: a member list entry whose name was a list crashed problems() with TypeError."""
    manifest = {"format": "segura.backup/1", "members": [{"name": ["snapshot.json"]}]}
    report = archive_reader.verify(io.BytesIO(_archive_with_manifest(json.dumps(manifest).encode())), Decryption.none())
    assert not report.ok
    assert "no valid member list" in "; ".join(report.problems)
