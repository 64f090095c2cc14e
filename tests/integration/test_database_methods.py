"""The two database methods against a real MariaDB: exact physical restores, honest logical ones.

One private MariaDB (its own port and datadir, stopped and started by the tests) holds a small
reference appliance plus the values a logical dump mangles: FLOAT edge values (a dump prints about
six digits), DOUBLE edge values (a dump carries them exactly) and a system-versioned table with
history. The source's fingerprint is taken by this file's own client queries (CHECKSUM TABLE, row
counts with history, FLOAT values compared as FLOAT), never by the engine under test.

Run: .venv/bin/pytest tests/integration/test_database_methods.py
"""

import json
import os
import shutil
import subprocess

import pytest

from tests.integration.conftest import age_prelude_sha256, appliance_trust, trust_args
from tests.integration.playbook import run_task
from tests.integration.test_restore import start_mariadb, write_version
from tests.lab import reference

from ansible_collections.segura.backup.plugins.module_utils._engine import age, catalog
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.reader import ArchiveReader
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, BackupError, TargetError
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.apply import restore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.check import check_database
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.physical import PhysicalRestore, PhysicalSetup
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.plan import plan_restore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.swap import DatadirSwap
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import DEFAULT_KEY_FILE, SigningKey
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import SnapshotRequest, take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.streams import HashingReader
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target

APPLIANCE = "methods-appliance"
DATABASES = ("mt4", "senhasegura")
# What a logical dump mangles, and what it does not: FLOAT prints rounded, DOUBLE round-trips, the
# history of a system-versioned table needs --dump-history.
EDGE_SQL = b"""
CREATE TABLE mt4.edge_floats (id INT PRIMARY KEY, f FLOAT) ENGINE=InnoDB;
INSERT INTO mt4.edge_floats VALUES (1, 1.2345678), (2, 3.4028234e38), (3, -1.17549435e-38), (4, 0.1), (5, NULL);
CREATE TABLE mt4.edge_doubles (id INT PRIMARY KEY, d DOUBLE) ENGINE=InnoDB;
INSERT INTO mt4.edge_doubles VALUES (1, 1.2345678901234567), (2, 1.7976931348623157e308), (3, 4.9e-324), (4, 0.1),
  (5, -0.0);
CREATE TABLE senhasegura.credential_history (id INT PRIMARY KEY, secret VARCHAR(64)) WITH SYSTEM VERSIONING;
INSERT INTO senhasegura.credential_history VALUES (1, 'first'), (2, 'kept');
UPDATE senhasegura.credential_history SET secret = 'second' WHERE id = 1;
UPDATE senhasegura.credential_history SET secret = 'third' WHERE id = 1;
"""
#: FLOAT values compared as FLOAT: 1 when the stored bits are the source's, 0 when a dump rounded them.
EXACT_FLOATS = ("SELECT COUNT(*) FROM mt4.edge_floats WHERE f = CAST(1.2345678 AS FLOAT) "
                "OR f = CAST(3.4028234e38 AS FLOAT);")


def mariadb(defaults_file, sql):
    done = subprocess.run(["mariadb", "--defaults-file=" + defaults_file, "--batch", "--skip-column-names"],
                          input=sql.encode() if isinstance(sql, str) else sql, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False, timeout=300)
    assert done.returncode == 0, "mariadb failed: %s" % done.stderr.decode(errors="replace")[-500:]
    return [line.split("\t") for line in done.stdout.decode().splitlines()]


