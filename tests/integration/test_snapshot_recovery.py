"""Disaster recovery with standard tools only: what the snapshot module wrote opens with Debian's
`age`, `zstd` and `tar`, and `cat db/dump.sql.* | mariadb` into a FRESH server brings back databases
whose fingerprint equals the source's. Files and session recordings match the manifest and the source.

Run: .venv/bin/pytest tests/integration/test_snapshot_recovery.py
"""

import hashlib
import json
import os
import stat
import subprocess

import pytest

from tests.integration.conftest import age_prelude_sha256, free_tcp_port, sha256_file, snapshot_args
from tests.integration.playbook import run_task
from tests.lab import reference
from tests.lab.mariadb import PORT_ENV, MariaDBService

MODULE = "segura.backup.snapshot"
ALL_COMPONENTS = ("database", "config", "secrets", "sessions")
PASSPHRASE = "correct horse \\ battery & staple! $'\"% ,ç"


@pytest.fixture(scope="module")
def fresh_mariadb(tmp_path_factory):
    """A second, empty MariaDB server on a free port (its own datadir); stopped after the module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PORT_ENV, str(free_tcp_port()))
        service = MariaDBService(str(tmp_path_factory.mktemp("fresh-mariadb")))
    service.up()
    try:
        yield service
    finally:
        service.down()


def _shell(script, *args, stdin=None):
    """bash -o pipefail -c SCRIPT with ARGS as $1.. (paths only: no secret on a command line)."""
    result = subprocess.run(["bash", "-o", "pipefail", "-c", script, "recovery"] + list(args), input=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def _load_dump(extracted, server):
    """Empty the fresh server's two databases, then `cat db/dump.sql.* | mariadb`."""
    conn = "--defaults-file=" + server.defaults_file
    _shell('mariadb "$1" -e "DROP DATABASE IF EXISTS mt4; DROP DATABASE IF EXISTS senhasegura"', conn)
    _shell('cat "$1"/db/dump.sql.* | mariadb "$2"', extracted, conn)


