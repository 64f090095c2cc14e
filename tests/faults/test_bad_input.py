"""Bad input through ansible-playbook: every case ends in a failed task with one clear message (no
traceback, no MODULE FAILURE), and nothing is written - the target listings and the appliance tree
are compared before and after.

Cases are grouped: one playbook runs many tasks with ignore_errors, then each registered result is
checked against its expected words. Archives crafted to attack the restore are published as
snapshots (valid sidecar, so the quick check passes) and restored by id in one playbook.
"""

import copy
import hashlib
import io
import json
import os
import tarfile
import threading
import time

import pytest
import zstandard

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import DEFAULT_KEY_FILE, SigningKey
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.integration.conftest import trust_args
from tests.faults.conftest import (
    APPLIANCE_NAME,
    run_tasks,
    snapshot_args,
    snapshot_request,
    tree_listing,
)

WRONG_PASSWORD = "not the password \\ & $'\""
OTHER_AGE_KEY = "AGE-SECRET-KEY-1" + "Q" * 58  # right shape, not a key anyone holds


@pytest.fixture
def world(lab, lab_target_factory, reference_appliance, age_identity, tmp_path):
    """A path target and an SMB target with one good snapshot each, and a private appliance copy."""
    import shutil

    root = str(tmp_path / "appliance")
    shutil.copytree(reference_appliance["root"], root, symlinks=True)
    appliance = dict(reference_appliance, root=root)
    targets = {"path": lab_target_factory("path"), "smb": lab_target_factory("smb_signed")}
    request = snapshot_request(appliance, age_identity["recipient"], components=("config", "secrets"))
    good = {}
    for name, target in targets.items():
        with open_target(target.options) as client:
            good[name] = take_snapshot(client, request)
    return {"appliance": appliance, "targets": targets, "good": good, "lab": lab, "age": age_identity,
            "key_file": age_identity["identity_file"], "tmp": str(tmp_path)}


def _state(world):
    """Target listings (verification records and the catalog index aside: verify stores its verdicts, and
    indexes them) and the appliance tree."""
    return ({name: {path: entry for path, entry in target.listing().items()
                    if not path.endswith((".verify.json", "/catalog.json"))}
             for name, target in world["targets"].items()},
            tree_listing(world["appliance"]["root"]))


def _check(results, cases):
    """Each result failed with its expected words; returns the list of problems (empty = all good)."""
    problems = []
    for (case_id, _module, _args, words), result in zip(cases, results):
        message = str(result.get("msg", ""))
        text = json.dumps(result)
        if not result.get("failed"):
            problems.append("%s: did not fail (%s)" % (case_id, message[:200]))
            continue
        if "Traceback" in text or "MODULE FAILURE" in text:
            problems.append("%s: crashed: %s" % (case_id, text[:500]))
            continue
        missing = [w for w in words if w.lower() not in message.lower()]
        if missing:
            problems.append("%s: message %r lacks %r" % (case_id, message[:300], missing))
        print("%-36s %s" % (case_id, message[-200:].replace("\n", " ")))
    return problems


def _run_cases(cases, world, parallel=4):
    """The cases in ``parallel`` playbooks at once (ansible's start-up per task dominates the time)."""
    before = _state(world)
    chunks = [cases[index::parallel] for index in range(parallel)]
    outputs = [None] * parallel

    def run(index):
        tasks = [{"name": case_id, module: args} for case_id, module, args, _words in chunks[index]]
        outputs[index] = run_tasks(tasks)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(parallel) if chunks[index]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=580)
    ordered = []
    for index, chunk in enumerate(chunks):
        if not chunk:
            continue
        results, completed = outputs[index]
        assert len(results) == len(chunk), completed.stdout[-3000:] + completed.stderr[-3000:]
        ordered.extend(zip(chunk, results))
    cases = [case for case, _result in ordered]
    results = [result for _case, result in ordered]
    problems = _check(results, cases)
    assert not problems, "\n".join(problems)
    assert _state(world) == before, "a failed run changed the target or the appliance"
    return dict(zip([case[0] for case in cases], results))


# ------------------------------------------------------------------------------------ the table