def fingerprint(defaults_file):
    """{table: (rows with history, CHECKSUM TABLE)} of both databases, and the exact-FLOAT count."""
    tables = mariadb(defaults_file, "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                                    "WHERE TABLE_SCHEMA IN ('mt4', 'senhasegura') AND TABLE_TYPE <> 'VIEW' ORDER BY 1, 2;")
    result = {}
    for schema, table, kind in tables:
        name = "`%s`.`%s`" % (schema, table)
        history = " FOR SYSTEM_TIME ALL" if kind == "SYSTEM VERSIONED" else ""
        rows = mariadb(defaults_file, "SELECT COUNT(*) FROM %s%s;" % (name, history))[0][0]
        checksum = mariadb(defaults_file, "CHECKSUM TABLE %s;" % name)[0][1]
        result["%s.%s" % (schema, table)] = (int(rows), checksum)
    result["exact floats"] = int(mariadb(defaults_file, EXACT_FLOATS)[0][0])
    return result


@pytest.fixture(scope="module")
def source(tmp_path_factory, age_identity):
    """A private server with a small reference appliance and the edge tables; yields its facts."""
    base = tmp_path_factory.mktemp("methods")
    service = start_mariadb(str(base / "server"))
    try:
        root = str(base / "appliance")
        reference.seed(root, reference.parse_size("4MB"), 3, {"defaults_file": service.defaults_file})
        write_version(root)
        mariadb(service.defaults_file, EDGE_SQL)
        before = fingerprint(service.defaults_file)
        assert before["exact floats"] == 2 and before["senhasegura.credential_history"][0] == 4
        yield {"service": service, "root": root, "target": str(base / "target"), "fingerprint": before,
               "key": age_identity}
    finally:
        service.down()


def take(source, method=None, **extra):
    service = source["service"]
    request = SnapshotRequest(appliance=APPLIANCE, layout=ApplianceLayout(root=source["root"]),
                              encryption=Encryption.recipients_of([source["key"]["recipient"]]),
                              db=DatabaseConnection(defaults_file=service.defaults_file, exclusive_defaults=True),
                              components=("database", "config"), db_method=method, **extra)
    os.makedirs(source["target"], exist_ok=True)
    with open_target({"type": "path", "path": source["target"]}) as target:
        return take_snapshot(target, request)


def restore_args(source, snap, **database):
    return {"target": {"type": "path", "path": source["target"]},
            "decryption": {"identity_file": source["key"]["identity_file"]},
            "appliance": {"name": APPLIANCE, "root": source["root"]}, "snapshot": snap["id"],
            "components": ["database"],
            "database": dict({"defaults_file": source["service"].defaults_file}, **database)}


def restore_request(source, snap, **extra):
    return RestoreRequest(appliance=APPLIANCE, layout=ApplianceLayout(root=source["root"]),
                          decryption=Decryption.identity_file(source["key"]["identity_file"]),
                          db=DatabaseConnection(defaults_file=source["service"].defaults_file, exclusive_defaults=True),
                          snapshot=snap["id"], components=["database"],
                          **dict({"trust": appliance_trust(source, APPLIANCE)}, **extra))


def sidecar_of(source, snap):
    with open(os.path.join(source["target"], snap["sidecar"]), encoding="utf-8") as handle:
        return json.load(handle)


def scramble(source):
    """Change what the restore must bring back: a FLOAT, history, a row of the reference data."""
    mariadb(source["service"].defaults_file, "UPDATE mt4.edge_floats SET f = 7 WHERE id = 1; UPDATE mt4.edge_doubles SET d = 0 WHERE id = 2; "
                                             "DELETE FROM senhasegura.credential_history WHERE id = 2; "
                                             "CREATE TABLE IF NOT EXISTS mt4.not_in_the_snapshot (id INT);")


def leftovers(datadir):
    parent, name = os.path.split(datadir)
    return sorted(entry for entry in os.listdir(parent) if entry.startswith(name + "."))


def remove_leftovers(datadir):
    for entry in leftovers(datadir):
        shutil.rmtree(os.path.join(os.path.dirname(datadir), entry))


# ------------------------------------------------------------------ physical
def test_the_default_is_physical_and_the_records_say_how_and_where(source):
    snap = take(source)
    database = snap["database"]
    assert database["method"] == "physical" and snap["warnings"] == []
    assert database["tool_version"] == database["server_version"].split("-")[0]
    assert database["position"]["lsn_to"] >= database["position"]["lsn_from"] > 0
    side = sidecar_of(source, snap)["db"]
    assert side["method"] == "physical" and side["tool_version"] == database["tool_version"]
    assert side["position"] == database["position"] and side["bytes"] == snap["counts"]["db_bytes"]
    # The signed sidecar pins the object's age header and payload nonce, computed here from the file.
    prelude = age_prelude_sha256(os.path.join(source["target"], snap["object"]))
    assert sidecar_of(source, snap)["encryption"]["prelude_sha256"] == prelude


def test_physical_restore_into_an_offline_datadir_is_exact(source):
    service = source["service"]
    snap = take(source, "physical")
    scramble(source)
    assert fingerprint(service.defaults_file) != source["fingerprint"]
    service.down()
    try:
        done = run_task("segura.backup.restore", restore_args(source, snap, service="none", datadir=service.datadir))
    finally:
        service.up()
    assert not done.failed, done.output
    restored = done.result["restore"]
    assert restored["database_method"] == "physical"
    # Signed, with the age header pinned: extracted while pass 1 verified, no second read of the object.
    assert done.result["plan"]["checks"]["deep"]["extracted_while_verifying"] is True
    assert restored["verification"]["database"]["strength"] == "copy"
    assert fingerprint(service.defaults_file) == source["fingerprint"]  # FLOAT bits and history included
    previous = restored["physical"]["previous_datadir"]
    assert os.path.isdir(os.path.join(previous, "mt4")) and leftovers(service.datadir) == [os.path.basename(previous)]
    assert any(previous in warning for warning in done.result.get("warnings", restored["warnings"]))
    remove_leftovers(service.datadir)


def _restore_offline(source, snap, components=("database",)):
    """The restore module with database.service none, the server stopped around it; (result, fingerprint before)."""
    service = source["service"]
    before = fingerprint(service.defaults_file)
    args = restore_args(source, snap, service="none", datadir=service.datadir)
    args["components"] = list(components)
    service.down()
    try:
        done = run_task("segura.backup.restore", args)
    finally:
        service.up()
    return done, before


def _reencrypt(source, snap):
    """Put in the object's place the same plaintext encrypted again to the same recipient: the same
    size, another age header (a new file key) - what a share writer holding only the public key makes."""
    path = os.path.join(source["target"], snap["object"])
    with open(source["key"]["identity_file"], encoding="utf-8") as handle:
        identity = [line.strip() for line in handle if line.startswith("AGE-SECRET-KEY-")][0]
    with open(path, "rb") as handle, open(path + ".new", "wb") as out:
        decrypted = age.Decryptor(handle, identities=[identity])
        encrypted = age.Encryptor(out, recipients=[source["key"]["recipient"]])
        for block in iter(lambda: decrypted.read(1 << 20), b""):
            encrypted.write(block)
        encrypted.close()
    assert os.path.getsize(path + ".new") == os.path.getsize(path)
    os.replace(path + ".new", path)


def test_an_object_replaced_on_the_share_is_refused_before_anything_is_extracted(source):
    snap = take(source, "physical")
    _reencrypt(source, snap)
    done, before = _restore_offline(source, snap)
    assert done.failed, done.output
    assert "its age header is not the one its signed sidecar records" in done.result["msg"], done.result["msg"]
    assert leftovers(source["service"].datadir) == []
    assert fingerprint(source["service"].defaults_file) == before


def test_a_chunk_damaged_on_the_share_stops_the_extraction_and_leaves_nothing_behind(source):
    snap = take(source, "physical")
    path = os.path.join(source["target"], snap["object"])
    with open(path, "r+b") as handle:  # one bit, past the first chunks: mbstream has been fed by then
        handle.seek(os.path.getsize(path) * 2 // 3)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))
    done, before = _restore_offline(source, snap)
    assert done.failed and "age payload corrupt or tampered" in done.result["msg"], done.result["msg"]
    assert leftovers(source["service"].datadir) == []
    assert fingerprint(source["service"].defaults_file) == before


def test_a_plan_refused_after_the_extraction_removes_the_staging_folder(source):
    """The file checks come after pass 1 (the manifest is last): a refusal then must discard what was extracted."""
    snap = take(source, "physical")
    config = os.path.join(source["root"], "var", "senhasegura", "orbinibkp.conf")
    os.rename(config, config + ".aside")
    os.mkdir(config)  # a directory where the snapshot has a file: the plan refuses to replace it
    try:
        done, before = _restore_offline(source, snap, components=("database", "config"))
    finally:
        os.rmdir(config)
        os.rename(config + ".aside", config)
    assert done.failed and "exist with another type" in done.result["msg"], done.result["msg"]
    assert leftovers(source["service"].datadir) == []
    assert fingerprint(source["service"].defaults_file) == before


def test_physical_restore_refuses_while_a_server_holds_the_datadir(source):
    service = source["service"]
    snap = take(source, "physical")
    mariadb(service.defaults_file, "CREATE TABLE mt4.written_after (id INT);")
    done = run_task("segura.backup.restore", restore_args(source, snap, service="none", datadir=service.datadir))
    assert done.failed and "a running server holds %s" % service.datadir in done.result["msg"], done.output
    assert mariadb(service.defaults_file, "SHOW TABLES FROM mt4 LIKE 'written_after';") == [["written_after"]]
    assert leftovers(service.datadir) == []
    mariadb(service.defaults_file, "DROP TABLE mt4.written_after;")


def test_physical_restore_refuses_another_mariadb_backup_version_before_touching_anything(source, tmp_path,
                                                                                          monkeypatch):
    snap = take(source, "physical")
    # Test double of an older mariadb-backup: it only answers --version.
    double = tmp_path / "bin" / "mariadb-backup"
    double.parent.mkdir()
    double.write_text("#!/bin/sh\necho 'mariadb-backup based on MariaDB server 10.6.99-MariaDB debian-linux-gnu' >&2\n")
    double.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (double.parent, os.environ["PATH"]))
    request = restore_request(source, snap, db_service="none", db_datadir=source["service"].datadir)
    with open_target({"type": "path", "path": source["target"]}) as target:
        plan = plan_restore(target, request)
    version = snap["database"]["tool_version"]
    assert not plan.ok
    assert any("taken by mariadb-backup %s" % version in p and "this host has mariadb-backup 10.6.99" in p
               for p in plan.problems), plan.problems
    assert leftovers(source["service"].datadir) == []


def test_another_mariadb_backup_version_makes_the_snapshot_logical_and_says_why(source, tmp_path, monkeypatch):
    double = tmp_path / "bin" / "mariadb-backup"  # test double of an older mariadb-backup: --version only
    double.parent.mkdir()
    double.write_text("#!/bin/sh\necho 'mariadb-backup based on MariaDB server 10.6.99-MariaDB debian-linux-gnu' >&2\n")
    double.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (double.parent, os.environ["PATH"]))
    snap = take(source)
    assert snap["database"]["method"] == "logical"
    assert any(warning.startswith("database method logical: mariadb-backup is version 10.6.99 but the server runs 10.11")
               for warning in snap["warnings"]), snap["warnings"]
    with pytest.raises(ApplianceError, match="database method physical is not possible here: mariadb-backup is "
                                             "version 10.6.99"):
        take(source, "physical")


