# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""DatabaseDump and database facts against a real, private mariadbd (tests/lab/mariadb.py).

The server gets its own temporary state dir and a free port, and is stopped by PID at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance import facts as appliance_facts
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.dump import DatabaseDump
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection, run_query, temporary_defaults_file
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError
from tests.lab.mariadb import PORT_ENV, MariaDBService

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = 64 * 1024
BULK_ROWS = 6000  # ~6 MB in mt4.bulk: far more than a pipe holds, so a dump blocks while unread
NASTY_PASSWORD = 'p a"s\\s#w;o\'rd!&$x'

SCHEMA = """
CREATE DATABASE mt4;
CREATE DATABASE senhasegura;
CREATE TABLE mt4.bulk (id INT PRIMARY KEY, pad VARCHAR(1000)) ENGINE=InnoDB;
SET SESSION max_recursive_iterations = 100000;
INSERT INTO mt4.bulk WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < %d)
    SELECT n, REPEAT(CHAR(65 + n %% 26), 1000) FROM s;
CREATE TABLE mt4.ledger (id INT PRIMARY KEY, note VARCHAR(20)) ENGINE=InnoDB;
CREATE TABLE mt4.audit (id INT AUTO_INCREMENT PRIMARY KEY, ledger_id INT) ENGINE=InnoDB;
CREATE TRIGGER mt4.ledger_audit AFTER INSERT ON mt4.ledger FOR EACH ROW INSERT INTO mt4.audit (ledger_id) VALUES (NEW.id);
CREATE TABLE senhasegura.ledger (id INT PRIMARY KEY, secret VARBINARY(64)) ENGINE=InnoDB;
INSERT INTO senhasegura.ledger VALUES (0, UNHEX('00FF10E2'));
INSERT INTO mt4.ledger VALUES (0, 'zero');
CREATE PROCEDURE senhasegura.count_ledger() SELECT COUNT(*) FROM senhasegura.ledger;
CREATE EVENT senhasegura.nightly ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM senhasegura.ledger WHERE id < 0;
CREATE VIEW senhasegura.ledger_view AS SELECT id FROM senhasegura.ledger;
""" % BULK_ROWS


def _sql_string(value: str) -> str:
    return "'%s'" % value.replace("\\", "\\\\").replace("'", "\\'")


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A private mariadbd with mt4 + senhasegura, and the admin DatabaseConnection."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PORT_ENV, str(_free_port()))
        service = MariaDBService(str(tmp_path_factory.mktemp("appliance-dump-lab")))
    try:
        endpoints = service.up()
        admin = DatabaseConnection(defaults_file=endpoints["mysql_defaults_file"], exclusive_defaults=True)
        run_query(admin, SCHEMA, timeout=300)
        yield {"service": service, "admin": admin, "socket": endpoints["mysql_socket"]}
    finally:
        service.down()


def read_all(dump: DatabaseDump) -> bytes:
    blocks = []
    for _block in range(100000):  # bounded: ~6 GB at 64 KiB
        block = dump.stdout.read(BLOCK)
        if not block:
            break
        blocks.append(block)
    return b"".join(blocks)


def ledger_ids(dump_text: str):
    """{database: set of ids} of the `ledger` INSERTs in a dump (extended inserts span lines)."""
    found = {}
    for section in re.split(r"^USE `", dump_text, flags=re.M)[1:]:
        database = section.split("`", 1)[0]
        for values in re.findall(r"^INSERT INTO `ledger` VALUES(.*?);$", section, flags=re.M | re.S):
            found.setdefault(database, set()).update(int(i) for i in re.findall(r"\((\d+),", values))
    return found


def test_dump_is_complete_repeatable_and_restorable(server):
    admin = server["admin"]
    with DatabaseDump(admin, ("mt4", "senhasegura")) as dump:
        first = read_all(dump)
    assert first.endswith(b"-- Dump completed\n")
    assert dump.bytes_read == len(first) > BULK_ROWS * 1000
    text = first.decode("utf-8")
    for needle in ("CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mt4`", "DROP DATABASE IF EXISTS `senhasegura`",
                   "TRIGGER mt4.ledger_audit", "PROCEDURE `count_ledger`", "EVENT `nightly`",
                   "VIEW `ledger_view`", "0x00FF10E2"):
        assert needle in text, needle
    with DatabaseDump(admin, ("mt4", "senhasegura")) as again:
        assert read_all(again) == first  # --skip-dump-date: nothing changed, same bytes
    # Restore: damage the data, feed the dump back, get the same checksums.
    checksum = "CHECKSUM TABLE mt4.bulk, mt4.ledger, mt4.audit, senhasegura.ledger;"
    before = run_query(admin, checksum)
    run_query(admin, "DELETE FROM mt4.bulk WHERE id > 10; DROP VIEW senhasegura.ledger_view;")
    assert run_query(admin, checksum) != before
    restore = subprocess.run(["mariadb"] + admin.client_args(), input=first, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=300, check=False)
    assert restore.returncode == 0, restore.stderr.decode()
    assert run_query(admin, checksum) == before
    assert run_query(admin, "SELECT COUNT(*) FROM senhasegura.ledger_view;") == [["1"]]


