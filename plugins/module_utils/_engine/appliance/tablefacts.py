# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Facts about the appliance's tables that a restore is checked against, and what a dump cannot carry.

Per table: the row count (history rows of system-versioned tables included) and ``CHECKSUM TABLE``,
which hashes the stored row images: it sees a FLOAT rounded by a dump and a history row left out.
For a logical snapshot the facts are taken in a transaction that starts at the dump's own point
(``FactsSession``): both read the same committed state, so the restored server must show the same
facts, except where ``logical_losses`` said beforehand that a dump changes the data.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import threading
from typing import Any, Dict, List, Optional, Sequence

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.dump import die_with_parent
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection, first_tool, run_query, stderr_excerpt
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError

FACTS_MEMBER = "db/facts.json"
_END = "segura-backup-end-of-answer"
#: How long the session waits for FLUSH TABLES WITH READ LOCK (a long write holds it up; writes queue
#: behind it meanwhile). Past this the snapshot goes on without source facts, and says so.
LOCK_WAIT_SECONDS = 10
#: The longest the read lock is held while the dump starts its transaction (normally milliseconds:
#: until its first CREATE DATABASE). Past this it is dropped and the facts are left out, with a warning.
LOCK_HOLD_SECONDS = 60
_TRANSACTIONAL = ("InnoDB",)


def quote_name(*parts: str) -> str:
    return ".".join("`%s`" % part.replace("`", "``") for part in parts)


def _sql_list(names: Sequence[str]) -> str:
    return ", ".join("'%s'" % name.replace("\\", "\\\\").replace("'", "''") for name in names)


def tables_query(databases: Sequence[str]) -> str:
    return ("SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE, IFNULL(ENGINE, '') FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA IN (%s) AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY 1, 2;"
            % _sql_list(databases))


def float_columns_query(databases: Sequence[str]) -> str:
    return ("SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.COLUMN_TYPE FROM information_schema.COLUMNS c "
            "JOIN information_schema.TABLES t USING (TABLE_SCHEMA, TABLE_NAME) WHERE c.TABLE_SCHEMA IN (%s) "
            "AND t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') AND c.DATA_TYPE = 'float' ORDER BY 1, 2, 3;"
            % _sql_list(databases))


def logical_losses(tables: List[List[str]], float_columns: List[List[str]], dump_history: bool) -> List[Dict[str, Any]]:
    """Every column or table that a ``mariadb-dump`` cannot carry exactly, each with the reason."""
    losses = [{"table": "%s.%s" % (schema, table), "column": column, "type": column_type,
               "reason": "FLOAT: mariadb-dump prints about 6 significant digits, so the restored value is rounded",
               "changes_data": True}
              for schema, table, column, column_type in float_columns]
    for schema, table, kind, engine in tables:
        name = "%s.%s" % (schema, table)
        if kind == "SYSTEM VERSIONED" and not dump_history:
            losses.append({"table": name, "column": None, "type": "system versioned",
                           "reason": "its history rows are not in the dump (this mariadb-dump has no --dump-history)",
                           "changes_data": True})
        if engine not in _TRANSACTIONAL:
            losses.append({"table": name, "column": None, "type": engine or "unknown engine",
                           "reason": "not transactional: dumped at its own moment, not at the snapshot's point",
                           "changes_data": False})
    return losses


def facts_queries(tables: List[List[str]]) -> List[str]:
    """One CHECKSUM TABLE for all tables, then one row-count query (history included)."""
    if not tables:
        return []
    names = [quote_name(schema, table) for schema, table, _kind, _engine in tables]
    counts = " UNION ALL ".join(
        "SELECT %s, COUNT(*) FROM %s%s" % (_sql_list(["%s.%s" % (schema, table)]), name,
                                           " FOR SYSTEM_TIME ALL" if kind == "SYSTEM VERSIONED" else "")
        for (schema, table, kind, _engine), name in zip(tables, names))
    return ["CHECKSUM TABLE %s;" % ", ".join(names), counts + ";"]