def _datadirs(tmp_path):
    datadir, staging = tmp_path / "data", tmp_path / "data.restore-x"
    datadir.mkdir(exist_ok=True)
    (datadir / "ibdata1").write_text("old")
    (datadir / "mt4").mkdir()
    (datadir / "mt4" / "t.ibd").write_text("old table")
    staging.mkdir()
    (staging / "ibdata1").write_text("restored")
    (staging / "senhasegura").mkdir()
    return datadir, staging


def _contents(folder):
    return {os.path.relpath(os.path.join(base, name), str(folder)): open(os.path.join(base, name)).read()
            for base, _dirs, files in os.walk(str(folder)) for name in files}


def test_a_failure_after_the_swap_puts_the_previous_datadir_back(tmp_path):
    datadir, staging = _datadirs(tmp_path)
    setup = PhysicalSetup(datadir=str(datadir), tool="", server="", service="none", stamp="x", staging=str(staging),
                          previous=str(tmp_path / "data.pre-restore-x"))
    restorer = PhysicalRestore(None, setup, DATABASES)
    restorer.swap.swap_in()
    assert restorer.swap.mode == "rename" and (datadir / "ibdata1").read_text() == "restored"
    with pytest.raises(ApplianceError, match=r"failed after the datadir swap and was rolled back: the server did "
                                             r"not start\. The previous datadir is back in .*data; the restored "
                                             r"copy was kept as .*data\.failed-restore-x"):
        restorer._roll_back(RuntimeError("the server did not start"))
    assert _contents(datadir) == {"ibdata1": "old", "mt4/t.ibd": "old table"}
    assert (tmp_path / "data.failed-restore-x" / "ibdata1").read_text() == "restored"
    assert not os.path.exists(setup.previous) and not os.path.exists(str(staging))