def test_dump_is_one_consistent_transaction_across_both_databases(server, tmp_path):
    """Rows go into BOTH ledgers in one transaction while the dump runs: it sees all or nothing."""
    admin = server["admin"]
    script = tmp_path / "writer.sql"
    with open(script, "w") as handle:
        for i in range(1, 4001):  # bounded: ~4000 transactions
            handle.write("START TRANSACTION; INSERT INTO mt4.ledger VALUES (%d, 'w');"
                         " DO SLEEP(0.001); INSERT INTO senhasegura.ledger VALUES (%d, NULL); COMMIT;\n" % (i, i))
    count = "SELECT COUNT(*) FROM senhasegura.ledger;"
    with open(script, "rb") as stdin:
        writer = subprocess.Popen(["mariadb"] + admin.client_args(), stdin=stdin,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with DatabaseDump(admin, ("mt4", "senhasegura")) as dump:
            chunks = [dump.stdout.read(BLOCK)]  # the transaction is open; mt4.bulk is being dumped
            started_with = int(run_query(admin, count)[0][0])
            for _attempt in range(600):  # wait (bounded, ~60 s) until writes happened during the dump
                if int(run_query(admin, count)[0][0]) >= started_with + 50 or writer.poll() is not None:
                    break
                time.sleep(0.1)
            chunks.append(read_all(dump))
    finally:
        if writer.poll() is None:
            writer.terminate()
        writer.wait(timeout=30)
    ids = ledger_ids(b"".join(chunks).decode("utf-8"))
    assert ids["mt4"] == ids["senhasegura"]  # all or nothing per transaction
    final = int(run_query(admin, count)[0][0])
    assert final >= started_with + 50 > len(ids["senhasegura"])  # writes really overlapped the dump
    assert len(ids["mt4"]) >= 1


def _create_user(admin, user, password, grants):
    sql = "CREATE OR REPLACE USER %s@'localhost' IDENTIFIED BY %s;\n" % (_sql_string(user), _sql_string(password))
    sql += "".join("GRANT %s TO %s@'localhost';\n" % (grant, _sql_string(user)) for grant in grants)
    run_query(admin, sql)  # through stdin: the password never reaches a command line


def test_password_stays_off_the_command_line(server, tmp_path):
    admin = server["admin"]
    _create_user(admin, "bk", NASTY_PASSWORD, [
        "SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON mt4.*",
        "SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON senhasegura.*",
        "SELECT ON mysql.proc"])
    with temporary_defaults_file(NASTY_PASSWORD, user="bk", directory=str(tmp_path)) as cnf:
        conn = DatabaseConnection(defaults_file=cnf, socket=server["socket"])
        with DatabaseDump(conn, ("mt4", "senhasegura")) as dump:
            first = dump.stdout.read(BLOCK)  # the dump now blocks on the pipe: it is running
            with open("/proc/%d/cmdline" % dump.pid, "rb") as handle:
                argv = handle.read().split(b"\0")
            with open("/proc/%d/environ" % dump.pid, "rb") as handle:
                environ = handle.read()
            data = first + read_all(dump)
    assert argv[1] == b"--defaults-extra-file=" + cnf.encode()
    assert NASTY_PASSWORD.encode() not in b" ".join(argv)
    assert NASTY_PASSWORD.encode() not in environ
    assert data.endswith(b"-- Dump completed\n")  # the quoted password in the file worked


def test_dump_of_a_database_the_user_cannot_read_fails(server, tmp_path):
    admin = server["admin"]
    _create_user(admin, "limited", "limited-pw-123", [
        "SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES ON mt4.*", "SELECT ON mysql.proc"])
    with temporary_defaults_file("limited-pw-123", user="limited", directory=str(tmp_path)) as cnf:
        conn = DatabaseConnection(defaults_file=cnf, socket=server["socket"])
        with DatabaseDump(conn, ("mt4",)) as dump:  # what it may read works...
            assert read_all(dump).endswith(b"-- Dump completed\n")
        with pytest.raises(ApplianceError) as info:  # ...one database it may not read fails the whole dump
            with DatabaseDump(conn, ("mt4", "senhasegura")) as dump:
                read_all(dump)
    message = str(info.value)
    assert message.startswith("database dump of mt4, senhasegura failed (mariadb-dump exit code 2): "), message
    assert "Access denied for user 'limited'@'localhost' to database 'senhasegura'" in message
    assert "limited-pw-123" not in message


def test_dump_of_a_missing_database_fails(server):
    with pytest.raises(ApplianceError) as info:
        with DatabaseDump(server["admin"], ("mt4", "no_such_db")) as dump:
            read_all(dump)
    assert "mariadb-dump exit code 2" in str(info.value) and "Unknown database 'no_such_db'" in str(info.value)


def _process_gone(pid: int, start_time: str) -> bool:
    """True when ``pid`` no longer runs the process that had ``start_time`` (gone, reused or zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z" or fields[19] != start_time


def _start_time(pid: int) -> str:
    with open("/proc/%d/stat" % pid) as handle:
        return handle.read().rsplit(")", 1)[1].split()[19]


def test_failing_consumer_terminates_and_reaps_the_dump(server):
    dump = DatabaseDump(server["admin"], ("mt4", "senhasegura"))
    with pytest.raises(RuntimeError, match="consumer broke"):
        with dump:
            dump.stdout.read(BLOCK)
            assert dump.process.poll() is None  # still running, blocked on the pipe
            raise RuntimeError("consumer broke")
    assert dump.process.returncode is not None  # reaped by us
    assert not os.path.exists("/proc/%d" % dump.pid)


def test_consumer_that_stops_reading_early_is_refused(server):
    dump = DatabaseDump(server["admin"], ("mt4", "senhasegura"))
    with pytest.raises(ApplianceError, match="not read to its end"):
        with dump:
            dump.stdout.read(BLOCK)
    assert dump.process.returncode is not None


CONSUMER = """
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.dump import DatabaseDump
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection
with DatabaseDump(DatabaseConnection(defaults_file=sys.argv[2], exclusive_defaults=True)) as dump:
    dump.stdout.read(65536)
    print(dump.pid, flush=True)
    sys.stdin.read()  # wait here until killed
"""


def test_killed_consumer_leaves_no_dump_behind(server):
    collections = os.path.join(REPO, ".build", "collections")
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, collections, server["admin"].defaults_file],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = consumer.stdout.readline()
        assert line.strip().isdigit(), consumer.stderr.read() if consumer.poll() is not None else line
        dump_pid = int(line)
        with open("/proc/%d/cmdline" % dump_pid, "rb") as handle:
            assert b"mariadb-dump" in handle.read()
        start_time = _start_time(dump_pid)
        os.kill(consumer.pid, signal.SIGKILL)
        consumer.wait(timeout=30)
        for _attempt in range(300):  # bounded poll, ~30 s
            if _process_gone(dump_pid, start_time):
                break
            time.sleep(0.1)
        assert _process_gone(dump_pid, start_time), "mariadb-dump %d outlived its consumer" % dump_pid
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(timeout=30)
        consumer.stdin.close()
        consumer.stdout.close()
        consumer.stderr.close()


def test_database_facts(server, tmp_path):
    layout = ApplianceLayout(root=str(tmp_path))
    run_query(server["admin"], "ANALYZE TABLE mt4.bulk;")  # sizes are InnoDB statistics, refreshed lazily
    found = appliance_facts.facts(layout, db=server["admin"])["mariadb"]
    assert "MariaDB" in found["server_version"]
    assert found["databases"]["mt4"]["exists"] and found["databases"]["mt4"]["data_bytes"] >= BULK_ROWS * 1000
    assert found["databases"]["senhasegura"]["exists"]
    missing = appliance_facts.database_facts(ApplianceLayout(root=str(tmp_path), databases=("mt4", "absent_db")),
                                             server["admin"])
    assert missing["databases"]["absent_db"] == {"exists": False, "data_bytes": 0, "index_bytes": 0}
    estimate = appliance_facts.estimate_snapshot_size({"mariadb": found})
    assert estimate["database_bytes"] >= BULK_ROWS * 1000