def parse_facts(tables: List[List[str]], checksums: List[List[str]], counts: List[List[str]]) -> Dict[str, Any]:
    by_name: Dict[str, Any] = {}
    for schema, table, kind, engine in tables:
        by_name["%s.%s" % (schema, table)] = {"rows": None, "checksum": None, "engine": engine,
                                              "versioned": kind == "SYSTEM VERSIONED"}
    for row in checksums:
        if len(row) >= 2 and row[0] in by_name:
            by_name[row[0]]["checksum"] = row[1] if row[1] != "NULL" else None
    for row in counts:
        if len(row) >= 2 and row[0] in by_name:
            by_name[row[0]]["rows"] = int(row[1])
    missing = [name for name, fact in by_name.items() if fact["rows"] is None or fact["checksum"] is None]
    if missing:
        raise ApplianceError("no checksum or row count for %s" % ", ".join(missing[:5]))
    return by_name


def table_facts(db: DatabaseConnection, databases: Sequence[str], timeout: float = 3600) -> Dict[str, Any]:
    """The facts of a server as it is now (a restored one, or a throwaway server on a prepared copy)."""
    tables = run_query(db, tables_query(databases), timeout=timeout)
    answers = [run_query(db, sql, timeout=timeout) for sql in facts_queries(tables)] or [[], []]
    return {"tables": parse_facts(tables, answers[0], answers[1]), "server_version": _version(db)}


def compare_facts(expected: Dict[str, Any], actual: Dict[str, Any], rows_only: Sequence[str] = (),
                  checksums: bool = True, skip: Sequence[str] = ()) -> List[str]:
    """What differs between two sets of table facts, one message per table (empty: the same).

    ``rows_only``: tables whose checksum is known to differ (a loss the snapshot reported); ``checksums``
    False compares row counts only (servers of different versions may hash rows differently); ``skip``:
    tables whose facts cannot describe the dump (dumped at another moment, or without their history).
    """
    problems = []
    want, have = expected.get("tables") or {}, actual.get("tables") or {}
    for name in sorted((set(want) | set(have)) - set(skip)):
        before, after = want.get(name), have.get(name)
        if before is None:
            problems.append("table %s exists after the restore but not in the snapshot" % name)
        elif after is None:
            problems.append("table %s of the snapshot is missing after the restore" % name)
        elif before["rows"] != after["rows"]:
            history = " (history included)" if before.get("versioned") else ""
            problems.append("table %s holds %d rows%s, the snapshot %d" % (name, after["rows"], history, before["rows"]))
        elif checksums and name not in rows_only and before["checksum"] != after["checksum"]:
            problems.append("table %s has the snapshot's %d rows but not its content (CHECKSUM TABLE %s, the "
                            "snapshot %s)" % (name, after["rows"], after["checksum"], before["checksum"]))
    return problems