def test_a_datadir_that_is_a_mount_point_is_swapped_by_its_entries_and_back(tmp_path):
    """Its own filesystem (an LVM volume on many servers) cannot be renamed: EBUSY. The entries move instead,
    across filesystems by cp -a, with owner and mode."""
    datadir = tmp_path / "data"
    datadir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0750", "segura-test-datadir", str(datadir)],
                   check=True, timeout=30)
    try:
        _datadirs(tmp_path)
        os.chown(str(datadir / "mt4" / "t.ibd"), 1234, 4321)
        swap = DatadirSwap(str(datadir), str(tmp_path / "data.restore-x"), str(tmp_path / "data.pre-restore-x"))
        swap.swap_in()
        assert swap.mode == "entries" and os.path.ismount(str(datadir))
        assert _contents(datadir) == {"ibdata1": "restored"} and (datadir / "senhasegura").is_dir()
        previous = tmp_path / "data.pre-restore-x"
        assert _contents(previous) == {"ibdata1": "old", "mt4/t.ibd": "old table"}
        assert (previous / "mt4" / "t.ibd").stat().st_uid == 1234 and oct(previous.stat().st_mode & 0o777) == "0o750"
        swap.roll_back(str(tmp_path / "data.failed-restore-x"))
        assert _contents(datadir) == {"ibdata1": "old", "mt4/t.ibd": "old table"}
        assert (datadir / "mt4" / "t.ibd").stat().st_gid == 4321
        assert _contents(tmp_path / "data.failed-restore-x") == {"ibdata1": "restored"}
        assert not previous.exists()
    finally:
        subprocess.run(["umount", str(datadir)], check=True, timeout=30)