def _cases(world):
    appliance, age = world["appliance"], world["age"]
    path_target = world["targets"]["path"].options
    smb_target = world["targets"]["smb"].options
    recipients = {"recipients": [age["recipient"]]}
    snap = snapshot_args(appliance, world["targets"]["path"], recipients)
    # the database is not needed to prove bad input is refused; it would only slow each case down
    snap["components"] = ["config", "secrets"]

    def snapshot(**changes):
        args = copy.deepcopy(snap)
        for key, value in changes.items():
            if "." in key:
                outer, inner = key.split(".", 1)
                args[outer] = dict(args[outer], **{inner: value})
            else:
                args[key] = value
        return args

    def smb(**changes):
        return snapshot(target=dict(smb_target, **changes))

    nfs_base = {"type": "nfs", "server": world["lab"]["nfs_server"], "export": world["lab"]["nfs_export"],
                "version": "3", "timeout": 10}
    deep = {"target": path_target, "appliance": APPLIANCE_NAME, "mode": "deep",
            "decryption": {"identity_file": world["key_file"]}, "trust": trust_args(appliance)}
    restore = {"target": path_target, "appliance": {"name": APPLIANCE_NAME, "root": appliance["root"]},
               "components": ["config", "secrets"], "decryption": {"identity_file": world["key_file"]}}
    not_a_key = os.path.join(world["tmp"], "not-a-key.txt")
    with open(not_a_key, "w", encoding="utf-8") as handle:
        handle.write("this is not an age identity\n")
    S = "segura.backup.snapshot"
    return [
        # wrong types
        ("type: chunk_size_mb str", S, snapshot(chunk_size_mb="lots"), ["chunk_size_mb"]),
        ("type: lock_ttl list", S, snapshot(lock_ttl=[1, 2]), ["lock_ttl"]),
        # Ansible's own check of a dict option does not name the option (ansible-core 2.19)
        ("type: compression str", S, snapshot(compression="fast"), ["dictionary requested"]),
        ("type: components dict", S, snapshot(components={"a": 1}), ["components"]),
        ("type: target list", S, snapshot(target=["smb"]), ["dictionary requested"]),
        ("type: target.port str", S, smb(port="not-a-port"), ["port"]),
        # ansible-core checks mutually_exclusive before the type: "argument of type 'int' is not iterable"
        ("type: encryption int", S, snapshot(encryption=42), []),
        ("type: compression.level str", S, snapshot(compression={"level": "max"}), ["level"]),
        # empty values
        ("empty: target.type", S, snapshot(target={"type": "", "path": path_target["path"]}), ["type"]),
        ("empty: smb share", S, smb(share=""), ["share"]),
        ("empty: recipients", S, snapshot(encryption={"recipients": []}), ["recipient"]),
        ("empty: passphrase", S, snapshot(encryption={"mode": "passphrase", "passphrase": ""}), ["passphrase"]),
        ("empty: components", S, snapshot(components=[]), ["components"]),
        ("empty: chunk_size_mb 0", S, snapshot(chunk_size_mb=0), ["chunk"]),
        # unknown keys
        ("unknown: top-level key", S, snapshot(bogus_option=1), ["bogus_option"]),
        ("unknown: target.sharename", S, smb(sharename="x"), ["sharename"]),
        ("unknown: encryption.recipient", S, snapshot(encryption={"recipient": age["recipient"]}), ["recipient"]),
        ("unknown: config path key", S, snapshot(**{"appliance.config_paths": [{"path": "x", "evil": 1}]}),
         ["evil"]),
        # hostile appliance names
        ("name: ..", S, snapshot(**{"appliance.name": ".."}), ["appliance name"]),
        ("name: ../escape", S, snapshot(**{"appliance.name": "../escape"}), ["appliance name"]),
        ("name: absolute", S, snapshot(**{"appliance.name": "/etc"}), ["appliance name"]),
        ("name: NUL", S, snapshot(**{"appliance.name": "a\u0000b"}), ["appliance name"]),
        ("name: 300 chars", S, snapshot(**{"appliance.name": "x" * 300}), ["appliance name"]),
        ("name: unicode", S, snapshot(**{"appliance.name": "s\u00e9gura-\u2603"}), ["appliance name"]),
        # hostile target paths
        ("target.path: smb ..", S, smb(path="../../etc"), [".."]),
        ("target.path: nfs ..", S, snapshot(target=dict(nfs_base, path="a/../../x")), [".."]),
        ("target.path: NUL", S, smb(path="a\u0000b"), ["path"]),
        ("target.path: relative local", S, snapshot(target={"type": "path", "path": "relative/dir"}), ["absolute"]),
        ("target.path: missing local", S, snapshot(target={"type": "path", "path": "/nonexistent/segura"}),
         ["/nonexistent/segura"]),
        ("target.path: 5000 chars", S, smb(path="x" * 5000), ["x" * 20]),
        # hostile config paths
        ("config_paths: ..", S, snapshot(**{"appliance.config_paths": ["../../etc/passwd"]}), [".."]),
        ("config_paths: absolute", S, snapshot(**{"appliance.config_paths": ["/etc/segura-no-such"]}),
         ["etc/segura-no-such"]),
        ("config_paths: NUL", S, snapshot(**{"appliance.config_paths": ["etc/a\u0000b"]}), ["config path"]),
        ("config_paths: very long", S, snapshot(**{"appliance.config_paths": ["y" * 5000]}), ["y" * 20]),
        ("config_paths: unicode", S, snapshot(**{"appliance.config_paths": ["etc/\u00fcn\u00ef.conf"]}),
         ["\u00fcn\u00ef.conf"]),
        ("appliance.root relative", S, snapshot(**{"appliance.root": "relative"}), ["absolute"]),
        ("appliance.secrets_dir ..", S, snapshot(**{"appliance.secrets_dir": "../../tmp"}), [".."]),
        ("appliance.databases injection", S,
         snapshot(components=["database"], **{"appliance.databases": ["mt4; DROP TABLE x"]}), ["database name"]),
        # credentials and keys
        ("smb wrong password", "segura.backup.backup_info", {"target": dict(smb_target, password=WRONG_PASSWORD)},
         ["backup"]),
        ("smb wrong user", "segura.backup.backup_info", {"target": dict(smb_target, username="nobody-here")},
         ["nobody-here"]),
        ("recipient ssh key", S, snapshot(encryption={"recipients": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]}), ["recipient"]),
        ("identity not a key", "segura.backup.verify", dict(deep, decryption={"identities": ["AGE-SECRET-KEY-1NOPE"]}),
         ["identit"]),
        ("identity_file not a key", "segura.backup.verify", dict(deep, decryption={"identity_file": not_a_key}),
         ["not-a-key.txt"]),
        ("identity of another key", "segura.backup.verify", dict(deep, decryption={"identities": [OTHER_AGE_KEY]}),
         ["identit"]),
        ("restore with another key", "segura.backup.restore", dict(restore, decryption={"identities": [OTHER_AGE_KEY]}),
         ["identit"]),
        # snapshots that do not exist
        ("verify unknown id", "segura.backup.verify", dict(deep, select="ids", ids=["deadbeef"]), ["deadbeef"]),
        ("restore unknown id", "segura.backup.restore", dict(restore, snapshot="deadbeef"), ["deadbeef", "not found"]),
        ("restore hostile id", "segura.backup.restore", dict(restore, snapshot="../../x"), ["snapshot"]),
        # prune and backup_info
        ("prune without policy", "segura.backup.prune", {"target": path_target}, ["keeps nothing"]),
        ("prune negative count", "segura.backup.prune", {"target": path_target, "keep_last": -5}, ["keep_last"]),
        ("prune bad grace", "segura.backup.prune", {"target": path_target, "keep_last": 1, "partial_grace": "soon"},
         ["partial_grace"]),
        ("prune bad timezone", "segura.backup.prune", {"target": path_target, "keep_last": 1,
                                                       "timezone": "Mars/Olympus"}, ["Mars/Olympus"]),
        ("backup_info bad query", "segura.backup.backup_info", {"target": path_target, "query": "[[["}, ["JMESPath"]),
        ("backup_info hostile appliance", "segura.backup.backup_info", {"target": path_target, "appliance": "../x"},
         ["appliance name"]),
    ]