@functools.lru_cache(maxsize=None)
def dump_history_supported(tool: Optional[str] = None) -> bool:
    """Does this mariadb-dump have --dump-history (MariaDB 10.11 and later)?"""
    try:
        result = subprocess.run([tool or first_tool("mariadb-dump", "mysqldump"), "--help"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired, ApplianceError):
        return False
    return b"--dump-history" in result.stdout


def _version(db: DatabaseConnection) -> str:
    rows = run_query(db, "SELECT VERSION();")
    return rows[0][0] if rows and rows[0] else ""


class FactsSession:
    """One ``mariadb`` client session kept open across the dump, whose transaction starts at the dump's point.

        with FactsSession(db, databases) as facts:
            facts.hold_point()            # FLUSH TABLES WITH READ LOCK + START TRANSACTION WITH CONSISTENT SNAPSHOT
            ... start the dump; once its transaction began (its first CREATE DATABASE): facts.release()
            ... stream the dump ...
            facts.collect()               # checksums and counts, in the transaction of the point

    While the lock is held nothing commits, so the dump's own consistent snapshot (started before
    ``release``) sees exactly the state this transaction sees. The lock lasts until the dump's first
    statement: milliseconds. Passwords stay in the connection's defaults file.
    """

    def __init__(self, db: DatabaseConnection, databases: Sequence[str]):
        self.db = db
        self.databases = list(databases)
        self.process: Optional[subprocess.Popen[str]] = None
        self.tables: List[List[str]] = []
        self.float_columns: List[List[str]] = []
        self.locked = False
        self.late = False  # the lock was dropped by the timer, not by the dump's start
        self.failed: Optional[str] = None  # why the session ended early (its facts are then left out)
        self._lock = threading.RLock()  # ask() from the timer's late release and from the main thread
        self._timer: Optional[threading.Timer] = None

    def __enter__(self) -> "FactsSession":
        tool = first_tool("mariadb", "mysql")
        try:
            self.process = subprocess.Popen(
                [tool] + self.db.client_args() + ["--batch", "--skip-column-names", "--raw", "--unbuffered"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                errors="replace", close_fds=True, preexec_fn=die_with_parent(os.getpid()))
        except OSError as exc:
            raise ApplianceError("could not start %s: %s" % (tool, exc.strerror or exc)) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def ask(self, sql: str) -> List[List[str]]:
        """Rows of the statements; ApplianceError naming the server's message when the client stopped."""
        with self._lock:
            return self._ask(sql)

    def _ask(self, sql: str) -> List[List[str]]:
        process = self.process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("FactsSession used outside its with block")
        try:
            process.stdin.write(sql.rstrip().rstrip(";") + ";\nSELECT '%s';\n" % _END)
            process.stdin.flush()
        except BrokenPipeError:
            pass  # the client stopped: readline() below sees the end, and stderr says why
        rows: List[List[str]] = []
        for line in iter(process.stdout.readline, ""):
            line = line.rstrip("\n")
            if line == _END:
                return rows
            rows.append(line.split("\t"))
        stderr = process.stderr.read() if process.stderr else ""
        process.wait(timeout=30)
        raise ApplianceError("query on %s failed: %s" % (self.db.describe(), stderr_excerpt(stderr.encode())))

    def hold_point(self, warnings: List[str]) -> bool:
        """Stop commits until ``release``; False (and a warning) when the lock cannot be had in time."""
        try:
            self.ask("SET SESSION lock_wait_timeout = %d; FLUSH TABLES WITH READ LOCK" % LOCK_WAIT_SECONDS)
            self.locked = True
            self._timer = threading.Timer(LOCK_HOLD_SECONDS, self._release_late)
            self._timer.daemon = True
            self._timer.start()
            # The transaction's read view starts under the lock: the committed state the dump will see.
            self.ask("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; "
                     "START TRANSACTION WITH CONSISTENT SNAPSHOT")
            self.tables = self.ask(tables_query(self.databases))
            self.float_columns = self.ask(float_columns_query(self.databases))
        except ApplianceError as exc:
            warnings.append("the source's table facts are left out of this snapshot (its restore is checked by a "
                            "re-dump only): %s" % exc)
            self.close()
            return False
        return True

    def release(self) -> None:
        """The dump's transaction has begun: let commits go on. A failure here drops the facts, not the
        snapshot (disconnecting releases the lock all the same)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self.locked:
                self.locked = False
                try:
                    self.ask("UNLOCK TABLES")
                except ApplianceError as exc:
                    self.failed = str(exc)
                    self.close()

    def _release_late(self) -> None:
        with self._lock:
            if self.locked:
                self.late = True
                self.locked = False
                self.ask("UNLOCK TABLES")

    def collect(self, warnings: List[str]) -> Optional[Dict[str, Any]]:
        """Checksums and counts in the transaction of the point; None (and a warning) if they cannot be had."""
        if self.failed:
            warnings.append("the source's table facts are left out of this snapshot: %s" % self.failed)
            return None
        if self.late:
            warnings.append("the source's table facts are left out of this snapshot: the dump took more than %d s "
                            "to begin, so they might not describe its point" % LOCK_HOLD_SECONDS)
            return None
        try:
            answers = [self.ask(sql) for sql in facts_queries(self.tables)] or [[], []]
            facts = parse_facts(self.tables, answers[0], answers[1])
            version = self.ask("SELECT VERSION()")
            self.ask("COMMIT")
        except ApplianceError as exc:
            warnings.append("the source's table facts are left out of this snapshot: %s" % exc)
            return None
        return {"tables": facts, "server_version": version[0][0] if version and version[0] else ""}

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.locked = False  # disconnecting drops the lock
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()  # end of input: the client disconnects, the server drops the lock
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        for pipe in (process.stdout, process.stderr):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()


class PointWatcher:
    """Wraps the dump's output: calls ``on_point`` once the dump's transaction has begun (its first
    ``CREATE DATABASE``, which mariadb-dump writes only after START TRANSACTION), or at its end."""

    _MARK = b"\nCREATE DATABASE"

    def __init__(self, raw, on_point):
        self._raw = raw
        self._on_point = on_point
        self._tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if self._on_point is not None:
            seen = self._tail + data
            if not data or self._MARK in seen:
                callback, self._on_point = self._on_point, None
                callback()
            self._tail = seen[-len(self._MARK):]
        return data