# ------------------------------------------------------------------ logical
def test_a_logical_snapshot_names_what_it_cannot_carry(source):
    snap = take(source, "logical")
    losses = snap["database"]["losses"]
    assert [(loss["table"], loss["column"]) for loss in losses if loss["changes_data"]] == [("mt4.edge_floats", "f")]
    assert snap["database"]["dump_history"] is True and snap["database"]["facts"] == "db/facts.json"
    assert any("mt4.edge_floats.f" in warning and "physical" in warning for warning in snap["warnings"])
    assert sidecar_of(source, snap)["db"]["method"] == "logical"


def test_a_logical_restore_loses_exactly_the_reported_columns_and_says_so(source):
    service = source["service"]
    snap = take(source, "logical")
    scramble(source)
    done = run_task("segura.backup.restore", restore_args(source, snap))
    assert not done.failed, done.output
    check = done.result["restore"]["verification"]["database"]
    assert check["ok"] and check["strength"] == "exact except the known losses"
    assert [(loss["table"], loss["column"]) for loss in check["known_losses"]] == [("mt4.edge_floats", "f")]
    assert any("mt4.edge_floats.f" in warning for warning in done.result["restore"]["warnings"])
    after = fingerprint(service.defaults_file)
    lost = {name for name in after if after[name] != source["fingerprint"].get(name)}
    # Exactly the FLOAT table's checksum and the exact-FLOAT probe differ; DOUBLE and history came back whole.
    assert lost == {"mt4.edge_floats", "exact floats"}, lost
    assert after["mt4.edge_floats"][0] == source["fingerprint"]["mt4.edge_floats"][0]
    assert after["senhasegura.credential_history"] == source["fingerprint"]["senhasegura.credential_history"]


