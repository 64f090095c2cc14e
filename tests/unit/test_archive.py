# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Snapshot objects: write, read back, verify, recover with standard tools, refuse unsafe input."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.segura.backup.plugins.module_utils._engine import age
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.format import DB_PREFIX, FORMAT
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.reader import ArchiveReader, read_metadata, verify
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.writer import ArchiveWriter
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import (
    ApplianceError,
    ArchiveError,
    ConfigError,
    IntegrityError,
)

SNAPSHOT = {"format": FORMAT, "id": "abc123", "appliance": "pam-01", "created": "2024-05-01T02:00:00Z",
            "components": ["db", "files"], "facts": {"version": "3.30"}}
KEYS = age.generate_identity()


def tools_available(*names):
    return pytest.mark.skipif(any(shutil.which(n) is None for n in names), reason="needs %s" % ", ".join(names))


@pytest.fixture()
def tree(tmp_path):
    """A small config tree: files with modes, a unicode and a long name, a subdir and a symlink."""
    root = tmp_path / "src"
    (root / "etc" / "senhasegura").mkdir(parents=True)
    files = {
        "etc/senhasegura/app.conf": b"[db]\nhost=localhost\n",
        "etc/senhasegura/secret.key": os.urandom(5000),
        "etc/senhasegura/ção-ünïcode.txt": "olá".encode("utf-8"),
        "etc/senhasegura/" + "l" * 180 + ".cfg": b"long name\n",
        "etc/empty": b"",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    os.chmod(str(root / "etc/senhasegura/secret.key"), 0o600)
    os.symlink("app.conf", str(root / "etc/senhasegura/current.conf"))
    return root, files


def build(sink, encryption, tree=None, db=b"", chunk_size=1000, **kwargs):
    """Write a full object: snapshot.json, db chunks, then files/ as the snapshot module would."""
    writer = ArchiveWriter(sink, encryption, chunk_size=chunk_size, **kwargs)
    writer.add_json("snapshot.json", SNAPSHOT)
    info = writer.add_stream(DB_PREFIX, io.BytesIO(db))
    if tree is not None:
        root, _files = tree
        for dirpath, dirnames, filenames in os.walk(str(root)):
            dirnames.sort()
            rel = os.path.relpath(dirpath, str(root))
            writer.add_dir("files/" + rel if rel != "." else "files", dirpath)
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                member = "files/" + os.path.relpath(path, str(root))
                if os.path.islink(path):
                    writer.add_symlink(member, path)
                else:
                    writer.add_file(member, path)
    result = writer.finish({"facts": {"version": "3.30"}, "sessions": []})
    return info, result


# --- options ---------------------------------------------------------------------------------------


def test_encryption_options():
    assert Encryption.recipients([KEYS[1]]).recipient_strings() == [KEYS[1]]
    assert Encryption.from_options(recipients=[KEYS[1]]).mode == "recipients"
    assert Encryption.from_options(passphrase="pw").mode == "passphrase"
    assert Encryption.from_options(mode="none").suffix == ".tar.zst"
    assert Encryption.passphrase("pw").suffix == ".tar.zst.age"
    for kwargs in ({}, {"recipients": [KEYS[1]], "passphrase": "pw"}, {"mode": "none", "passphrase": "pw"},
                   {"mode": "recipients"}, {"mode": "passphrase"}, {"mode": "rot13"}):
        with pytest.raises(ConfigError):
            Encryption.from_options(**kwargs)
    assert "hunter2" not in repr(Encryption.passphrase("hunter2"))


def test_bad_recipient_option_is_named():
    with pytest.raises(ConfigError, match="recipient #2"):
        Encryption.from_options(recipients=[KEYS[1], "age1notakey"])


def test_decryption_options(tmp_path):
    keyfile = tmp_path / "key.txt"
    keyfile.write_text("# public key: %s\n%s\n" % (KEYS[1], KEYS[0]))
    assert Decryption.from_options(identity_file=str(keyfile)).identities[0].recipient == age.Recipient.parse(KEYS[1])
    assert Decryption.from_options().mode == "none"
    with pytest.raises(ConfigError, match="only one"):
        Decryption.from_options(identities=[KEYS[0]], passphrase="pw")
    with pytest.raises(ConfigError, match="cannot read identity file"):
        Decryption.from_options(identity_file=str(tmp_path / "missing"))
    keyfile.write_text("# x\nAGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(ConfigError, match=r"identity file .*identity #1 \(line 2\)"):
        Decryption.identity_file(str(keyfile))
    assert KEYS[0] not in repr(Decryption.identities([KEYS[0]]))


# --- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["recipients", "passphrase", "none"])
def test_roundtrip_and_verify(mode, tree):
    enc = {"recipients": Encryption.recipients([KEYS[1]]), "passphrase": Encryption.passphrase("pw", work_factor=4),
           "none": Encryption.none()}[mode]
    dec = {"recipients": Decryption.identities([KEYS[0]]), "passphrase": Decryption.passphrase("pw"),
           "none": Decryption.none()}[mode]
    db = os.urandom(2500)
    sink = io.BytesIO()
    info, result = build(sink, enc, tree, db=db)
    blob = sink.getvalue()
    assert (info.chunks, info.bytes, info.sha256) == (3, 2500, hashlib.sha256(db).hexdigest())
    assert result.bytes_out == len(blob) and result.sha256 == hashlib.sha256(blob).hexdigest()
    assert result.manifest["db"] == info.as_dict() and result.manifest["id"] == "abc123"
    assert blob.startswith(b"age-encryption.org/v1\n") == (mode != "none")

    report = verify(io.BytesIO(blob), dec)
    assert report.ok, report.problems
    assert report.object_sha256 == result.sha256 and report.object_bytes == len(blob)
    assert report.members == result.members and report.bytes == result.bytes_in
    assert report.snapshot == SNAPSHOT and report.manifest == result.manifest

    root, files = tree
    seen = {}
    reader = ArchiveReader(io.BytesIO(blob), dec)
    for member, content in reader:
        seen[member.name] = (member, content.read())
    names = list(seen)
    assert names[0] == "snapshot.json" and "manifest.json" not in names
    assert b"".join(seen["db/dump.sql.%06d" % i][1] for i in range(3)) == db
    for rel, data in files.items():
        member, content = seen["files/" + rel]
        assert content == data and member.type == "file"
        assert member.mode == os.stat(str(root / rel)).st_mode & 0o7777
    link = seen["files/etc/senhasegura/current.conf"][0]
    assert (link.type, link.linkname) == ("symlink", "app.conf")
    assert seen["files/etc/senhasegura"][0].type == "dir"
    listed = {m["name"]: m for m in result.manifest["members"]}
    assert listed["files/etc/senhasegura/secret.key"]["mode"] == 0o600
    assert listed["files/etc/senhasegura/secret.key"]["sha256"] == hashlib.sha256(
        files["etc/senhasegura/secret.key"]).hexdigest()
    assert listed["files/etc/senhasegura/current.conf"]["linkname"] == "app.conf"


def test_partial_reads_still_hash_everything(tree):
    sink = io.BytesIO()
    build(sink, Encryption.none(), tree, db=os.urandom(3000))
    count = 0
    for _member, content in ArchiveReader(io.BytesIO(sink.getvalue()), Decryption.none()):
        content.read(1)  # the reader drains the rest itself; the final check must still pass
        count += 1
    assert count > 5


def test_read_metadata(tree):
    sink = io.BytesIO()
    _info, result = build(sink, Encryption.recipients([KEYS[1]]), tree)
    snapshot, manifest = read_metadata(io.BytesIO(sink.getvalue()), Decryption.identities([KEYS[0]]))
    assert snapshot == SNAPSHOT and manifest == result.manifest


@pytest.mark.parametrize("length, chunks", [(0, 1), (1000, 1), (1001, 2), (2000, 2), (2001, 3)])
def test_stream_chunk_boundaries(length, chunks):
    data = os.urandom(length)
    sink = io.BytesIO()
    info, result = build(sink, Encryption.none(), db=data, chunk_size=1000)
    assert (info.chunks, info.bytes) == (chunks, length)
    sizes = [m["size"] for m in result.manifest["members"] if m["name"].startswith(DB_PREFIX)]
    assert len(sizes) == chunks and sum(sizes) == length and all(s == 1000 for s in sizes[:-1])
    contents = [c.read() for m, c in ArchiveReader(io.BytesIO(sink.getvalue()), Decryption.none())
                if m.name.startswith(DB_PREFIX)]
    assert b"".join(contents) == data


class _Trickle:
    """A reader that returns at most 7 bytes per call and has no readinto (like some pipes)."""

    def __init__(self, data):
        self._data = io.BytesIO(data)

    def read(self, size=-1):
        return self._data.read(min(7, size if size >= 0 else 7))


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=5000), chunk_size=st.integers(min_value=1, max_value=2100))
def test_stream_roundtrip_property(data, chunk_size):
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, Encryption.none(), chunk_size=chunk_size)
    writer.add_json("snapshot.json", SNAPSHOT)
    info = writer.add_stream(DB_PREFIX, _Trickle(data))
    writer.finish({})
    assert info.bytes == len(data) and info.chunks == max(1, -(-len(data) // chunk_size))
    report = verify(io.BytesIO(sink.getvalue()), Decryption.none())
    assert report.ok, report.problems
    assert report.manifest["db"]["sha256"] == hashlib.sha256(data).hexdigest()


# --- standard tools --------------------------------------------------------------------------------


@tools_available("age", "zstd", "tar")
def test_recovery_with_standard_tools(tree, tmp_path):
    keyfile = tmp_path / "key.txt"
    fd = os.open(str(keyfile), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# public key: %s\n%s\n" % (KEYS[1], KEYS[0]))
    db = b"".join(b"INSERT INTO t VALUES (%d);\n" % i for i in range(200))
    obj = tmp_path / "snap.tar.zst.age"
    with open(str(obj), "wb") as sink:
        build(sink, Encryption.recipients([age.generate_identity()[1], KEYS[1]]), tree, db=db, chunk_size=1000)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run("age -d -i %s %s | zstd -d | tar -x" % (keyfile, obj), shell=True, cwd=str(out), check=True)
    root, files = tree
    for rel, data in files.items():
        assert (out / "files" / rel).read_bytes() == data
    assert os.readlink(str(out / "files/etc/senhasegura/current.conf")) == "app.conf"
    assert (out / "files/etc/senhasegura/secret.key").stat().st_mode & 0o777 == 0o600
    restored = subprocess.run("cat db/dump.sql.*", shell=True, cwd=str(out), capture_output=True, check=True)
    assert restored.stdout == db
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["db"]["sha256"] == hashlib.sha256(db).hexdigest()
    listing = subprocess.run("age -d -i %s %s | zstd -d | tar -t" % (keyfile, obj), shell=True,
                             capture_output=True, check=True, text=True).stdout.split()
    assert listing[0] == "snapshot.json" and listing[-1] == "manifest.json"


# --- files that change -----------------------------------------------------------------------------


def test_vanished_file_named(tmp_path):
    writer = ArchiveWriter(io.BytesIO(), Encryption.none())
    writer.add_json("snapshot.json", SNAPSHOT)
    missing = str(tmp_path / "gone.conf")
    with pytest.raises(ApplianceError, match="gone.conf vanished"):
        writer.add_file("files/gone.conf", missing)
    with pytest.raises(ApplianceError, match="vanished"):
        writer.add_dir("files/nodir", str(tmp_path / "nodir"))


def test_fifo_refused_without_hanging(tmp_path):
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    writer = ArchiveWriter(io.BytesIO(), Encryption.none())
    with pytest.raises(ApplianceError, match="not a regular file"):
        writer.add_file("files/pipe", fifo)


class _MeddlingSink:
    """A real sink that, on its first write, changes the file being archived (as a busy appliance
    would). Random content keeps zstd emitting output long before the file is fully read."""

    def __init__(self, path, action):
        self._path = path
        self._action = action
        self.data = io.BytesIO()

    def write(self, data):
        if self._action:
            action, self._action = self._action, None
            action(self._path)
        return self.data.write(data)


def _grow(path):
    with open(path, "ab") as handle:
        handle.write(b"appended while reading")


def _shrink(path):
    os.truncate(path, 1000)


def _touch_same_size(path):
    with open(path, "r+b") as handle:
        handle.seek(8 * 1024 * 1024)
        handle.write(b"X")
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10 ** 9))


@pytest.mark.parametrize("action, words", [(_grow, "grew while"), (_shrink, "shrank while"),
                                           (_touch_same_size, "changed while")])
def test_file_changing_while_read(tmp_path, action, words):
    path = str(tmp_path / "busy.log")
    with open(path, "wb") as handle:
        handle.write(os.urandom(12 * 1024 * 1024))
    sink = _MeddlingSink(path, action)
    writer = ArchiveWriter(sink, Encryption.none(), zstd_level=1)
    writer.add_json("snapshot.json", SNAPSHOT)
    with pytest.raises(ApplianceError, match="busy.log %s" % words):
        writer.add_file("files/busy.log", path)
    with pytest.raises(ArchiveError, match="failed"):
        writer.finish({})
    writer.abort()


def test_stream_read_error_propagates():
    class Broken:
        def read(self, size=-1):
            raise ApplianceError("mariadb-dump failed: access denied")

    writer = ArchiveWriter(io.BytesIO(), Encryption.none())
    with pytest.raises(ApplianceError, match="mariadb-dump failed"):
        writer.add_stream(DB_PREFIX, Broken())


# --- writer guards ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a//b", "", "manifest.json", "a\x00b"])
def test_writer_refuses_bad_names(name):
    writer = ArchiveWriter(io.BytesIO(), Encryption.none())
    with pytest.raises(ArchiveError):
        writer.add_json(name, {})


def test_writer_refuses_duplicates():
    writer = ArchiveWriter(io.BytesIO(), Encryption.none())
    writer.add_json("snapshot.json", {})
    with pytest.raises(ArchiveError, match="duplicate"):
        writer.add_json("snapshot.json", {})


def test_abort_writes_nothing_more_and_never_decrypts(tree):
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, Encryption.recipients([KEYS[1]]))
    writer.add_json("snapshot.json", SNAPSHOT)
    writer.add_stream(DB_PREFIX, io.BytesIO(os.urandom(300000)))
    writer.abort()
    size = sink.tell()
    del writer  # garbage collection must not append tar end blocks
    assert sink.tell() == size
    with pytest.raises(IntegrityError):
        verify_or_raise(sink.getvalue(), Decryption.identities([KEYS[0]]))