def test_bad_module_input_is_refused_and_writes_nothing(world):
    cases = _cases(world)
    assert 45 <= len(cases) <= 60
    _run_cases(cases, world)


# ------------------------------------------------------------------------------------ crafted archives


def _tar_member(name, data=b"", kind=tarfile.REGTYPE, linkname="", size=None, mode=0o640):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if size is None else size
    info.mode = mode
    info.mtime = 1700000000
    info.linkname = linkname
    return info


def _craft(attack, snap_id, recipient):
    """(object bytes, bytes_in, members) of a snapshot whose only flaw is ``attack``."""
    created = "2020-01-01T00:00:%02dZ" % (int(snap_id[-2:], 16) % 60)
    header = json.dumps({"format": "segura.backup/1", "id": snap_id, "appliance": APPLIANCE_NAME,
                         "created": created, "components": ["config"], "facts": {}}).encode()
    members = [(_tar_member("snapshot.json", header), header)]
    content = b"owned\n"
    zip_bomb = ZIP_BOMB_BYTES
    if attack == "traversal":
        members.append((_tar_member("files/../../../tmp/segura-owned", content), content))
    elif attack == "absolute":
        members.append((_tar_member("/tmp/segura-owned", content), content))
    elif attack == "symlink-escape":
        members.append((_tar_member("files/etc/senhasegura/link", kind=tarfile.SYMTYPE, linkname="/tmp"), b""))
    elif attack == "write-through-symlink":
        members.append((_tar_member("files/etc/senhasegura", kind=tarfile.SYMTYPE, linkname="../../tmp"), b""))
        members.append((_tar_member("files/etc/senhasegura/segura-owned", content), content))
    elif attack == "device":
        members.append((_tar_member("files/etc/senhasegura/null", kind=tarfile.CHRTYPE), b""))
    elif attack == "hardlink":
        members.append((_tar_member("files/etc/senhasegura/passwd", kind=tarfile.LNKTYPE, linkname="/etc/passwd"),
                        b""))
    elif attack == "fifo":
        members.append((_tar_member("files/etc/senhasegura/fifo", kind=tarfile.FIFOTYPE), b""))
    elif attack in ("zip-bomb", "manifest-lies"):
        members.append((_tar_member("files/etc/senhasegura/bomb.conf", size=zip_bomb), None))
    elif attack == "pax-bomb":
        members.append((_tar_member("././@PaxHeader", kind=tarfile.XHDTYPE, size=zip_bomb), None))
    manifest_members = []
    for info, data in members:
        kind = {tarfile.REGTYPE: "file", tarfile.SYMTYPE: "symlink"}.get(info.type, "other")
        is_file = kind == "file"
        manifest_members.append({"name": info.name, "type": kind, "size": (6 if data is None else len(data))
                                 if is_file else 0,
                                 "sha256": hashlib.sha256(data if data is not None else content).hexdigest()
                                 if is_file else None,
                                 "mode": info.mode, "mtime": info.mtime, "uid": 0, "gid": 0,
                                 "linkname": info.linkname})
    manifest = json.dumps({"format": "segura.backup/1", "id": snap_id, "appliance": APPLIANCE_NAME,
                           "members": manifest_members, "sessions": [], "facts": {},
                           "components": ["config"]}).encode()
    members.append((_tar_member("manifest.json", manifest), manifest))

    out = io.BytesIO()
    encryptor = Encryption.recipients_of([recipient]).open_encryptor(out)
    bytes_in = 0
    for info, data in members:
        # One zstd frame per piece; readers read across frames, so the bomb's frame is made only once.
        fmt = tarfile.GNU_FORMAT if info.type == tarfile.XHDTYPE else tarfile.PAX_FORMAT
        encryptor.write(zstandard.ZstdCompressor(level=3).compress(info.tobuf(fmt)))
        if data is None:
            encryptor.write(_zeros_frame())
        else:
            encryptor.write(zstandard.ZstdCompressor(level=3).compress(data + bytes(-len(data) % 512)))
        bytes_in += 6 if data is None else len(data)
    encryptor.write(zstandard.ZstdCompressor(level=3).compress(bytes(1024)))
    encryptor.close()
    return out.getvalue(), bytes_in, len(members), created


