# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""The database methods, and the physical one: ``mariadb-backup --backup --stream=mbstream``.

physical  the whole instance as InnoDB/Aria pages plus the redo log of the copy: restored bit for bit
          (FLOAT values, system-versioned history, accounts and grants included), but only by a
          ``mariadb-backup`` of the same server version. What Galera's SST moves.
logical   ``mariadb-dump`` of the appliance's databases: portable across versions, but a dump prints
          FLOAT values rounded; ``appliance/tablefacts.py`` names what it cannot carry.

The physical stream goes straight into the archive (members ``db/backup.mbstream.NNNNNN``): nothing is
staged on the appliance's disk but the redo log mariadb-backup keeps while it copies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.dump import DatabaseDump
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import DatabaseConnection, run_query
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ConfigError

PHYSICAL = "physical"
LOGICAL = "logical"
METHODS = (PHYSICAL, LOGICAL)
BACKUP_TOOLS = ("mariadb-backup", "mariabackup")
COMPLETED = "completed OK!"

_TOOL_VERSION = re.compile(r"based on MariaDB server (\d+\.\d+\.\d+)")
_SERVER_VERSION = re.compile(r"^(\d+\.\d+\.\d+)")
_LSN = re.compile(r"Redo log \(from LSN (\d+) to (\d+)\) was copied")
_BINLOG = re.compile(r"MySQL binlog position: filename '([^']*)', position '([^']*)'"
                     r"(?:, GTID of the last change '([^']*)')?")
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
_SERVER_BINARY_VERSION = re.compile(r"\bVer (\d+\.\d+\.\d+)")
SERVERS = ("mariadbd", "mysqld")
SERVER_DIRS = ("/usr/sbin", "/usr/libexec", "/usr/local/sbin")


def backup_tool() -> Optional[str]:
    for name in BACKUP_TOOLS:
        found = shutil.which(name)
        if found:
            return found
    return None