def verify_or_raise(blob, decryption):
    report = verify(io.BytesIO(blob), decryption)
    if not report.ok:
        raise IntegrityError("; ".join(report.problems))
    return report


def test_sink_is_not_closed():
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, Encryption.passphrase("pw", work_factor=4))
    writer.add_json("snapshot.json", SNAPSHOT)
    writer.finish({})
    assert not sink.closed


# --- wrong keys --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sealed_x25519():
    sink = io.BytesIO()
    build(sink, Encryption.recipients([KEYS[1]]), db=b"dump")
    return sink.getvalue()


def test_wrong_identity_raises(sealed_x25519):
    with pytest.raises(ArchiveError, match="no identity matches"):
        verify(io.BytesIO(sealed_x25519), Decryption.identities([age.generate_identity()[0]]))


def test_passphrase_for_key_archive(sealed_x25519):
    with pytest.raises(ArchiveError, match="not with a passphrase"):
        verify(io.BytesIO(sealed_x25519), Decryption.passphrase("pw"))


def test_no_key_for_encrypted_archive(sealed_x25519):
    with pytest.raises(ArchiveError, match="age-encrypted"):
        ArchiveReader(io.BytesIO(sealed_x25519), Decryption.none())


def test_key_for_plain_archive_refused():
    sink = io.BytesIO()
    build(sink, Encryption.none())
    with pytest.raises(ArchiveError, match="not encrypted"):
        ArchiveReader(io.BytesIO(sink.getvalue()), Decryption.identities([KEYS[0]]))