ZIP_BOMB_BYTES = 4 * 1024 ** 3  # ~130 KiB of zstd; unchecked, a reader would chew through 4 GiB
_ZEROS = []


def _zeros_frame():
    """A zstd frame of ZIP_BOMB_BYTES zeros , compressed once per session (~5 s)."""
    if not _ZEROS:
        out = io.BytesIO()
        writer = zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False)
        block = bytes(16 * 1024 * 1024)
        for _block in range(ZIP_BOMB_BYTES // len(block)):
            writer.write(block)
        writer.flush(zstandard.FLUSH_FRAME)
        _ZEROS.append(out.getvalue())
    return _ZEROS[0]


ATTACKS = ["traversal", "absolute", "symlink-escape", "write-through-symlink", "device", "hardlink", "fifo",
           "zip-bomb", "manifest-lies", "pax-bomb"]


def _publish(target_options, attack, index, recipient, signing_key):
    snap_id = "%08x" % (0xbad00000 + index)
    data, bytes_in, members, created = _craft(attack, snap_id, recipient)
    if attack == "manifest-lies":
        bytes_in = ZIP_BOMB_BYTES + 4096  # the sidecar believes the lie: only the manifest check can catch it
    moment = catalog.parse_utc(created)
    name = catalog.object_name(moment, snap_id, True)
    sidecar = catalog.Sidecar(id=snap_id, appliance=APPLIANCE_NAME, created=moment, object=name, size=len(data),
                              sha256=hashlib.sha256(data).hexdigest(), components=["config"],
                              counts={"members": members}, bytes_in=bytes_in,
                              versions={"appliance": None, "tool": "0.1.0"},
                              encryption={"mode": "x25519", "recipients": [recipient]}, db=None,
                              sessions={"count": 0, "bytes": 0}, duration=0.1)
    with open_target(target_options) as target:
        target.write_bytes(catalog.object_path(APPLIANCE_NAME, name), data)
        # Signed by the appliance's own key: a restore's member rules must hold even against what the
        # appliance itself (compromised) signs.
        catalog.publish_sidecar(target, sidecar, signing_key)
    return snap_id


def test_crafted_archives_are_refused_by_restore_and_verify(world):
    target = world["targets"]["path"]
    key = SigningKey.from_file(os.path.join(world["appliance"]["root"], DEFAULT_KEY_FILE))
    ids = {attack: _publish(target.options, attack, index, world["age"]["recipient"], key)
           for index, attack in enumerate(ATTACKS)}
    restore = {"target": target.options, "appliance": {"name": APPLIANCE_NAME, "root": world["appliance"]["root"]},
               "components": ["config"], "decryption": {"identity_file": world["key_file"]}}
    cases = []
    for attack, snap_id in ids.items():
        words = ["refusing it"] if "symlink" in attack else ["nothing was restored"]
        cases.append(("restore %s" % attack, "segura.backup.restore", dict(restore, snapshot=snap_id), words))
    verify = {"target": target.options, "appliance": APPLIANCE_NAME, "mode": "deep", "select": "ids",
              "ids": [ids["zip-bomb"], ids["pax-bomb"], ids["traversal"]],
              "decryption": {"identity_file": world["key_file"]}, "trust": trust_args(world["appliance"])}
    cases.append(("verify deep of bombs", "segura.backup.verify", verify, ["3 of 3 snapshot(s) failed"]))
    assert not os.path.exists("/tmp/segura-owned")
    started = time.monotonic()
    by_id = _run_cases(cases, world)
    print("crafted archives: %d cases in %.1f s" % (len(cases), time.monotonic() - started))
    assert not os.path.exists("/tmp/segura-owned")
    # The bomb is stopped by its declared size, before a byte of it is decompressed.
    assert "more than the" in by_id["restore zip-bomb"]["msg"], by_id["restore zip-bomb"]["msg"]
    assert "extended header" in by_id["restore pax-bomb"]["msg"], by_id["restore pax-bomb"]["msg"]
    # Links are refused by the restore's own rules, not by a manifest mismatch.
    for attack in ("symlink-escape", "write-through-symlink"):
        assert "differs from the manifest" not in by_id["restore %s" % attack]["msg"], by_id["restore %s" % attack]