def _check_extracted(extracted, appliance, target, server):
    """Everything a restore needs is in the extracted tree and equals the source."""
    with open(os.path.join(extracted, "manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    with open(os.path.join(extracted, "snapshot.json"), encoding="utf-8") as handle:
        header = json.load(handle)
    assert manifest["format"] == header["format"] == "segura.backup/1"
    assert manifest["id"] == header["id"]

    # Every member the manifest lists was extracted with its sha256 (files) or link target.
    members = {member["name"]: member for member in manifest["members"]}
    for name, member in members.items():
        path = os.path.join(extracted, name)
        if member["type"] == "file":
            assert os.path.getsize(path) == member["size"], name
            assert sha256_file(path) == member["sha256"], name
        elif member["type"] == "symlink":
            assert os.readlink(path) == member["linkname"], name
        else:
            assert os.path.isdir(path), name

    # The dump: chunks in name order are the one dump whose sha256 the manifest records; beside them
    # db/facts.json, the source's table facts a restore is checked against.
    assert sorted(os.listdir(os.path.join(extracted, "db")))[-1] == "facts.json"
    chunks = sorted(name for name in os.listdir(os.path.join(extracted, "db")) if name != "facts.json")
    assert chunks and chunks == ["dump.sql.%06d" % number for number in range(len(chunks))]
    with open(os.path.join(extracted, "db", "facts.json"), encoding="utf-8") as handle:
        facts = json.load(handle)
    assert manifest["database"]["method"] == "logical" and manifest["database"]["facts"] == "db/facts.json"
    assert set(facts["tables"]) == {"%s.%s" % (db, table) for db, tables in
                                    appliance["fingerprint"]["databases"].items() for table in tables["tables"]}
    digest = hashlib.sha256()
    for name in chunks:
        with open(os.path.join(extracted, "db", name), "rb") as handle:
            digest.update(handle.read())
    assert (manifest["db"]["chunks"], manifest["db"]["sha256"]) == (len(chunks), digest.hexdigest())

    # Config and secrets: under files/<path on the appliance>, equal to the source's files.
    source_root = os.path.realpath(appliance["root"])
    files_root = os.path.join(extracted, "files")
    expected = {path: entry for path, entry in appliance["fingerprint"]["files"].items()
                if not path.startswith("var/senhasegura/arz")}  # recordings live beside the object
    restored = reference.fingerprint_files(files_root)
    assert restored == expected
    for name, member in members.items():
        if name.startswith("files/") and member["type"] == "file":
            source = os.path.join(source_root, name[len("files/"):])
            assert sha256_file(source) == member["sha256"], name
            assert stat.S_IMODE(os.lstat(source).st_mode) == member["mode"], name

    # Databases: reloaded into a fresh server, they fingerprint like the source.
    _load_dump(extracted, server)
    fresh = reference.fingerprint_databases({"defaults_file": server.defaults_file})
    assert fresh == appliance["fingerprint"]["databases"]

    # Session recordings: on the share beside the object, matching the manifest and the source.
    sessions = manifest["sessions"]
    assert len(sessions) == 49
    arz = os.path.join(source_root, "var/senhasegura/arz")
    for entry in sessions:
        stored = os.path.join(target.server_dir, entry["path"])
        assert os.path.getsize(stored) == entry["size"]
        assert sha256_file(stored) == entry["sha256"]
        below = entry["path"].split("/sessions/", 1)[1]
        assert sha256_file(os.path.join(arz, below)) == entry["sha256"]
    return manifest


def test_recover_x25519_snapshot_with_age_zstd_tar_and_mariadb(
        lab_target_factory, reference_appliance, age_identity, fresh_mariadb, tmp_path):
    target = lab_target_factory("smb_encrypted")
    run = run_task(MODULE, snapshot_args(reference_appliance, target, {"recipients": [age_identity["recipient"]]},
                                         components=ALL_COMPONENTS))
    assert run.rc == 0, run.output
    stored = os.path.join(target.server_dir, run.result["snapshot"]["object"])

    extracted = str(tmp_path / "extracted")
    os.makedirs(extracted)
    # The identity is a file: nothing secret on the command line.
    _shell('age -d -i "$1" "$2" | zstd -d | tar -x -C "$3"', age_identity["identity_file"], stored, extracted)
    manifest = _check_extracted(extracted, reference_appliance, target, fresh_mariadb)
    assert manifest["id"] == run.result["snapshot"]["id"]


def test_recover_passphrase_snapshot_with_pyrage_zstd_tar_and_mariadb(
        lab_target_factory, reference_appliance, fresh_mariadb, tmp_path):
    pyrage = pytest.importorskip("pyrage")
    target = lab_target_factory("nfs_v41")
    run = run_task(MODULE, snapshot_args(reference_appliance, target, {"mode": "passphrase", "passphrase": PASSPHRASE},
                                         components=ALL_COMPONENTS))
    assert run.rc == 0, run.output
    assert PASSPHRASE not in run.output
    stored = os.path.join(target.server_dir, run.result["snapshot"]["object"])
    with open(stored, "rb") as handle:
        ciphertext = handle.read()
    with open(os.path.join(target.server_dir, run.result["snapshot"]["sidecar"]), encoding="utf-8") as handle:
        assert json.load(handle)["encryption"] == {"mode": "passphrase", "recipients": [],
                                                   "prelude_sha256": age_prelude_sha256(stored)}

    # The age CLI reads passphrases only from a terminal; pyrage (the rage implementation) decrypts.
    plaintext = pyrage.passphrase.decrypt(ciphertext, PASSPHRASE)
    with pytest.raises(Exception):
        pyrage.passphrase.decrypt(ciphertext, PASSPHRASE + "x")
    extracted = str(tmp_path / "extracted")
    os.makedirs(extracted)
    _shell('zstd -d | tar -x -C "$1"', extracted, stdin=plaintext)
    _check_extracted(extracted, reference_appliance, target, fresh_mariadb)