def _version_text(program: str) -> str:
    """What ``program --version`` prints (stdout and stderr), or '' when it cannot run."""
    try:
        result = subprocess.run([program, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.decode("utf-8", "replace")


def tool_version(tool: str) -> Optional[str]:
    """'10.11.19' from ``mariadb-backup --version`` (it prints to stderr), None if unreadable."""
    match = _TOOL_VERSION.search(_version_text(tool))
    return match.group(1) if match else None


def find_server() -> Optional[str]:
    """The ``mariadbd`` binary (often outside PATH, in /usr/sbin)."""
    for name in SERVERS:
        found = shutil.which(name) or next((os.path.join(d, name) for d in SERVER_DIRS
                                            if os.access(os.path.join(d, name), os.X_OK)), None)
        if found:
            return found
    return None


def server_version(server: str) -> Optional[str]:
    """'10.11.19' of ``mariadbd --version`` ('mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for ...')."""
    match = _SERVER_BINARY_VERSION.search(_version_text(server))
    return match.group(1) if match else None


def short_version(server_version: str) -> Optional[str]:
    """'10.11.19' of '10.11.19-MariaDB-0+deb12u1'."""
    match = _SERVER_VERSION.match(server_version or "")
    return match.group(1) if match else None


@dataclass
class MethodChoice:
    """Which database method a snapshot uses, and why."""

    method: str
    server_version: str
    datadir: str
    tool: Optional[str] = None
    tool_version: Optional[str] = None
    galera: bool = False
    warning: Optional[str] = None  # why the physical method was not used (automatic choice)

    def as_dict(self) -> Dict[str, Any]:
        return {"method": self.method, "server_version": self.server_version,
                "tool": os.path.basename(self.tool) if self.tool else None, "tool_version": self.tool_version,
                "galera": self.galera}


def choose_method(requested: Optional[str], db: DatabaseConnection) -> MethodChoice:
    """The method to use: the requested one, or physical when a matching mariadb-backup can run here.

    ``requested`` None is the automatic choice: physical when mariadb-backup is installed, its version
    is the server's (X.Y.Z), the server runs on this host and its datadir is readable; otherwise
    logical, with a warning naming the reason. An explicit ``physical`` that cannot work is an error.
    """
    if requested not in (None,) + METHODS:
        raise ConfigError("database method must be physical or logical, got %r" % (requested,))
    rows = run_query(db, "SELECT VERSION(), @@datadir;")
    version, datadir = (rows[0] + ["", ""])[:2] if rows else ("", "")
    wsrep = run_query(db, "SHOW GLOBAL VARIABLES LIKE 'wsrep_on';")  # no row on a build without Galera
    galera = bool(wsrep) and wsrep[0][-1].upper() in ("1", "ON")
    choice = MethodChoice(method=LOGICAL, server_version=version, datadir=datadir, galera=galera)
    if requested == LOGICAL:
        return choice
    reason = _physical_obstacle(db, choice)
    if reason is None:
        choice.method = PHYSICAL
        return choice
    if requested == PHYSICAL:
        raise ApplianceError("database method physical is not possible here: %s" % reason)
    choice.warning = ("database method logical: %s. A logical dump does not carry every value exactly (see the "
                      "snapshot's database.losses); install mariadb-backup %s for exact restores"
                      % (reason, short_version(version) or "of the server's version"))
    return choice


def _physical_obstacle(db: DatabaseConnection, choice: MethodChoice) -> Optional[str]:
    if db.host and db.host not in _LOCAL_HOSTS:
        return "the server %s is not on this host (mariadb-backup copies the data files)" % db.host
    tool = backup_tool()
    if tool is None:
        return "mariadb-backup is not installed (package mariadb-backup)"
    choice.tool, choice.tool_version = tool, tool_version(tool)
    server = short_version(choice.server_version)
    if choice.tool_version is None or choice.tool_version != server:
        return ("mariadb-backup is version %s but the server runs %s (they must be the same)"
                % (choice.tool_version or "unknown", choice.server_version or "an unknown version"))
    if not choice.datadir or not os.access(choice.datadir, os.R_OK | os.X_OK):
        return "the server's datadir %s is not readable by this user" % (choice.datadir or "(unknown)")
    return None


class PhysicalBackup(DatabaseDump):
    """One ``mariadb-backup --backup --stream=mbstream`` of the whole instance, streamed.

    Used like ``DatabaseDump`` (same process handling, same death-with-parent); leaving the block
    checks the exit code and mariadb-backup's "completed OK!", and ``position`` is then filled.
    """

    def __init__(self, connection: DatabaseConnection, choice: MethodChoice):
        super().__init__(connection, tool=choice.tool)
        self.choice = choice
        self.position: Dict[str, Any] = {}

    def command(self) -> List[str]:
        if not self.choice.tool:
            raise ApplianceError("mariadb-backup is not installed (package mariadb-backup)")
        # --datadir: the server's own, so a defaults file without a [mysqld] group still works.
        args = [self.choice.tool] + self.connection.client_args() + [
            "--backup", "--stream=mbstream", "--datadir=" + self.choice.datadir]
        if self.choice.galera:
            args.append("--galera-info")  # the node's cluster state (uuid:seqno) goes into the stream
        return args

    def check_complete(self, tool: str, reader) -> None:
        tail = self.stderr_tail
        if COMPLETED not in tail.rstrip().rsplit("\n", 1)[-1]:
            raise ApplianceError("physical backup is incomplete: %s exited 0 without '%s' (%d bytes; last lines: %s)"
                                 % (tool, COMPLETED, reader.bytes_read, _last_lines(tail)))
        self.position = parse_position(tail)


def parse_position(stderr_tail: str) -> Dict[str, Any]:
    """Where the copy stands: the redo log range and, with binary logging on, the binlog file/position/GTID."""
    result: Dict[str, Any] = {}
    lsn = _LSN.findall(stderr_tail)
    if lsn:
        result["lsn_from"], result["lsn_to"] = int(lsn[-1][0]), int(lsn[-1][1])
    binlog = _BINLOG.findall(stderr_tail)
    if binlog:
        name, pos, gtid = binlog[-1]
        result["binlog"] = {"file": name, "position": pos, "gtid": gtid or None}
    return result


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[-count:]) or "no message"
