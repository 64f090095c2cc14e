"""The post-restore check of a logical snapshot without source facts compares a fresh mariadb-dump with
the snapshot's dump. Another patch version of mariadb-dump prints other header lines (10.11.8+ starts
with the sandbox-mode line, 10.6.16+ adds NOTE_VERBOSITY settings): the comparison must not fail for
those, and must still fail for a difference in the data. Real mariadb-dump against the lab's server.
"""

import re
import subprocess
import uuid

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.dump import DatabaseDump
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.logical import DumpScanner, dump_digest


def _sql(lab, statement):
    subprocess.run(["mariadb", "--defaults-extra-file=%s" % lab["mysql_defaults_file"], "-e", statement],
                   check=True, timeout=60, stdout=subprocess.DEVNULL)


@pytest.fixture
def database(lab):
    name = "dumpver_%s" % uuid.uuid4().hex[:8]
    _sql(lab, "CREATE DATABASE `%s`; CREATE TABLE `%s`.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB; "
              "INSERT INTO `%s`.t VALUES (1,'one'),(2,'two');" % (name, name, name))
    try:
        yield name
    finally:
        _sql(lab, "DROP DATABASE IF EXISTS `%s`" % name)


def _dump(connection, name):
    with DatabaseDump(connection, [name]) as dump:
        return b"".join(iter(lambda: dump.stdout.read(1 << 20), b""))


def _digest(data):
    scanner = DumpScanner()
    scanner.feed(data)
    return scanner.finish()


def test_a_dump_of_another_patch_version_compares_equal_but_data_does_not(lab, database):
    connection = DatabaseConnection(defaults_file=lab["mysql_defaults_file"])
    today = _dump(connection, database)
    assert today.startswith(b"/*M!999999\\- enable the sandbox mode */"), today[:80]
    # The same dump as an older patch version prints it: no sandbox line, no NOTE_VERBOSITY settings.
    older = re.sub(rb"(?m)^/\*M?!999999\\- enable the sandbox mode \*/ ?\n", b"", today)
    older = re.sub(rb"(?m)^/\*M!100616 SET [^\n]*NOTE_VERBOSITY[^\n]*\n", b"", older)
    # ... and as an even newer one: the sandbox line in its first spelling, one more session setting.
    newer = b"/*!999999\\- enable the sandbox mode */ \n" + older.replace(
        b"\nCREATE DATABASE", b"\n/*M!110601 SET @OLD_SOMETHING=@@SOMETHING, SOMETHING=0 */;\nCREATE DATABASE", 1)
    assert older != today and newer != today
    fresh = dump_digest(connection, [database])
    assert _digest(older) == fresh
    assert _digest(newer) == fresh
    # A difference in the data still fails the comparison.
    _sql(lab, "UPDATE `%s`.t SET v='zwei' WHERE id=2" % database)
    assert dump_digest(connection, [database]) != _digest(older)
