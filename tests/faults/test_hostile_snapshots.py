"""Hostile snapshots on the share: every file of a snapshot changed the way someone who can write to
the share (or a compromised appliance, which holds the signing key) would change it.

One real path target holds an older good snapshot and the victim. Each case changes the victim's
files, then restore (by id) and a deep verify must both refuse it: restore with one clear error that
names the cause (a BackupError, never a traceback), verify with a failed result. After every case the
restore destination is still empty and the older snapshot is byte for byte what it was; at the end it
still restores. The engine runs in-process (no lab server is needed, so ~80 cases take seconds);
tests/faults/test_bad_input.py runs the module-level cases through ansible-playbook.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time

import pytest
import zstandard

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.apply import restore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import SigningKey
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget
from ansible_collections.segura.backup.plugins.module_utils._engine.verification import verify_snapshots
from tests.unit.test_restore import BOX_KEY, BOX_TRUST, _appliance, _snapshot

PASSPHRASE = "correct horse"
OTHER_KEY = SigningKey.generate()


# ------------------------------------------------------------------ the share


class Share:
    """The target folder, its pristine files, and ways to change the victim's."""

    def __init__(self, root):
        self.root = root
        self.source = os.path.join(root, "source")
        self.folder_root = os.path.join(root, "target")
        self.folder = os.path.join(self.folder_root, "box", "snapshots")
        os.makedirs(self.source)
        from pathlib import Path

        _appliance(Path(self.source))
        self.old = _snapshot(Path(self.source), Path(self.folder_root))
        time.sleep(1.1)  # whole seconds in the object name: the victim is newer
        self.victim = _snapshot(Path(self.source), Path(self.folder_root))
        self.pristine = self._files()
        self.target = PathTarget(self.folder_root)

    def _files(self):
        return {name: open(os.path.join(self.folder, name), "rb").read() for name in sorted(os.listdir(self.folder))}

    def reset(self):
        for name in os.listdir(self.folder):
            path = os.path.join(self.folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        for name, data in self.pristine.items():
            with open(os.path.join(self.folder, name), "wb") as handle:
                handle.write(data)

    def path(self, snap_id, suffix):
        stem = [n for n in self.pristine if snap_id in n][0].split(".")[0]
        return os.path.join(self.folder, stem + suffix)

    def object_path(self, snap_id):
        return self.path(snap_id, ".tar.zst.age")

    def read(self, path):
        with open(path, "rb") as handle:
            return handle.read()

    def write(self, path, data):
        with open(path, "wb") as handle:
            handle.write(data)

    def sidecar(self):
        return json.loads(self.read(self.path(self.victim, ".json")))

    def put_sidecar(self, doc_or_bytes, key=BOX_KEY):
        """Replace the victim's sidecar and sign it with ``key`` (None: leave the old signature)."""
        data = doc_or_bytes if isinstance(doc_or_bytes, bytes) else json.dumps(doc_or_bytes, indent=2).encode()
        self.write(self.path(self.victim, ".json"), data)
        if key is not None:
            self.write(self.path(self.victim, ".json.sig"), key.sign(data))

    def put_object(self, data, key=BOX_KEY):
        """Replace the victim's object and publish a sidecar that agrees with it, signed by ``key``."""
        self.write(self.object_path(self.victim), data)
        doc = self.sidecar()
        doc.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        self.put_sidecar(doc, key)


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    return Share(str(tmp_path_factory.mktemp("hostile-share")))


# ------------------------------------------------------------------ crafted objects (a compromised appliance)


def _member(name, data=b"", kind=tarfile.REGTYPE, linkname="", mode=0o640):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime, info.linkname = kind, len(data), mode, 1700000000, linkname
    return info, data


def _entry(info, data):
    kind = {tarfile.REGTYPE: "file", tarfile.SYMTYPE: "symlink", tarfile.DIRTYPE: "dir"}.get(info.type, "other")
    return {"name": info.name, "type": kind, "size": len(data) if kind == "file" else 0,
            "sha256": hashlib.sha256(data).hexdigest() if kind == "file" else None, "mode": info.mode,
            "mtime": info.mtime, "uid": 0, "gid": 0, "linkname": info.linkname}


def craft(share, members=(), manifest=None, header=None, extra_members=(), tar_bytes=None, raw=None, passphrase=PASSPHRASE):
    """An object of the victim's id holding ``members`` (and a manifest that lists them, unless given)."""
    if raw is None:
        if tar_bytes is None:
            header = header if header is not None else {"format": "segura.backup/1", "id": share.victim, "appliance": "box",
                                                        "created": share.sidecar()["created"][:19] + "Z",
                                                        "components": ["config", "secrets"], "facts": {}}
            parts = [_member("snapshot.json", json.dumps(header).encode())] if header is not False else []
            parts += list(members)
            if manifest is None:
                manifest = {"format": "segura.backup/1", "id": share.victim, "appliance": "box",
                            "members": [_entry(info, data) for info, data in parts], "sessions": [], "facts": {},
                            "components": ["config", "secrets"]}
            parts += list(extra_members)
            if manifest is not False:
                body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
                parts.append(_member("manifest.json", body))
            out = io.BytesIO()
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for info, data in parts:
                    tar.addfile(info, io.BytesIO(data))
            tar_bytes = out.getvalue()
        raw = zstandard.ZstdCompressor(level=3).compress(tar_bytes)
    sealed = io.BytesIO()
    encryptor = Encryption.passphrase(passphrase, work_factor=10).open_encryptor(sealed)
    encryptor.write(raw)
    encryptor.close()
    data = sealed.getvalue()
    share.put_object(data)
    doc = share.sidecar()
    doc.update(bytes_in=10 ** 9, counts={"members": 10 ** 5})  # the sidecar's caps are not what is tested here
    share.put_sidecar(doc)


GOOD_FILE = _member("files/etc/senhasegura/x.conf", b"x=1\n")


# ------------------------------------------------------------------ the cases


def _sig_blob(share):
    armored = share.read(share.path(share.victim, ".json.sig")).decode().strip().splitlines()
    return base64.b64decode("".join(armored[1:-1]))


def _armor(blob):
    text = base64.b64encode(blob).decode()
    return ("-----BEGIN SSH SIGNATURE-----\n%s\n-----END SSH SIGNATURE-----\n" % text).encode()


def _doc(change):
    """A case that changes the victim's sidecar document and signs it with the appliance's key."""
    def apply(share):
        doc = share.sidecar()
        change(doc)
        share.put_sidecar(doc)
    return apply


def _unsigned_doc(change):
    def apply(share):
        doc = share.sidecar()
        change(doc)
        share.put_sidecar(doc, key=None)
    return apply


def _object(change):
    """A case that changes the stored object and leaves the (signed) sidecar alone."""
    def apply(share):
        path = share.object_path(share.victim)
        share.write(path, change(share.read(path)))
    return apply


def _remove(suffix):
    return lambda share: os.remove(share.path(share.victim, suffix))


def _signed_with_namespace(share):
    from ansible_collections.segura.backup.plugins.module_utils._engine import signing

    data = share.read(share.path(share.victim, ".json"))
    share.write(share.path(share.victim, ".json.sig"), BOX_KEY.sign(data, namespace="file"))
    assert signing.NAMESPACE != "file"


def _sig_of_old(share):
    shutil.copy(share.path(share.old, ".json.sig"), share.path(share.victim, ".json.sig"))


def _sig_dir(share):
    os.remove(share.path(share.victim, ".json.sig"))
    os.mkdir(share.path(share.victim, ".json.sig"))


def _sig_symlink(share):
    os.remove(share.path(share.victim, ".json.sig"))
    os.symlink(os.path.basename(share.path(share.old, ".json.sig")), share.path(share.victim, ".json.sig"))


def _object_symlink(share):
    os.remove(share.object_path(share.victim))
    os.symlink(os.path.basename(share.object_path(share.old)), share.object_path(share.victim))


def _object_dir(share):
    os.remove(share.object_path(share.victim))
    os.mkdir(share.object_path(share.victim))


def _set(path, value):
    def change(doc):
        keys = path.split(".")
        for key in keys[:-1]:
            doc = doc[key]
        doc[keys[-1]] = value
    return change


def _delete(key):
    return lambda doc: doc.pop(key)


CASES = [
    # --- the signature (anyone with write access to the share)
    ("signature removed", _remove(".json.sig"), "not signed"),
    ("signature empty", lambda s: s.write(s.path(s.victim, ".json.sig"), b""), "not an SSH signature"),
    ("signature garbage", lambda s: s.write(s.path(s.victim, ".json.sig"), b"garbage\n" * 10), "not an SSH signature"),
    ("signature binary", lambda s: s.write(s.path(s.victim, ".json.sig"), os.urandom(300)), "not an SSH signature"),
    ("signature 100 KB", lambda s: s.write(s.path(s.victim, ".json.sig"), b"A" * 100000), "cannot be read as one"),
    ("signature by another key", lambda s: s.write(s.path(s.victim, ".json.sig"),
                                                   OTHER_KEY.sign(s.read(s.path(s.victim, ".json")))),
     "not the pinned key"),
    ("signature of the older snapshot", _sig_of_old, "does not match"),
    ("signature in another namespace", _signed_with_namespace, "namespace"),
    ("signature truncated", lambda s: s.write(s.path(s.victim, ".json.sig"), _armor(_sig_blob(s)[:50])), "truncated"),
    ("signature with trailing bytes", lambda s: s.write(s.path(s.victim, ".json.sig"), _armor(_sig_blob(s) + b"\0")),
     "trailing"),
    ("signature bit flipped", lambda s: s.write(s.path(s.victim, ".json.sig"),
                                                _armor(_sig_blob(s)[:-3] + bytes([_sig_blob(s)[-3] ^ 1]) + _sig_blob(s)[-2:])),
     "does not match"),
    ("signature is a folder", _sig_dir, "cannot be read as one"),
    ("signature is a link to another", _sig_symlink, "does not match|symbolic link|not signed"),
    ("sidecar changed, not signed again", _unsigned_doc(_set("duration", 9.0)), "does not match"),
    ("sidecar sha256 swapped, not signed again", _unsigned_doc(_set("sha256", "0" * 64)), "does not match"),
    ("sidecar of the older snapshot", lambda s: s.write(s.path(s.victim, ".json"), s.read(s.path(s.old, ".json"))),
     "does not match|describes"),
    # --- the sidecar's content, signed by the appliance's key (a lying or broken appliance)
    ("sidecar not JSON", lambda s: s.put_sidecar(b"{not json"), "not JSON"),
    ("sidecar not UTF-8", lambda s: s.put_sidecar(b"\xff\xfe{}"), "not JSON"),
    ("sidecar a JSON list", lambda s: s.put_sidecar(b"[1, 2]"), "not a JSON object"),
    ("sidecar nested 100,000 deep", lambda s: s.put_sidecar(b"[" * 100000 + b"]" * 100000), "not JSON"),
    ("sidecar of 2 MiB", lambda s: s.put_sidecar(b" " * (2 * 1024 * 1024) + b"{}"), "larger than|MiB|bytes"),
    ("sidecar empty", lambda s: s.put_sidecar(b""), "not JSON"),
    ("format of another tool", _doc(_set("format", "other/9")), "format"),
    ("format missing", _doc(_delete("format")), "format"),
    ("id of another snapshot", _doc(_set("id", "0badc0de")), "describes|does not match"),
    ("id not hex", _doc(_set("id", "../../..")), "id"),
    ("appliance another", _doc(_set("appliance", "pam2")), "describes"),
    ("appliance hostile", _doc(_set("appliance", "../../etc")), "appliance"),
    ("created another time", _doc(_set("created", "2001-01-01T00:00:00Z")), "does not match"),
    ("created not a time", _doc(_set("created", "yesterday")), "created|time"),
    ("object another name", _doc(_set("object", "20010101T000000Z-0badc0de.tar.zst.age")), "does not match"),
    ("object a path", _doc(_set("object", "../../../etc/passwd")), "object"),
    ("size negative", _doc(_set("size", -1)), "negative"),
    ("size larger", _doc(lambda d: d.update(size=d["size"] + 1)), "sidecar says"),
    ("size a string", _doc(_set("size", "1000")), "whole number"),
    ("size true", _doc(_set("size", True)), "whole number"),
    ("size 1e400", lambda s: s.put_sidecar(json.dumps(s.sidecar()).replace('"size": ', '"size": 1e400, "x": ').encode()),
     "whole number"),
    ("size missing", _doc(_delete("size")), "'size' is missing"),
    ("sha256 uppercase", _doc(lambda d: d.update(sha256=d["sha256"].upper())), "lowercase hex"),
    ("sha256 short", _doc(_set("sha256", "abc")), "lowercase hex"),
    ("sha256 of other bytes", _doc(_set("sha256", "0" * 64)), "sha256"),
    ("components not a list", _doc(_set("components", "config")), "components"),
    ("components of numbers", _doc(_set("components", [1, 2])), "list of strings"),
    ("components without config", _doc(_set("components", ["database"])), "holds no config|database"),
    ("member count too small", _doc(lambda d: d["counts"].update(members=1)), "more than 1 member"),
    ("counts not an object", _doc(_set("counts", [])), "counts"),
    ("counts negative", _doc(lambda d: d["counts"].update(files=-5)), "negative"),
    ("bytes_in too small", _doc(_set("bytes_in", 10)), "more than"),
    ("encryption none for an .age object", _doc(_set("encryption", {"mode": "none", "recipients": []})),
     "does not match object name"),
    ("encryption mode unknown", _doc(_set("encryption.mode", "rot13")), "not one of"),
    ("encryption recipients not strings", _doc(_set("encryption.recipients", [1])), "recipients"),
    ("db a string", _doc(_set("db", "yes")), "db"),
    ("db sha256 bad", _doc(_set("db", {"chunks": 1, "bytes": 1, "sha256": "x"})), "sha256"),
    ("sessions missing", _doc(_delete("sessions")), "'sessions' is missing"),
    ("sessions status unknown", _doc(_set("sessions", {"count": 0, "bytes": 0, "status": "great", "problem_count": 0,
                                                       "problems": []})), "sessions.status"),
    ("sessions problems disagree", _doc(_set("sessions", {"count": 0, "bytes": 0, "status": "partial",
                                                          "problem_count": 0, "problems": []})), "problems"),
    ("versions missing", _doc(_delete("versions")), "versions"),
    ("duration a string", _doc(_set("duration", "fast")), "duration"),
    # --- the object, its signed sidecar left alone (the share or the network changed it)
    ("object bit flipped", _object(lambda b: b[:200] + bytes([b[200] ^ 1]) + b[201:]), "sha256|corrupt or tampered"),
    ("object truncated", _object(lambda b: b[:-100]), "sidecar says|damaged"),
    ("object appended", _object(lambda b: b + b"x"), "sidecar says|damaged"),
    ("object emptied", _object(lambda b: b""), "sidecar says|damaged"),
    ("object removed", _remove(".tar.zst.age"), "does not exist|orphaned"),
    ("object is a link to the older one", _object_symlink, "sidecar says|damaged|symbolic link|sha256"),
    ("object is a folder", _object_dir, "not found|damaged|folder|directory|does not exist"),
    ("sidecar removed", _remove(".json"), "partial|not found"),
    # --- a crafted object with a signed sidecar that agrees (a compromised appliance)
    ("another passphrase", lambda s: craft(s, [GOOD_FILE], passphrase="not ours"), "passphrase"),
    ("not zstd inside", lambda s: craft(s, raw=os.urandom(5000)), "zstd|corrupt|cannot be opened|frame"),
    ("not tar inside", lambda s: craft(s, tar_bytes=os.urandom(5000)), "tar|corrupt|header"),
    ("no manifest", lambda s: craft(s, [GOOD_FILE], manifest=False), "manifest"),
    ("manifest not JSON", lambda s: craft(s, [GOOD_FILE], manifest=b"{nope"), "manifest"),
    ("manifest members not a list",
     lambda s: craft(s, [GOOD_FILE], manifest={"id": s.victim, "appliance": "box", "members": "all"}), "member list"),
    ("no snapshot.json", lambda s: craft(s, [GOOD_FILE], header=False), "snapshot.json"),
    ("manifest of another appliance", lambda s: craft(s, [GOOD_FILE], header={"id": s.victim, "appliance": "pam2"}),
     "another appliance|appliance 'pam2'|disagree on 'appliance'"),
    ("member not in the manifest", lambda s: craft(s, [GOOD_FILE], extra_members=[_member("files/etc/senhasegura/y")]),
     "manifest|not listed|unlisted"),
    ("manifest lists a missing member", lambda s: craft(s, [GOOD_FILE], manifest={
        "format": "segura.backup/1", "id": s.victim, "appliance": "box", "sessions": [], "facts": {},
        "members": [_entry(*GOOD_FILE), _entry(*_member("files/etc/senhasegura/gone", b"1"))]}), "missing|gone"),
    ("member content differs", lambda s: craft(s, [GOOD_FILE], manifest={
        "format": "segura.backup/1", "id": s.victim, "appliance": "box", "sessions": [], "facts": {},
        "members": [dict(_entry(*GOOD_FILE), sha256="1" * 64)]}), "sha256|differs"),
    ("member traversal", lambda s: craft(s, [_member("files/../../tmp/owned", b"x")]), r"\.\.|unsafe|refus"),
    ("member absolute", lambda s: craft(s, [_member("/tmp/owned", b"x")]), "absolute|unsafe|refus|outside"),
    ("member outside files/", lambda s: craft(s, [_member("etc/passwd", b"x")]), "outside files/|refus"),
    ("member outside the config paths", lambda s: craft(s, [_member("files/root/.ssh/authorized_keys", b"x")]),
     "outside the configured paths"),
    ("symlink leaving the tree", lambda s: craft(s, [_member("files/etc/senhasegura/l", kind=tarfile.SYMTYPE,
                                                             linkname="/etc/shadow")]), "refusing it"),
    ("member below a symlink member", lambda s: craft(s, [
        _member("files/etc/senhasegura/d", kind=tarfile.SYMTYPE, linkname="conf.d"),
        _member("files/etc/senhasegura/d/x", b"x")]), "below|refus"),
    ("hard link member", lambda s: craft(s, [_member("files/etc/senhasegura/h", kind=tarfile.LNKTYPE,
                                                     linkname="etc/passwd")]), "refus|type|link|not allowed"),
    ("device member", lambda s: craft(s, [_member("files/etc/senhasegura/null", kind=tarfile.CHRTYPE)]),
     "refus|type|device|not allowed"),
    ("fifo member", lambda s: craft(s, [_member("files/etc/senhasegura/fifo", kind=tarfile.FIFOTYPE)]),
     "refus|type|fifo|not allowed"),
    ("member named twice", lambda s: craft(s, [GOOD_FILE, GOOD_FILE]), "twice|duplicate|again"),
    ("manifest entry without mode", lambda s: craft(s, [GOOD_FILE], manifest={
        "format": "segura.backup/1", "id": s.victim, "appliance": "box", "sessions": [], "facts": {},
        "members": [{k: v for k, v in _entry(*GOOD_FILE).items() if k != "mode"}]}), "lacks|mode"),
    ("member name of 5,000 characters", lambda s: craft(s, [_member("files/etc/senhasegura/" + "n" * 5000, b"x")]),
     "longer than 255 bytes"),
]


def _restore_request(share, snap_id, dest):
    return RestoreRequest("box", ApplianceLayout(root=dest), Decryption.passphrase(PASSPHRASE), snapshot=snap_id,
                          trust=BOX_TRUST, components=["config"])


@pytest.mark.parametrize("case, change, words", CASES, ids=[c[0] for c in CASES])
def test_a_hostile_snapshot_is_refused_with_one_clear_error_and_nothing_is_written(
        share, tmp_path, case, change, words):
    share.reset()
    change(share)
    dest = str(tmp_path / "dest")
    os.mkdir(dest)
    with pytest.raises(BackupError) as refused:
        restore(share.target, _restore_request(share, share.victim, dest))
    message = str(refused.value)
    print("%-40s %s" % (case, message[:300]))
    assert re.search(words, message, re.IGNORECASE), "%s: %r lacks %r" % (case, message, words)
    assert os.listdir(dest) == [], "%s: the restore wrote %s" % (case, os.listdir(dest))

    listing = catalog.list_snapshots(share.target, "box")
    victims = listing.find(share.victim)
    if victims:  # a snapshot whose sidecar was removed is a partial upload: nothing to verify
        (result,) = verify_snapshots(share.target, victims, "deep", decryption=Decryption.passphrase(PASSPHRASE),
                                     trust=BOX_TRUST, record_results=False)
        assert not result.ok and result.problems, "%s: verify passed" % case
    for name, data in share.pristine.items():  # the older snapshot is untouched
        if share.old in name:
            assert share.read(os.path.join(share.folder, name)) == data, "%s changed %s" % (case, name)


def test_the_suite_is_large_and_the_older_snapshot_still_restores(share, tmp_path):
    assert len(CASES) >= 80
    share.reset()
    dest = str(tmp_path / "dest")
    os.mkdir(dest)
    done = restore(share.target, _restore_request(share, share.old, dest))
    assert done["verification"]["ok"] and done["signature"]["status"] == "valid"