def test_the_check_fails_when_a_restored_table_differs_from_the_source(source):
    service = source["service"]
    snap = take(source, "logical")
    request = restore_request(source, snap)
    with open_target({"type": "path", "path": source["target"]}) as target:
        plan = plan_restore(target, request)
    assert check_database(request, plan)["ok"]  # nothing changed since the snapshot
    mariadb(service.defaults_file, "UPDATE senhasegura.credential_history SET secret = 'tampered' WHERE id = 2;")
    result = check_database(request, plan)
    assert not result["ok"]
    assert any(problem.startswith("table senhasegura.credential_history holds 5 rows") for problem in result["problems"])
    mariadb(service.defaults_file, "UPDATE mt4.edge_doubles SET d = d * 2 WHERE id = 1; CREATE TABLE mt4.added (i INT);")
    result = check_database(request, plan)
    assert any("table mt4.edge_doubles has the snapshot's 5 rows but not its content" in problem
               for problem in result["problems"]), result["problems"]
    assert "table mt4.added exists after the restore but not in the snapshot" in result["problems"]
    # A known loss is still compared by its row count.
    mariadb(service.defaults_file, "DELETE FROM mt4.edge_floats WHERE id = 5;")
    assert "table mt4.edge_floats holds 4 rows, the snapshot 5" in check_database(request, plan)["problems"]


