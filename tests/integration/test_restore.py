"""segura.backup.restore against real servers: restores that bring everything back, refusals that write nothing.

A private MariaDB (its own port) holds the reference appliance's databases, because these tests drop
them; a second private MariaDB plays a brand-new appliance. Snapshots are taken once per module with
the snapshot engine, to a local path target and to the lab's SMB share, then restored through
`ansible-playbook` (tests/integration/playbook.py).

Run: .venv/bin/pytest tests/integration/test_restore.py
Measure backup vs restore time once: .venv/bin/python -m tests.integration.test_restore --measure 200MB
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone

import pytest
import zstandard

from tests.integration.conftest import _remove_lab_target, appliance_trust, free_tcp_port, make_lab_target, trust_args
from tests.integration.playbook import run_task
from tests.lab import reference
from tests.lab.mariadb import PORT_ENV, MariaDBService
# As a script (--measure), this import makes ansible_collections importable.
import tests.conftest  # noqa: F401  pylint: disable=unused-import

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.writer import ArchiveWriter
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import DEFAULT_KEY_FILE, SigningKey
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import SnapshotRequest, take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.secret_checks import assert_no_secret

MODULE = "segura.backup.restore"
APPLIANCE = "ref-appliance"
VERSION = "3.32.0.12"
ALL = ("database", "config", "secrets", "sessions")
RESTORED_TOPS = ("etc", "srv", "var")


# ------------------------------------------------------------------ helpers
def start_mariadb(state_dir):
    """A private MariaDB on a free port (the lab's own server is shared with other tests)."""
    old = os.environ.get(PORT_ENV)
    os.environ[PORT_ENV] = str(free_tcp_port())
    try:
        service = MariaDBService(state_dir)
    finally:
        if old is None:
            os.environ.pop(PORT_ENV, None)
        else:
            os.environ[PORT_ENV] = old
    service.up()
    return service


def write_version(root, version=VERSION):
    """What `orbit version` would say on a real appliance: the layout's version file."""
    os.makedirs(os.path.join(root, "etc/senhasegura"), exist_ok=True)
    with open(os.path.join(root, "etc/senhasegura/version"), "w") as handle:
        handle.write(version + "\n")


def root_state(root):
    """{relative path: (type, mode, uid, gid, mtime_ns, size, sha256 or link)} of everything below root."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if os.path.islink(path):
                extra = os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    extra = hashlib.sha256(handle.read()).hexdigest()
            else:
                extra = None
            state[os.path.relpath(path, root)] = (info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns,
                                                  info.st_size, extra)
    return state


def db_conn(service):
    return {"defaults_file": service.defaults_file}


def drop_databases(service):
    subprocess.run(["mariadb", "--defaults-file=" + service.defaults_file],
                   input=b"DROP DATABASE IF EXISTS senhasegura; DROP DATABASE IF EXISTS mt4;", check=True, timeout=120)


def restore_args(appliance_root, service, target_options, decryption, name=APPLIANCE, **extra):
    args = {"target": target_options, "appliance": {"name": name, "root": appliance_root},
            "database": {"defaults_file": service.defaults_file}}
    if decryption is not None:
        args["decryption"] = decryption
    args.update(extra)
    return args


def take(root, service, target_options, recipient, name=APPLIANCE, components=ALL):
    request = SnapshotRequest(appliance=name, layout=ApplianceLayout(root=root),
                              encryption=Encryption.recipients_of([recipient]),
                              db=DatabaseConnection(defaults_file=service.defaults_file, exclusive_defaults=True),
                              components=components, db_method="logical")  # physical: test_database_methods.py
    with open_target(target_options) as target:
        return take_snapshot(target, request)


def appliance_key(root):
    """The signing key below an appliance's root (the reference appliance has one)."""
    return SigningKey.from_file(os.path.join(root, DEFAULT_KEY_FILE))


def sign_sidecar(path, key):
    """Sign a sidecar as its appliance would (a compromised appliance: the checks behind the signature)."""
    with open(path, "rb") as handle, open(path + ".sig", "wb") as out:
        out.write(key.sign(handle.read()))


def copy_snapshot(src_dir, dst_dir, snap, appliance=APPLIANCE, dst_appliance=None, key=None):
    """Copy one snapshot's object and sidecar into another target folder (optionally filed elsewhere),
    signed again by ``key`` when given."""
    dst_appliance = dst_appliance or appliance
    folder = os.path.join(dst_dir, dst_appliance, "snapshots")
    os.makedirs(folder, exist_ok=True)
    obj = os.path.join(src_dir, snap["object"])
    side = os.path.join(src_dir, snap["sidecar"])
    shutil.copy(obj, folder)
    with open(side) as handle:
        sidecar = json.load(handle)
    sidecar["appliance"] = dst_appliance
    path = os.path.join(folder, os.path.basename(side))
    with open(path, "w") as handle:
        json.dump(sidecar, handle)
    if key is not None:
        sign_sidecar(path, key)
    return os.path.join(folder, os.path.basename(obj)), path


def publish_raw(target_dir, appliance, members, key, encrypted=False):
    """A hand-made tar.zst (members: list of (TarInfo, bytes)) with a valid-looking sidecar."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            tar.addfile(info, io.BytesIO(data) if data else None)
    data = zstandard.ZstdCompressor().compress(raw.getvalue())
    created = datetime.now(timezone.utc).replace(microsecond=0)
    snap_id = catalog.new_snapshot_id()
    name = catalog.object_name(created, snap_id, encrypted)
    folder = os.path.join(target_dir, appliance, "snapshots")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as handle:
        handle.write(data)
    sidecar = catalog.Sidecar(id=snap_id, appliance=appliance, created=created, object=name, size=len(data),
                              sha256=hashlib.sha256(data).hexdigest(), components=["config"], counts={},
                              # what the members hold, as a real writer would record it: the reader
                              # refuses members beyond this (zip-bomb guard), before any path check
                              bytes_in=sum(len(d) for _info, d in members if d),
                              versions={"appliance": VERSION, "tool": "0.1.0"},
                              encryption={"mode": "none", "recipients": []}, db=None,
                              sessions={"count": 0, "bytes": 0}, duration=0.0)
    with open(os.path.join(folder, catalog.sidecar_name(name)), "wb") as handle:
        handle.write(sidecar.to_json())
    sign_sidecar(os.path.join(folder, catalog.sidecar_name(name)), key)
    return snap_id


def publish_written(target_dir, appliance, build, key, header_appliance=None):
    """An unencrypted snapshot written by ArchiveWriter (so the manifest matches) with a real sidecar."""
    created = datetime.now(timezone.utc).replace(microsecond=0)
    snap_id = catalog.new_snapshot_id()
    name = catalog.object_name(created, snap_id, False)
    with open_target({"type": "path", "path": target_dir}) as target:
        with catalog.AtomicUpload(target, catalog.object_path(appliance, name)) as upload:
            writer = ArchiveWriter(upload, Encryption.none())
            writer.add_json("snapshot.json", {"format": "segura.backup/1", "id": snap_id,
                                              "appliance": header_appliance or appliance,
                                              "created": catalog.format_utc(created), "components": ["config"],
                                              "facts": {"appliance_version": VERSION}})
            build(writer)
            result = writer.finish({"facts": {"appliance_version": VERSION}, "components": ["config"],
                                    "sessions": []})
        catalog.publish_sidecar(target, catalog.Sidecar(
            id=snap_id, appliance=appliance, created=created, object=name, size=upload.size, sha256=upload.sha256,
            components=["config"], counts={}, bytes_in=result.bytes_in,
            versions={"appliance": VERSION, "tool": "0.1.0"}, encryption={"mode": "none", "recipients": []},
            db=None, sessions={"count": 0, "bytes": 0}, duration=0.0), key)
    return snap_id


def tar_file(name, data=b"", mode=0o644):
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = 1700000000
    return info, data


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(lab, tmp_path_factory, age_identity):
    """A seeded 20 MB reference appliance on a private MariaDB, with one snapshot on a path target and
    one on the lab's signed SMB share; its fingerprint taken before anything is restored."""
    base = tmp_path_factory.mktemp("restore-world")
    source_db = start_mariadb(str(base / "db-source"))
    fresh_db = start_mariadb(str(base / "db-fresh"))
    smb = make_lab_target("smb_signed", lab, str(base / "unused"))
    try:
        root = str(base / "appliance")
        os.makedirs(root)
        reference.seed(root, reference.parse_size("20MB"), 1, db_conn(source_db))
        write_version(root)
        fingerprint = reference.fingerprint(root, db_conn(source_db))
        path_dir = str(base / "target-path")
        os.makedirs(path_dir)
        path_options = {"type": "path", "path": path_dir}
        path_snap = take(root, source_db, path_options, age_identity["recipient"])
        smb_snap = take(root, source_db, smb.options, age_identity["recipient"])
        yield {"root": root, "source_db": source_db, "fresh_db": fresh_db, "fingerprint": fingerprint,
               "path_dir": path_dir, "path_options": path_options, "path_snap": path_snap,
               "smb": smb, "smb_snap": smb_snap, "base": base,
               "decryption": {"identity_file": age_identity["identity_file"]}}
    finally:
        _remove_lab_target(smb)
        source_db.down()
        fresh_db.down()


@pytest.fixture
def refusal(world, tmp_path):
    """A private copy of the appliance's files (DB shared, unchanged by refusals) and a fresh target folder;
    after the test, the files and the databases must be exactly as before."""
    root = str(tmp_path / "appliance")
    shutil.copytree(world["root"], root, symlinks=True)
    before_files = root_state(root)
    before_db = reference.fingerprint_databases(db_conn(world["source_db"]))
    target_dir = str(tmp_path / "target")
    os.makedirs(target_dir)
    yield {"root": root, "target_dir": target_dir, "options": {"type": "path", "path": target_dir}}
    assert root_state(root) == before_files, "a refused restore wrote to the appliance's files"
    assert reference.fingerprint_databases(db_conn(world["source_db"])) == before_db, \
        "a refused restore changed the databases"


def assert_refused(run, *fragments):
    assert run.rc != 0 and run.result.get("failed"), run.output
    message = run.result.get("msg", "")
    for fragment in fragments:
        assert fragment in message, message
    assert "AGE-SECRET-KEY" not in run.output


# ------------------------------------------------------------------ restores
def test_destroyed_appliance_is_restored_from_a_path_target(world):
    """Drop both databases and delete every backed-up file; the restore brings the fingerprint back."""
    root, service = world["root"], world["source_db"]
    with_mtimes = reference.fingerprint_files(root, include_mtime=True)
    drop_databases(service)
    for top in ("etc/senhasegura", "etc/mysql", "srv/cache/coba", "var/senhasegura"):
        shutil.rmtree(os.path.join(root, top))
    assert reference.fingerprint(root, db_conn(service)) != world["fingerprint"]
    write_version(root)  # the application itself is still installed

    run = run_task(MODULE, restore_args(root, service, world["path_options"], world["decryption"],
                                        restore_sessions=True, pre_commands=[["true"]],
                                        post_commands=[["sh", "-c", "echo services started"]]))
    assert run.rc == 0, run.output
    assert run.result["changed"] is True
    assert reference.fingerprint(root, db_conn(service)) == world["fingerprint"]
    done = run.result["restore"]
    assert done["verification"]["ok"] is True
    assert done["verification"]["database"]["ok"] is True
    assert done["sessions"]["restored"] == 49
    assert done["post_commands"][0]["stdout"] == "services started\n"
    assert set(done["durations"]) >= {"fetch_verify", "database", "files", "sessions", "post_verify", "total"}
    assert run.result["plan"]["databases"] == ["mt4", "senhasegura"]
    assert run.result["plan"]["checks"]["database_order"]["order"] == ["mt4", "senhasegura"]
    # mtimes came back too (the fingerprint leaves them out); recordings carry none in the manifest.
    restored = reference.fingerprint_files(root, include_mtime=True)
    assert {k: v for k, v in restored.items() if not k.startswith("var/senhasegura/arz")} == \
        {k: v for k, v in with_mtimes.items() if not k.startswith("var/senhasegura/arz")}


def test_files_only_restore_is_idempotent_and_check_mode_is_honest(world):
    root, service = world["root"], world["source_db"]
    args = restore_args(root, service, world["path_options"], world["decryption"], components=["config", "secrets"])
    first = run_task(MODULE, args)
    assert first.rc == 0, first.output
    check = run_task(MODULE, args, check=True)
    assert check.rc == 0, check.output
    assert check.result["changed"] is False
    assert check.result["plan"]["overwrite_count"] == 0
    second = run_task(MODULE, args)
    assert second.rc == 0, second.output
    assert second.result["changed"] is False
    assert second.result["restore"]["written"]["files"] == 0


def test_check_mode_lists_overwrites_and_writes_nothing(world, tmp_path):
    root = str(tmp_path / "appliance")
    shutil.copytree(world["root"], root, symlinks=True)
    conf = os.path.join(root, "etc/senhasegura/senhasegura.conf")
    with open(conf, "a") as handle:
        handle.write("changed=1\n")
    os.remove(os.path.join(root, "srv/cache/coba/secrets_20250102T050000Z.aes"))
    before_files = root_state(root)
    before_db = reference.fingerprint_databases(db_conn(world["source_db"]))

    run = run_task(MODULE, restore_args(root, world["source_db"], world["path_options"], world["decryption"],
                                        pre_commands=[["sh", "-c", "touch %s/pre-ran" % tmp_path]]), check=True)
    assert run.rc == 0, run.output
    plan = run.result["plan"]
    assert run.result["changed"] is True
    assert plan["ok"] is True and plan["checks"]["deep"]["ok"] is True
    assert "etc/senhasegura/senhasegura.conf" in plan["overwrite"]
    assert plan["new"] == 1 and plan["overwrite_count"] == 1
    assert plan["databases"] == ["mt4", "senhasegura"] and plan["database_bytes"] > 1000000
    assert "restore" not in run.result
    assert root_state(root) == before_files
    assert not os.path.exists(str(tmp_path / "pre-ran"))
    assert reference.fingerprint_databases(db_conn(world["source_db"])) == before_db


def test_disaster_restore_onto_a_brand_new_appliance_from_smb(world, tmp_path):
    """A new machine named otherwise, an empty root and an empty MariaDB: everything comes back."""
    root = str(tmp_path / "new-appliance")
    os.makedirs(root)
    write_version(root)  # Segura is installed at the same version, nothing else
    fresh = world["fresh_db"]
    assert reference.fingerprint_databases(db_conn(fresh)) == {"mt4": None, "senhasegura": None}

    args = restore_args(root, fresh, world["smb"].options, world["decryption"], name="dr-appliance",
                        source_appliance=APPLIANCE, allow_other_appliance=True, restore_sessions=True,
                        trust=trust_args(world, APPLIANCE))  # the pinned key of the appliance that burnt
    run = run_task(MODULE, args)
    assert run.rc == 0, run.output
    assert reference.fingerprint(root, db_conn(fresh)) == world["fingerprint"]
    assert run.result["restore"]["snapshot"]["id"] == world["smb_snap"]["id"]
    assert_no_secret(run.output, world["smb"].options["password"], "the restore output")


# ------------------------------------------------------------------ refusals: nothing written
def test_refuses_another_appliances_snapshot_unless_allowed(world, refusal):
    args = restore_args(refusal["root"], world["source_db"], world["path_options"], world["decryption"],
                        name="other-box")
    run = run_task(MODULE, args)
    assert_refused(run, "no complete snapshot of appliance 'other-box'")
    run = run_task(MODULE, dict(args, source_appliance=APPLIANCE))
    assert_refused(run, "allow_other_appliance")


def test_refuses_a_snapshot_made_by_another_appliance_filed_under_this_one(world, refusal):
    copy_snapshot(world["path_dir"], refusal["target_dir"], world["path_snap"], dst_appliance="imposter",
                  key=appliance_key(refusal["root"]))
    run = run_task(MODULE, restore_args(refusal["root"], world["source_db"], refusal["options"],
                                        world["decryption"], name="imposter"))
    assert_refused(run, "made by another appliance", APPLIANCE)


def test_refuses_a_tampered_object_with_a_fixed_sidecar(world, refusal):
    obj, side = copy_snapshot(world["path_dir"], refusal["target_dir"], world["path_snap"])
    with open(obj, "r+b") as handle:
        handle.seek(os.path.getsize(obj) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    with open(obj, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    with open(side) as handle:
        sidecar = json.load(handle)
    sidecar.update(sha256=digest, size=os.path.getsize(obj))
    with open(side, "w") as handle:
        json.dump(sidecar, handle)
    sign_sidecar(side, appliance_key(refusal["root"]))  # signed: the object's own checks must catch it
    run = run_task(MODULE, restore_args(refusal["root"], world["source_db"], refusal["options"], world["decryption"]))
    assert_refused(run, "failed deep verification, nothing was restored", "tampered")


def test_refuses_a_wrong_key(world, refusal, tmp_path):
    key = str(tmp_path / "other-key.txt")
    subprocess.run(["age-keygen", "-o", key], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = run_task(MODULE, restore_args(refusal["root"], world["source_db"], world["path_options"],
                                        {"identity_file": key}))
    assert_refused(run, "cannot open snapshot", "no identity matches")


@pytest.mark.parametrize("name", ["files/../../../etc/cron.d/evil", "/etc/cron.d/evil",
                                  "files/etc/senhasegura/../../../../tmp/evil"])
def test_refuses_a_crafted_path_traversal_member(world, refusal, name):
    snap_id = publish_raw(refusal["target_dir"], APPLIANCE, [
        tar_file("snapshot.json", json.dumps({"format": "segura.backup/1", "id": "x", "appliance": APPLIANCE}).encode()),
        tar_file(name, b"* * * * * root sh -c 'id > /tmp/pwned'\n"),
        tar_file("manifest.json", b"{}"),
    ], appliance_key(refusal["root"]))
    run = run_task(MODULE, restore_args(refusal["root"], world["source_db"], refusal["options"], None,
                                        snapshot=snap_id))
    assert_refused(run, "failed deep verification, nothing was restored", "unsafe archive member")


def test_refuses_a_symlink_that_escapes_the_restored_tree(world, refusal):
    def build(writer):
        link = os.path.join(refusal["root"], "evil-link")
        os.symlink("../../../../etc", link)
        try:
            writer.add_dir("files/etc/senhasegura", os.path.join(refusal["root"], "etc/senhasegura"))
            writer.add_symlink("files/etc/senhasegura/escape", link)
        finally:
            os.remove(link)

    snap_id = publish_written(refusal["target_dir"], APPLIANCE, build, appliance_key(refusal["root"]))
    run = run_task(MODULE, restore_args(refusal["root"], world["source_db"], refusal["options"], None,
                                        components=["config"], snapshot=snap_id))
    assert_refused(run, "symbolic link /etc/senhasegura/escape", "climbs above the appliance root")


def test_refuses_a_member_outside_the_configured_paths(world, refusal):
    def build(writer):
        writer.add_file("files/etc/cron.d/evil", os.path.join(refusal["root"], "etc/senhasegura/senhasegura.conf"))

    snap_id = publish_written(refusal["target_dir"], APPLIANCE, build, appliance_key(refusal["root"]))
    run = run_task(MODULE, restore_args(refusal["root"], world["source_db"], refusal["options"], None,
                                        components=["config"], snapshot=snap_id))
    assert_refused(run, "/etc/cron.d/evil, outside the configured paths")


def test_refuses_a_version_mismatch_unless_forced(world, refusal):
    write_version(refusal["root"], "3.33.1.0")
    args = restore_args(refusal["root"], world["source_db"], world["path_options"], world["decryption"])
    run = run_task(MODULE, args)
    assert_refused(run, "taken on Segura %s but this appliance runs 3.33.1.0" % VERSION)
    forced = run_task(MODULE, dict(args, force_version_mismatch=True), check=True)
    assert forced.rc == 0, forced.output
    assert forced.result["plan"]["checks"]["version"]["forced"] is True
    # Put the version file back as it was: the fixture compares with the state before this test.
    shutil.copy2(os.path.join(world["root"], "etc/senhasegura/version"),
                 os.path.join(refusal["root"], "etc/senhasegura/version"))


def test_a_failing_pre_command_aborts_before_anything_is_written(world, refusal):
    run = run_task(MODULE, restore_args(refusal["root"], world["source_db"], world["path_options"],
                                        world["decryption"], pre_commands=[["sh", "-c", "echo busy >&2; exit 3"]]))
    assert_refused(run, "pre command sh -c echo busy >&2; exit 3 failed (exit code 3): busy")


# ------------------------------------------------------------------ measurement (not a test)
def measure(size_text):
    """Backup and restore time of one reference appliance, once each (printed, never asserted)."""
    import tempfile
    base = tempfile.mkdtemp(prefix="segura-restore-measure-")
    service = start_mariadb(os.path.join(base, "db"))
    try:
        root = os.path.join(base, "appliance")
        os.makedirs(root)
        seeded = reference.seed(root, reference.parse_size(size_text), 1, db_conn(service))
        write_version(root)
        fingerprint = reference.fingerprint(root, db_conn(service))
        key = os.path.join(base, "key.txt")
        subprocess.run(["age-keygen", "-o", key], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        recipient = subprocess.run(["age-keygen", "-y", key], check=True, stdout=subprocess.PIPE,
                                   text=True).stdout.strip()
        options = {"type": "path", "path": os.path.join(base, "target")}
        os.makedirs(options["path"])
        started = time.monotonic()
        snap = take(root, service, options, recipient)
        backup_seconds = time.monotonic() - started
        drop_databases(service)
        for top in ("etc/senhasegura", "etc/mysql", "srv/cache/coba", "var/senhasegura"):
            shutil.rmtree(os.path.join(root, top))
        write_version(root)
        from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption
        from ansible_collections.segura.backup.plugins.module_utils._engine.restore.apply import restore
        from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
        request = RestoreRequest(appliance=APPLIANCE, layout=ApplianceLayout(root=root),
                                 decryption=Decryption.identity_file(key),
                                 db=DatabaseConnection(defaults_file=service.defaults_file, exclusive_defaults=True),
                                 restore_sessions=True, trust=appliance_trust({"root": root}, APPLIANCE))
        started = time.monotonic()
        with open_target(options) as target:
            done = restore(target, request)
        restore_seconds = time.monotonic() - started
        same = reference.fingerprint(root, db_conn(service)) == fingerprint
        print(json.dumps({"size": size_text, "appliance_bytes": seeded["total_bytes"], "object_bytes": snap["size"],
                          "db_bytes": snap["counts"]["db_bytes"], "backup_seconds": round(backup_seconds, 2),
                          "restore_seconds": round(restore_seconds, 2), "restore_phases": done["durations"],
                          "fingerprint_equal": same}, indent=2))
    finally:
        service.down()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        measure(sys.argv[2])
    else:
        sys.exit("usage: python -m tests.integration.test_restore --measure 200MB")
