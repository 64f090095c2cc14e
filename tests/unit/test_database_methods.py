"""The database methods' pure parts: what mariadb-backup reports, what a dump cannot carry, table facts."""

import io

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.physical import MethodChoice, parse_position, short_version
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.tablefacts import (
    PointWatcher,
    compare_facts,
    facts_queries,
    logical_losses,
    parse_facts,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.reader import ArchiveReader
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.writer import ArchiveWriter
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.swap import DatadirSwap

# The end of a real `mariadb-backup --backup --stream=mbstream` (10.11.19) with binary logging on.
BACKUP_TAIL = """[00] 2026-12-04 18:34:31 Finished backing up non-InnoDB tables and files
[00] 2026-12-04 18:34:31 Waiting for log copy thread to read lsn 6962487
[00] 2026-12-04 18:34:31 mariabackup: The latest check point (for incremental): '6962450'
[00] 2026-12-04 18:34:31 MySQL binlog position: filename 'mariadb-bin.000003', position '1234', GTID of the last change '0-1-42'
mariabackup: Stopping log copying thread.[00] 2026-12-04 18:34:31 >> log scanned up to (6962487)
[00] 2026-12-04 18:34:31 Redo log (from LSN 44420 to 6962487) was copied.
[00] 2026-12-04 18:34:31 completed OK!
"""


def test_the_position_comes_from_the_tools_own_last_lines():
    assert parse_position(BACKUP_TAIL) == {"lsn_from": 44420, "lsn_to": 6962487,
                                           "binlog": {"file": "mariadb-bin.000003", "position": "1234",
                                                      "gtid": "0-1-42"}}
    assert parse_position("[00] completed OK!\n") == {}


def test_versions_compare_as_x_y_z():
    assert short_version("10.11.19-MariaDB-0+deb12u1") == "10.11.19"
    assert short_version("garbage") is None and short_version("") is None
    choice = MethodChoice(method="physical", server_version="10.11.19-MariaDB", datadir="/var/lib/mysql/",
                          tool="/usr/bin/mariadb-backup", tool_version="10.11.19")
    assert choice.as_dict() == {"method": "physical", "server_version": "10.11.19-MariaDB", "tool": "mariadb-backup",
                                "tool_version": "10.11.19", "galera": False}


TABLES = [["mt4", "audit", "BASE TABLE", "InnoDB"], ["senhasegura", "cred", "SYSTEM VERSIONED", "InnoDB"],
          ["senhasegura", "cache", "BASE TABLE", "Aria"]]


def test_losses_name_every_float_column_history_without_dump_history_and_non_transactional_tables():
    floats = [["mt4", "audit", "ratio", "float"], ["mt4", "audit", "score", "float(7,3)"]]
    losses = logical_losses(TABLES, floats, dump_history=False)
    assert [(x["table"], x["column"], x["changes_data"]) for x in losses] == [
        ("mt4.audit", "ratio", True), ("mt4.audit", "score", True), ("senhasegura.cred", None, True),
        ("senhasegura.cache", None, False)]
    assert "history rows" in losses[2]["reason"] and "not transactional" in losses[3]["reason"]
    with_history = logical_losses(TABLES, [], dump_history=True)
    assert [x["table"] for x in with_history] == ["senhasegura.cache"]


def test_facts_queries_quote_names_and_count_history():
    odd = [["mt4", "we`ird'name", "SYSTEM VERSIONED", "InnoDB"]]
    checksum, counts = facts_queries(odd)
    assert checksum == "CHECKSUM TABLE `mt4`.`we``ird'name`;"
    assert counts == "SELECT 'mt4.we`ird''name', COUNT(*) FROM `mt4`.`we``ird'name` FOR SYSTEM_TIME ALL;"
    assert facts_queries([]) == []


def test_facts_parse_and_a_missing_answer_is_an_error():
    facts = parse_facts(TABLES[:2], [["mt4.audit", "11"], ["senhasegura.cred", "22"]],
                        [["mt4.audit", "3"], ["senhasegura.cred", "5"]])
    assert facts["senhasegura.cred"] == {"rows": 5, "checksum": "22", "engine": "InnoDB", "versioned": True}
    with pytest.raises(ApplianceError, match="no checksum or row count for senhasegura.cred"):
        parse_facts(TABLES[:2], [["mt4.audit", "11"], ["senhasegura.cred", "NULL"]],
                    [["mt4.audit", "3"], ["senhasegura.cred", "5"]])


def _facts(**tables):
    return {"tables": {name: {"rows": rows, "checksum": checksum, "versioned": False}
                       for name, (rows, checksum) in tables.items()}}


def test_compare_facts_names_each_difference_and_spares_only_what_it_is_told():
    source = _facts(**{"mt4.a": (3, "1"), "mt4.b": (2, "2"), "mt4.gone": (1, "3")})
    restored = _facts(**{"mt4.a": (3, "1"), "mt4.b": (2, "9"), "mt4.new": (0, "0")})
    assert compare_facts(source, restored) == [
        "table mt4.b has the snapshot's 2 rows but not its content (CHECKSUM TABLE 9, the snapshot 2)",
        "table mt4.gone of the snapshot is missing after the restore",
        "table mt4.new exists after the restore but not in the snapshot"]
    assert compare_facts(source, restored, rows_only=["mt4.b"])[0].startswith("table mt4.gone")
    assert compare_facts(_facts(**{"mt4.a": (3, "1")}), _facts(**{"mt4.a": (4, "1")})) == [
        "table mt4.a holds 4 rows, the snapshot 3"]
    assert compare_facts(source, source) == []


def test_the_point_watcher_fires_once_at_the_first_create_database_even_across_reads():
    dump = b"-- MariaDB dump\n/*!40000 DROP DATABASE IF EXISTS `mt4`*/;\n\nCREATE DATABASE `mt4`;\nINSERT 1;\n" * 2
    calls = []
    watcher = PointWatcher(io.BytesIO(dump), lambda: calls.append(len(calls)))
    seen = b""
    for _step in range(len(dump)):
        block = watcher.read(7)  # the mark is cut between two reads
        seen += block
        if b"CREATE DATABASE" in seen:
            break
    assert calls == [0]
    while watcher.read(7):
        pass
    assert calls == [0]
    empty = []
    silent = PointWatcher(io.BytesIO(b""), lambda: empty.append(1))
    assert silent.read(10) == b"" and empty == [1]  # a dump that ended early releases too


def _object(add):
    sink = io.BytesIO()
    writer = ArchiveWriter(sink, Encryption.none(), chunk_size=1024 * 1024)
    writer.add_json("snapshot.json", {"id": "0000000a", "appliance": "box"})
    add(writer)
    writer.finish({})
    return sink.getvalue()


def _problems(data):
    reader = ArchiveReader(io.BytesIO(data), Decryption.none())
    for _info, content in reader.members(strict=False):
        content.read()
    return reader.problems(), reader.manifest


def test_a_physical_stream_is_verified_like_a_dump_and_mixing_both_is_refused():
    problems, manifest = _problems(_object(lambda w: w.add_stream("db/backup.mbstream", io.BytesIO(b"x" * 3000))))
    assert problems == [] and manifest["db"]["bytes"] == 3000 and manifest["db"]["chunks"] == 1

    def both(writer):
        writer.add_stream("db/backup.mbstream", io.BytesIO(b"x"))
        writer.add_stream("db/dump.sql", io.BytesIO(b"y"))

    problems, _manifest = _problems(_object(both))
    assert "the object holds both a database dump and a physical backup" in problems


def test_compare_facts_leaves_out_tables_it_is_told_cannot_be_compared():
    source = _facts(**{"mt4.a": (3, "1"), "mt4.cache": (9, "7")})
    restored = _facts(**{"mt4.a": (3, "1"), "mt4.cache": (2, "8")})
    assert compare_facts(source, restored, skip=["mt4.cache"]) == []
    assert compare_facts(source, restored) == ["table mt4.cache holds 2 rows, the snapshot 9"]


def test_row_count_labels_are_quoted_like_the_names_they_match():
    _checksum, counts = facts_queries([["mt4", "back\\slash", "BASE TABLE", "InnoDB"]])
    assert counts == "SELECT 'mt4.back\\\\slash', COUNT(*) FROM `mt4`.`back\\slash`;"


def test_a_swap_whose_first_rename_fails_moves_nothing_and_undoes_nothing(tmp_path):
    datadir, staging, previous = tmp_path / "data", tmp_path / "staging", tmp_path / "previous"
    for folder in (datadir, staging, previous):
        folder.mkdir()
        (folder / "ibdata1").write_text(folder.name)
    swap = DatadirSwap(str(datadir), str(staging), str(previous))
    with pytest.raises(OSError):
        swap.swap_in()  # `previous` exists and is not empty: not a reason to move entries instead
    swap.roll_back(str(tmp_path / "failed"))
    assert [(p.name, (p / "ibdata1").read_text()) for p in (datadir, staging, previous)] == [
        ("data", "data"), ("staging", "staging"), ("previous", "previous")]
    assert not (tmp_path / "failed").exists()