def test_not_an_archive():
    with pytest.raises(IntegrityError, match="not a segura.backup archive"):
        ArchiveReader(io.BytesIO(b"PK\x03\x04 zip file"), Decryption.none())


def test_truncated_encrypted_object_reported(sealed_x25519):
    for cut in (len(sealed_x25519) // 2, len(sealed_x25519) - 1):
        report = verify(io.BytesIO(sealed_x25519[:cut]), Decryption.identities([KEYS[0]]))
        assert not report.ok and report.problems


# --- crafted and tampered objects ------------------------------------------------------------------


def crafted(members, encryption=None):
    """A zstd(tar) (optionally age) object built with tarfile directly: (TarInfo, bytes) pairs."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    compressed = zstandard.ZstdCompressor().compress(raw.getvalue())
    if encryption is None:
        return compressed
    out = io.BytesIO()
    enc = age.Encryptor(out, recipients=[KEYS[1]])
    enc.write(compressed)
    enc.close()
    return out.getvalue()


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize("bad", [
    member("../x"),
    member("files/../../etc/shadow"),
    member("/etc/cron.d/evil"),
    member("files/dev/sda", tarfile.BLKTYPE),
    member("files/dev/tty", tarfile.CHRTYPE),
    member("files/pipe", tarfile.FIFOTYPE),
    member("files/hard", tarfile.LNKTYPE, linkname="etc/shadow"),
])
@pytest.mark.parametrize("encrypted", [False, True])
def test_unsafe_members_refused(bad, encrypted):
    blob = crafted([(member("snapshot.json"), b"{}"), (bad, b"x")], encryption=encrypted or None)
    dec = Decryption.identities([KEYS[0]]) if encrypted else Decryption.none()
    with pytest.raises(IntegrityError, match="unsafe archive member"):
        for _info, _content in ArchiveReader(io.BytesIO(blob), dec):
            pass
    report = verify(io.BytesIO(blob), dec)
    assert not report.ok and "unsafe archive member" in report.problems[0]


def _plain_object(tree=None, db=b"0123456789" * 300):
    sink = io.BytesIO()
    _info, result = build(sink, Encryption.none(), tree, db=db)
    tar_bytes = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(sink.getvalue())).read()
    return tar_bytes, result


def _rewrap(tar_bytes):
    return zstandard.ZstdCompressor().compress(tar_bytes)


def _members_of(tar_bytes):
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r") as tar:
        return [(info, tar.extractfile(info).read() if info.isreg() else b"") for info in tar.getmembers()]


def test_tampered_content_reported(tree):
    tar_bytes, _result = _plain_object(tree)
    original = b"[db]\nhost=localhost\n"
    tampered = tar_bytes.replace(original, b"[db]\nhost=evil.host\n")
    assert tampered != tar_bytes
    report = verify(io.BytesIO(_rewrap(tampered)), Decryption.none())
    assert not report.ok
    assert report.problems == ["member files/etc/senhasegura/app.conf differs from the manifest in sha256"]
    with pytest.raises(IntegrityError, match="app.conf differs"):
        for _info, _content in ArchiveReader(io.BytesIO(_rewrap(tampered)), Decryption.none()):
            pass


def test_missing_extra_and_reordered_members_reported(tree):
    tar_bytes, _result = _plain_object(tree)
    members = _members_of(tar_bytes)
    names = [i.name for i, _d in members]
    dropped = [(i, d) for i, d in members if i.name != "files/etc/empty"]
    dropped.insert(3, (member("files/intruder"), b"hi"))
    report = verify(io.BytesIO(crafted(dropped)), Decryption.none())
    assert "missing members: files/etc/empty" in report.problems
    assert "members not in the manifest: files/intruder" in report.problems

    chunk1, chunk2 = names.index("db/dump.sql.000001"), names.index("db/dump.sql.000002")
    swapped = list(members)
    swapped[chunk1], swapped[chunk2] = swapped[chunk2], swapped[chunk1]
    report = verify(io.BytesIO(crafted(swapped)), Decryption.none())
    assert report.problems == ["db chunks are not numbered consecutively in order"]

    snapshot_later = members[1:2] + members[:1] + members[2:]
    report = verify(io.BytesIO(crafted(snapshot_later)), Decryption.none())
    assert report.problems == ["snapshot.json is not the first member"]


def test_manifest_missing_or_not_last(tree):
    tar_bytes, _result = _plain_object(tree)
    members = _members_of(tar_bytes)
    report = verify(io.BytesIO(crafted(members[:-1])), Decryption.none())
    assert report.problems == ["manifest.json is missing (archive truncated?)"]
    report = verify(io.BytesIO(crafted(members + [(member("files/late"), b"x")])), Decryption.none())
    assert "members after manifest.json: files/late" in report.problems


def test_db_totals_checked(tree):
    tar_bytes, result = _plain_object()
    members = _members_of(tar_bytes)
    manifest = dict(result.manifest)
    manifest["db"] = dict(manifest["db"], sha256="0" * 64, bytes=1)
    members[-1] = (member("manifest.json"), json.dumps(manifest).encode())
    report = verify(io.BytesIO(crafted(members)), Decryption.none())
    assert report.problems == ["db has 3000 bytes, manifest.json says 1", "db dump sha256 differs from manifest.json"]


def test_garbage_after_zstd_frame_reported():
    sink = io.BytesIO()
    build(sink, Encryption.none())
    report = verify(io.BytesIO(sink.getvalue() + b"garbage!"), Decryption.none())
    assert not report.ok


def test_duplicate_member_refused():
    blob = crafted([(member("snapshot.json"), b"{}"), (member("files/a"), b"1"), (member("files/a"), b"2")])
    report = verify(io.BytesIO(blob), Decryption.none())
    assert report.problems == ["archive member files/a appears twice"]


@pytest.mark.parametrize("kwargs", [{"zstd_level": 99}, {"zstd_threads": -2}, {"zstd_level": "3"}, {"chunk_size": 0}])
def test_bad_writer_settings(kwargs):
    with pytest.raises(ConfigError):
        ArchiveWriter(io.BytesIO(), Encryption.none(), **kwargs)


@pytest.mark.parametrize("threads", [-1, 2])
def test_multithreaded_zstd_roundtrip(threads):
    data = os.urandom(300000) + b"x" * 9000000
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, Encryption.none(), zstd_threads=threads, chunk_size=4 * 1024 * 1024)
    writer.add_json("snapshot.json", SNAPSHOT)
    info = writer.add_stream(DB_PREFIX, io.BytesIO(data))
    writer.finish({})
    assert info.chunks == 3
    report = verify(io.BytesIO(sink.getvalue()), Decryption.none())
    assert report.ok and report.manifest["db"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(sink.getvalue())).read().startswith(b"snapshot.json")


def test_json_chunks_encode_a_long_list_in_pieces_that_read_back_whole():
    """The manifest and the session list are written in pieces (a 100,000-entry list never whole in memory)."""
    import io as _io
    import json as _json

    from ansible_collections.segura.backup.plugins.module_utils._engine.streams import ChunkReader, json_chunks

    entries = [{"path": "a/sessions/%05d.arz" % n, "size": n, "sha256": "%064x" % n, "type": "symlink", "target": "é"}
               for n in range(2500)]
    for doc in ({"format": "x", "sessions": entries}, {"sessions": []}, {"format": "x"}, {"sessions": entries[:1]}):
        pieces = list(json_chunks(doc, "sessions"))
        assert _json.loads(b"".join(pieces)) == doc
        assert _io.BufferedReader(ChunkReader(json_chunks(doc, "sessions"))).read() == b"".join(pieces)
    whole = _json.dumps(entries, separators=(",", ":")).encode()
    assert max(len(piece) for piece in json_chunks({"sessions": entries}, "sessions")) < len(whole) // 2