# ------------------------------------------------------------------ by hand
def test_a_physical_snapshot_comes_back_by_hand_with_the_documented_commands(source, tmp_path):
    """docs/recovery.md: age -d | zstd -d | tar -x, cat | mbstream -x, --prepare, --copy-back; then a server."""
    snap = take(source, "physical")
    datadir = tmp_path / "datadir"
    script = os.path.join(os.path.dirname(__file__), "recover_physical_by_hand.sh")
    subprocess.run(["bash", script, os.path.join(source["target"], snap["object"]),
                    source["key"]["identity_file"], str(tmp_path / "work"), str(datadir)], check=True, timeout=600,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    socket = str(tmp_path / "by-hand.sock")
    # --skip-grant-tables: the check is about the data; the restored accounts are the source's.
    server = subprocess.Popen(["mariadbd", "--no-defaults", "--user=root", "--datadir=" + str(datadir),
                               "--socket=" + socket, "--skip-networking", "--skip-grant-tables",
                               "--pid-file=" + str(tmp_path / "pid"),
                               "--log-error=" + str(tmp_path / "err.log")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        client = tmp_path / "client.cnf"
        client.write_text("[client]\nuser = root\nsocket = %s\n" % socket)
        for _attempt in range(300):
            if subprocess.run(["mariadb", "--defaults-file=" + str(client), "-e", "SELECT 1"], check=False,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30).returncode == 0:
                break
            assert server.poll() is None, (tmp_path / "err.log").read_text()
            subprocess.run(["sleep", "0.2"], check=True)
        assert fingerprint(str(client)) == fingerprint(source["service"].defaults_file)
    finally:
        server.terminate()
        server.wait(timeout=120)


def test_catalog_sidecar_of_a_physical_snapshot_is_still_a_sidecar(source):
    snap = take(source, "physical")
    with open_target({"type": "path", "path": source["target"]}) as target:
        records = catalog.list_snapshots(target, APPLIANCE).for_appliance(APPLIANCE)
    assert any(record.id == snap["id"] and record.complete for record in records)


# ------------------------------------------------------------------ reads that fail in the second pass
class FailingReads:
    """Wraps a real target: from the ``first``-th open on, reads past ``offset`` bytes fail (a share that
    drops the connection); ``times`` failures in all."""

    def __init__(self, target, offset, first, times):
        self.target, self.offset, self.first, self.times = target, offset, first, times
        self.opens = 0

    def __getattr__(self, name):
        return getattr(self.target, name)

    def open_read(self, relpath):
        self.opens += 1
        handle = self.target.open_read(relpath)
        if self.opens < self.first or not relpath.endswith(".age"):
            return handle
        wrapper = self

        class Handle:
            position = 0

            def read(self, size=-1):
                if wrapper.times and self.position >= wrapper.offset:
                    wrapper.times -= 1
                    raise TargetError("simulated: connection reset while reading %s" % relpath)
                if wrapper.times and (size is None or size < 0 or self.position + size > wrapper.offset):
                    size = wrapper.offset - self.position  # the bytes before the cut still arrive
                data = handle.read(size)
                self.position += len(data)
                return data

            def close(self):
                handle.close()

        return Handle()


def _object_offset_of(path, identity_file, member):
    """How far into the object the engine's reader has read when ``member`` begins."""
    with open(path, "rb") as handle:
        counted = HashingReader(handle)
        reader = ArchiveReader(counted, Decryption.identity_file(identity_file))
        try:
            for info, content in reader.members(strict=False):
                if info.name == member:
                    return counted.bytes
                while content.read(1024 * 1024):  # as the restore reads a chunk (restore/logical.spool_chunk)
                    pass
        finally:
            reader.close()
    raise AssertionError("%s is not in %s" % (member, path))


def _bulk_snapshot(source):
    """A logical snapshot whose dump spans several 1 MiB chunks."""
    # 3 MB that do not compress, so each 1 MiB chunk spans many of the object's 64 KiB age chunks.
    mariadb(source["service"].defaults_file, "CREATE TABLE IF NOT EXISTS mt4.bulk (id INT PRIMARY KEY, b BLOB); "
                                             "INSERT IGNORE INTO mt4.bulk SELECT seq, RANDOM_BYTES(1024) FROM mt4.seq_1_to_3000;")
    snap = take(source, "logical", chunk_size=1024 * 1024)
    assert snap["counts"]["db_chunks"] >= 4
    return snap


def _logical_restore_with_failures(source, times, snap=None):
    snap = snap or _bulk_snapshot(source)
    request = restore_request(source, snap)
    offset = _object_offset_of(os.path.join(source["target"], snap["object"]), source["key"]["identity_file"],
                               "db/dump.sql.000002")
    with open_target({"type": "path", "path": source["target"]}) as real:
        # Open 1 is pass 1; in the second pass (open 2 on) reads fail once two chunks were loaded.
        return restore(FailingReads(real, offset, first=2, times=times), request)


def test_a_read_that_fails_once_in_the_second_pass_is_resumed_and_the_restore_completes(source):
    done = _logical_restore_with_failures(source, times=1)
    assert done["verification"]["ok"] and done["verification"]["database"]["strength"].startswith("exact")


def test_a_logical_restore_that_cannot_go_on_says_the_databases_are_partly_restored(source):
    snap = _bulk_snapshot(source)
    with pytest.raises(ApplianceError) as failure:
        _logical_restore_with_failures(source, times=99, snap=snap)
    message = str(failure.value)
    assert message.startswith("databases partly restored: the restore stopped after ")
    assert "simulated: connection reset" in message and "mt4 then senhasegura" in message
    assert "mt4 has " in message and "run the restore again" in message and "physical" in message
    again = _logical_restore_with_failures(source, times=0, snap=snap)  # the snapshot is intact: a second run mends it
    assert again["verification"]["ok"]


def test_deep_verify_of_a_physical_snapshot_checks_its_stream_and_its_method_against_the_sidecar(source):
    snap = take(source, "physical")
    args = {"target": {"type": "path", "path": source["target"]}, "appliance": APPLIANCE, "mode": "deep",
            "decryption": {"identity_file": source["key"]["identity_file"]}, "ids": [snap["id"]], "select": "ids",
            "trust": trust_args(source, APPLIANCE)}
    done = run_task("segura.backup.verify", args)
    assert not done.failed and done.result["snapshots"][0]["ok"], done.output
    # The sidecar's word on the method is checked against the manifest inside the object.
    path = os.path.join(source["target"], snap["sidecar"])
    side = sidecar_of(source, snap)
    side["db"]["tool_version"] = "10.6.99"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(side, handle)
    done = run_task("segura.backup.verify", dict(args, fail_on_error=False))
    assert "does not match the sidecar" in " ".join(done.result["snapshots"][0]["problems"]), done.output
    # Signed again by the appliance's own key (an appliance that lies): the manifest still tells.
    with open(path, "rb") as handle, open(path + ".sig", "wb") as sig:
        sig.write(SigningKey.from_file(os.path.join(source["root"], DEFAULT_KEY_FILE)).sign(handle.read()))
    done = run_task("segura.backup.verify", dict(args, fail_on_error=False))
    problems = " ".join(done.result["snapshots"][0]["problems"])
    assert "database method and versions" in problems, done.output


# ------------------------------------------------------------------ the target cut in the second pass
#: Where pass 2 loses the share for good, as fractions of the object: before the first database
#: chunk, early, midway and near the end (after the last chunk of a small object, in the files).
CUT_AT = (0.02, 0.3, 0.6, 0.95)


@pytest.mark.parametrize("fraction", CUT_AT)
@pytest.mark.parametrize("passes", ["streamed", "two passes"])
def test_a_physical_restore_cut_while_it_reads_the_object_leaves_the_live_datadir_and_says_so(source, fraction, passes):
    """The share drops for good at four points of a physical restore (offline datadir): in its only pass
    (signed: extracted while verified) or in its second (unsigned, allowed: verified first). One clear
    error, the live datadir as it was (nothing swapped), no staging folder, and the next run is exact."""
    service = source["service"]
    snap = take(source, "physical")
    expected = fingerprint(service.defaults_file)
    scramble(source)
    before = fingerprint(service.defaults_file)
    size = os.path.getsize(os.path.join(source["target"], snap["object"]))
    request = restore_request(source, snap, db_service="none", db_datadir=service.datadir)
    if passes == "two passes":
        os.remove(os.path.join(source["target"], snap["sidecar"] + ".sig"))
        request = restore_request(source, snap, db_service="none", db_datadir=service.datadir,
                                  trust=appliance_trust(source, APPLIANCE, allow_unsigned=True))
    service.down()
    try:
        with open_target({"type": "path", "path": source["target"]}) as real:
            with pytest.raises(BackupError) as failure:
                restore(FailingReads(real, int(size * fraction), first=1 if passes == "streamed" else 2, times=99),
                        request)
    finally:
        service.up()
    message = str(failure.value)
    print("%s, cut at %.0f%%: %s" % (passes, fraction * 100, message[:400]))
    assert "simulated: connection reset" in message and "run the restore again" in message
    assert "the live datadir is as it was" in message or "after the databases were restored" in message
    assert ("first pass" in message) == (passes == "streamed"), message
    assert fingerprint(service.defaults_file) == before, "a cut restore changed the live datadir"
    assert leftovers(service.datadir) == [], leftovers(service.datadir)
    service.down()
    try:
        with open_target({"type": "path", "path": source["target"]}) as real:
            done = restore(real, request)  # the way back: the snapshot is intact, run it again
    finally:
        service.up()
    assert done["verification"]["ok"] and fingerprint(service.defaults_file) == expected
    remove_leftovers(service.datadir)


@pytest.mark.parametrize("fraction", CUT_AT)
def test_a_logical_restore_cut_in_its_second_pass_says_what_it_left_and_the_next_run_mends_it(source, fraction):
    """The same four cuts in a logical restore: the message says whether databases were partly loaded
    (naming them and the way back) or nothing was; the next run brings back the source exactly."""
    snap = _bulk_snapshot(source)  # several chunks: later cuts come after some were loaded
    expected = fingerprint(source["service"].defaults_file)
    scramble(source)
    size = os.path.getsize(os.path.join(source["target"], snap["object"]))
    request = restore_request(source, snap)
    with open_target({"type": "path", "path": source["target"]}) as real:
        with pytest.raises(BackupError) as failure:
            restore(FailingReads(real, int(size * fraction), first=2, times=99), request)
    message = str(failure.value)
    print("cut at %.0f%%: %s" % (fraction * 100, message[:400]))
    assert "simulated: connection reset" in message and "run the restore again" in message
    assert message.startswith("databases partly restored") or "the databases are as they were" in message \
        or "after the databases were restored" in message, message
    with open_target({"type": "path", "path": source["target"]}) as real:
        done = restore(real, request)
    assert done["verification"]["ok"]
    # exact but for the FLOAT column the logical method reports it cannot carry (see the loss test above)
    lossy = ("mt4.edge_floats", "exact floats")
    restored = fingerprint(source["service"].defaults_file)
    assert {k: v for k, v in restored.items() if k not in lossy} == \
        {k: v for k, v in expected.items() if k not in lossy}
