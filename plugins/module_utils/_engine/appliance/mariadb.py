# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""How the MariaDB client tools reach the server: ``DatabaseConnection``, ``run_query``.

Passwords only ever travel in an option ("defaults") file, never on a command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Iterator, List, Optional

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError, ConfigError

DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
DEBIAN_DEFAULTS_FILE = "/etc/mysql/debian.cnf"


def _option_value(value: str) -> str:
    """Quote a value for a MariaDB option file: any character survives (backslash escapes)."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))
    return '"%s"' % escaped


@dataclass
class DatabaseConnection:
    """How the client tools reach the server. Passwords only ever travel in ``defaults_file``.

    ``exclusive_defaults``: use ``--defaults-file`` (read only that file) instead of
    ``--defaults-extra-file`` (read after the system's my.cnf, whose values it overrides).
    """

    defaults_file: Optional[str] = None
    socket: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    user: Optional[str] = None
    exclusive_defaults: bool = False

    def __post_init__(self):
        if self.defaults_file is not None and not os.path.isabs(self.defaults_file):
            raise ConfigError("database defaults file must be an absolute path, got %r" % (self.defaults_file,))
        if self.socket is not None and not os.path.isabs(self.socket):
            raise ConfigError("database socket must be an absolute path, got %r" % (self.socket,))
        if self.port is not None and (isinstance(self.port, bool) or not isinstance(self.port, int)
                                      or not 0 < self.port < 65536):
            raise ConfigError("database port must be between 1 and 65535, got %r" % (self.port,))
        for name in ("host", "user"):
            value = getattr(self, name)
            if value is not None and (not value or "\x00" in value or "\n" in value):
                raise ConfigError("invalid database %s %r" % (name, value))

    @classmethod
    def appliance_default(cls, debian_defaults: str = DEBIAN_DEFAULTS_FILE,
                          socket_path: str = DEFAULT_SOCKET) -> "DatabaseConnection":
        """A real appliance: Debian's maintenance file if it exists, else root over the unix socket."""
        if os.path.isfile(debian_defaults):
            return cls(defaults_file=debian_defaults, exclusive_defaults=True)
        return cls(socket=socket_path, user="root")

    def client_args(self) -> List[str]:
        """Connection arguments; the defaults-file option comes first, as the tools require."""
        args = []
        if self.defaults_file:
            option = "--defaults-file=" if self.exclusive_defaults else "--defaults-extra-file="
            args.append(option + self.defaults_file)
        if self.socket:
            args.append("--socket=" + self.socket)
        if self.host:
            args.append("--host=" + self.host)
        if self.port:
            args.append("--port=%d" % self.port)
        if self.user:
            args.append("--user=" + self.user)
        return args

    def describe(self) -> str:
        """Where we connect, for messages (never the password)."""
        if self.socket:
            where = "socket " + self.socket
        elif self.host or self.port:
            where = "%s:%s" % (self.host or "localhost", self.port or 3306)
        else:
            where = "the default socket" if not self.defaults_file else "the server named in " + self.defaults_file
        return "MariaDB (%s%s)" % (where, ", user " + self.user if self.user else "")


@contextlib.contextmanager
def temporary_defaults_file(password: str, user: Optional[str] = None,
                            directory: Optional[str] = None) -> Iterator[str]:
    """A 0600 ``[client]`` option file holding the password, removed on exit.

    Use it with ``DatabaseConnection(defaults_file=path, ...)`` when a password is given as an option.
    """
    fd, path = tempfile.mkstemp(prefix="segura-backup-", suffix=".cnf", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        lines = ["[client]"]
        if user is not None:
            lines.append("user=" + _option_value(user))
        lines.append("password=" + _option_value(password))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def first_tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise ApplianceError("none of %s is installed (package mariadb-client)" % ", ".join(names))


def stderr_excerpt(data: bytes, max_lines: int = 5) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return "no message"
    text = "; ".join(lines[:max_lines])
    if len(lines) > max_lines:
        text += " (+%d more lines)" % (len(lines) - max_lines)
    return text


def run_query(db: DatabaseConnection, sql: str, timeout: float = 60) -> List[List[str]]:
    """Rows of a query through the ``mariadb`` client (tab-separated batch output, no headers)."""
    tool = first_tool("mariadb", "mysql")
    try:
        result = subprocess.run(
            [tool] + db.client_args() + ["--batch", "--skip-column-names", "--raw"],
            input=sql.encode("utf-8"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ApplianceError("query on %s did not finish within %d s" % (db.describe(), timeout)) from None
    if result.returncode != 0:
        raise ApplianceError("query on %s failed: %s" % (db.describe(), stderr_excerpt(result.stderr)))
    text = result.stdout.decode("utf-8", "replace")
    return [line.split("\t") for line in text.splitlines() if line]
