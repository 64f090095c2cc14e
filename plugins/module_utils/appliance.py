# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a Segura appliance is, and how to read it.

- ``ApplianceLayout``: where things live, relative to a root ('/' on a real appliance, a temp folder
  in the lab).
- ``DatabaseConnection``: how the MariaDB client tools connect; credentials only ever through an
  option ("defaults") file, never on a command line.
- ``DatabaseDump``: one streaming ``mariadb-dump --single-transaction`` of both databases.
- ``collect_files``: config files and the secrets staging folder, in a deterministic order.
- ``facts`` / ``estimate_snapshot_size``: what ``appliance_info`` and the preflight check report.

Facts about Segura come from /work/shared/SEGURA.md; guesses are marked *inferred*.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import posixpath
import re
import shutil
import signal
import socket
import ssl
import stat as stat_module
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Union

from ansible_collections.segura.backup.plugins.module_utils.errors import ApplianceError, ConfigError

#: Components a snapshot can hold. ``collect_files`` handles 'config' and 'secrets'; the database
#: dump and the session sync are separate streams.
COMPONENTS = ("database", "config", "secrets", "sessions")

DEFAULT_DATABASES = ("mt4", "senhasegura")
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
DEBIAN_DEFAULTS_FILE = "/etc/mysql/debian.cnf"
DUMP_TRAILER = b"-- Dump completed"

#: Health endpoint answers (SEGURA.md): status code -> cluster role.
HEALTH_ROLES = {
    200: "primary",
    203: "secondary",
    403: "inactive",
    451: "licence_expired",
    503: "unavailable",
}


class ConfigPath(NamedTuple):
    """One configured path below the layout root; ``optional`` paths may be absent."""

    path: str
    optional: bool = False


#: SEGURA.md's config paths. galera.cnf exists only in clusters and etc/senhasegura only on some
#: releases (*inferred*), so both are optional; orbinibkp.conf is on every appliance.
DEFAULT_CONFIG_PATHS = (
    ConfigPath("var/senhasegura/orbinibkp.conf"),
    ConfigPath("etc/mysql/conf.d/galera.cnf", optional=True),
    ConfigPath("etc/senhasegura", optional=True),
)

_DB_NAME = re.compile(r"^[A-Za-z0-9_$]{1,64}$")


def _clean_rel(value, what: str) -> str:
    """A path below the root, as a clean relative POSIX path. '/etc/x' is accepted as 'etc/x'."""
    if not isinstance(value, str) or not value.strip("/") or "\x00" in value:
        raise ConfigError("%s must be a non-empty path, got %r" % (what, value))
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ConfigError("%s %r must not contain '..'" % (what, value))
    return "/".join(parts)


def _parse_config_path(value) -> ConfigPath:
    """'etc/x', ConfigPath or {'path': 'etc/x', 'optional': true} -> ConfigPath."""
    if isinstance(value, ConfigPath):
        path, optional = value.path, value.optional
    elif isinstance(value, dict):
        unknown = set(value) - {"path", "optional"}
        if unknown:
            raise ConfigError("config path entry has unknown key(s): %s" % ", ".join(sorted(unknown)))
        path, optional = value.get("path"), bool(value.get("optional", False))
    else:
        path, optional = value, False
    return ConfigPath(_clean_rel(path, "config path"), optional)


@dataclass
class ApplianceLayout:
    """Where a Segura appliance keeps what we back up; every path is relative to ``root``."""

    root: str = "/"
    arz_dir: str = "var/senhasegura/arz"
    secrets_dir: str = "srv/cache/coba"
    config_paths: Sequence[Union[str, dict, ConfigPath]] = DEFAULT_CONFIG_PATHS
    databases: Sequence[str] = DEFAULT_DATABASES
    #: *inferred*: read only when the ``orbit`` CLI is absent.
    version_file: Optional[str] = "etc/senhasegura/version"

    def __post_init__(self):
        if not isinstance(self.root, str) or not os.path.isabs(self.root):
            raise ConfigError("appliance root must be an absolute path, got %r" % (self.root,))
        self.root = os.path.normpath(self.root)
        if not os.path.isdir(self.root):
            raise ConfigError("appliance root %s is not a directory" % self.root)
        self.arz_dir = _clean_rel(self.arz_dir, "sessions folder (arz_dir)")
        self.secrets_dir = _clean_rel(self.secrets_dir, "secrets folder (secrets_dir)")
        if isinstance(self.config_paths, (str, dict, ConfigPath)):
            raise ConfigError("config_paths must be a list of paths")
        self.config_paths = tuple(_parse_config_path(item) for item in self.config_paths)
        if isinstance(self.databases, str) or not self.databases:
            raise ConfigError("databases must be a non-empty list of database names")
        for name in self.databases:
            if not isinstance(name, str) or not _DB_NAME.match(name):
                raise ConfigError("invalid database name %r (letters, digits, '_' and '$' only)" % (name,))
        if len(set(self.databases)) != len(self.databases):
            raise ConfigError("databases lists a name twice: %s" % ", ".join(self.databases))
        self.databases = tuple(self.databases)
        if self.version_file is not None:
            self.version_file = _clean_rel(self.version_file, "version_file")

    def local(self, relpath: str) -> str:
        """Absolute local path of a layout-relative path."""
        return os.path.join(self.root, relpath) if relpath else self.root

    @property
    def arz_path(self) -> str:
        return self.local(self.arz_dir)

    @property
    def secrets_path(self) -> str:
        return self.local(self.secrets_dir)


# --------------------------------------------------------------------------- database connection


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


def _first_tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise ApplianceError("none of %s is installed (package mariadb-client)" % ", ".join(names))


def _stderr_excerpt(data: bytes, max_lines: int = 5) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return "no message"
    text = "; ".join(lines[:max_lines])
    if len(lines) > max_lines:
        text += " (+%d more lines)" % (len(lines) - max_lines)
    return text


def run_query(db: DatabaseConnection, sql: str, timeout: float = 60) -> List[List[str]]:
    """Rows of a query through the ``mariadb`` client (tab-separated batch output, no headers)."""
    tool = _first_tool("mariadb", "mysql")
    try:
        result = subprocess.run(
            [tool] + db.client_args() + ["--batch", "--skip-column-names", "--raw"],
            input=sql.encode("utf-8"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ApplianceError("query on %s did not finish within %d s" % (db.describe(), timeout)) from None
    if result.returncode != 0:
        raise ApplianceError("query on %s failed: %s" % (db.describe(), _stderr_excerpt(result.stderr)))
    text = result.stdout.decode("utf-8", "replace")
    return [line.split("\t") for line in text.splitlines() if line]


# --------------------------------------------------------------------------- database dump

#: Options of the one dump run, and why:
#: --single-transaction   one consistent InnoDB snapshot of BOTH databases, without locking them
#:                        (it also turns --lock-tables off);
#: --quick                stream rows instead of buffering whole tables in the client;
#: --routines --triggers --events   the schema objects a restore needs besides tables and views;
#: --hex-blob             binary columns survive any charset handling;
#: --add-drop-database --databases  the dump recreates each database, so restore replaces cleanly;
#: --default-character-set=utf8mb4  no lossy conversion of text;
#: --skip-dump-date       two dumps of the same data compare equal (trailer without a date);
#: --max-allowed-packet=1G  the client never refuses a large row.
#: Not used: --master-data / --gtid (nobody builds a replica from these dumps: Galera nodes join by
#: SST), --flush-logs (the binary logs are not part of the backup), the 'mysql' system database
#: (a fresh appliance has its own accounts).
DUMP_OPTIONS = (
    "--single-transaction",
    "--quick",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--add-drop-database",
    "--default-character-set=utf8mb4",
    "--skip-dump-date",
    "--max-allowed-packet=1G",
)

_TAIL_BYTES = 256
_STDERR_LIMIT = 64 * 1024
_STOP_TIMEOUT = 10.0

_PR_SET_PDEATHSIG = 1
_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return _libc


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: the dump gets SIGKILL if our process dies (Linux), so a killed run leaves no dump.

    The signal is tied to the *thread* that started the dump: keep the dump in the thread that
    created it (the context manager does).
    """
    libc = _load_libc()

    def preexec():
        if libc:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _DumpReader:
    """The dump's stdout as a binary stream; remembers the byte count and the last bytes read."""

    def __init__(self, raw):
        self._raw = raw
        self.bytes_read = 0
        self.at_eof = False
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size) if size is not None and size >= 0 else self._raw.read()
        if data:
            self.bytes_read += len(data)
            self.tail = (self.tail + data[-_TAIL_BYTES:])[-_TAIL_BYTES:]
        elif size != 0:
            self.at_eof = True
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()

    @property
    def closed(self) -> bool:
        return self._raw.closed


class DatabaseDump:
    """One ``mariadb-dump`` of the layout's databases, streamed; nothing is staged on disk.

        with DatabaseDump(connection, layout.databases) as dump:
            for block in iter(lambda: dump.stdout.read(1 << 20), b''):
                ...
        # leaving the block checks exit code and trailer; ApplianceError on failure

    If the body raises, the dump is terminated (by its PID) and reaped. If this process dies, the
    kernel kills the dump too (PR_SET_PDEATHSIG), so a killed run leaves no dump behind.

    The account needs, on each database: SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES; and SELECT
    on mysql.proc for the routines. On an appliance, root over the unix socket has all of it.
    """

    def __init__(self, connection: DatabaseConnection, databases: Sequence[str] = DEFAULT_DATABASES,
                 tool: Optional[str] = None, extra_args: Sequence[str] = ()):
        if isinstance(databases, str) or not databases:
            raise ConfigError("databases must be a non-empty list of database names")
        for name in databases:
            if not isinstance(name, str) or not _DB_NAME.match(name):
                raise ConfigError("invalid database name %r" % (name,))
        self.connection = connection
        self.databases = tuple(databases)
        self.tool = tool
        self.extra_args = tuple(extra_args)
        self.process: Optional[subprocess.Popen] = None
        self.stdout: Optional[_DumpReader] = None
        self._stderr = bytearray()
        self._stderr_thread: Optional[threading.Thread] = None

    def command(self) -> List[str]:
        tool = self.tool or _first_tool("mariadb-dump", "mysqldump")
        return ([tool] + self.connection.client_args() + list(DUMP_OPTIONS) + list(self.extra_args)
                + ["--databases"] + list(self.databases))

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    @property
    def bytes_read(self) -> int:
        return self.stdout.bytes_read if self.stdout else 0

    def start(self) -> "DatabaseDump":
        command = self.command()
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                close_fds=True, preexec_fn=_die_with_parent(os.getpid()))
        except OSError as exc:
            raise ApplianceError("could not start %s: %s" % (command[0], exc.strerror or exc)) from None
        self.stdout = _DumpReader(self.process.stdout)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name="dump-stderr", daemon=True)
        self._stderr_thread.start()
        return self

    def _drain_stderr(self) -> None:
        """Keep the first 64 KiB of stderr; read (and drop) the rest so the tool never blocks on it."""
        stream = self.process.stderr
        while True:
            data = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not data:
                break
            room = _STDERR_LIMIT - len(self._stderr)
            if room > 0:
                self._stderr += data[:room]

    @property
    def stderr_text(self) -> str:
        return _stderr_excerpt(bytes(self._stderr))

    def abort(self) -> None:
        """Stop the dump (SIGTERM, then SIGKILL) and reap it. Safe to call twice."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=_STOP_TIMEOUT)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.stdout is not None:
            with contextlib.suppress(OSError):
                self.stdout.close()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=_STOP_TIMEOUT)
        if self.process is not None and self.process.stderr is not None:
            with contextlib.suppress(OSError):
                self.process.stderr.close()

    def finish(self) -> None:
        """Wait for the tool and check that the dump is complete; ApplianceError otherwise."""
        if not self.stdout.at_eof:
            # A consumer that stopped early would store a truncated dump: refuse.
            extra = self.stdout.read(1)
            if extra:
                self.abort()
                raise ApplianceError("the database dump was not read to its end (stopped after %d bytes)"
                                     % (self.stdout.bytes_read - 1))
        try:
            code = self.process.wait(timeout=_STOP_TIMEOUT * 6)
        except subprocess.TimeoutExpired:
            self.abort()
            raise ApplianceError("%s did not exit after its output ended" % os.path.basename(self.command()[0]))
        self._close_pipes()
        tool = os.path.basename(self.process.args[0])
        if code != 0:
            raise ApplianceError("database dump of %s failed (%s exit code %d): %s"
                                 % (", ".join(self.databases), tool, code, self.stderr_text))
        last_line = self.stdout.tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if not last_line.startswith(DUMP_TRAILER):
            raise ApplianceError("database dump of %s is incomplete: %s ended without its '-- Dump completed' "
                                 "line (%d bytes; stderr: %s)"
                                 % (", ".join(self.databases), tool, self.stdout.bytes_read, self.stderr_text))

    def __enter__(self) -> "DatabaseDump":
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            return False
        self.finish()
        return False


# --------------------------------------------------------------------------- files


class Problem(NamedTuple):
    """A file that could not be taken as it should: its path and why."""

    path: str
    reason: str

    def __str__(self):
        return "%s: %s" % (self.path, self.reason)


class CollectedFile(NamedTuple):
    """One member to archive: 'files/<path below root>', the local path, and 'file'|'dir'|'symlink'."""

    archive_name: str
    abs_path: str
    kind: str


def problems_message(problems: Sequence[Problem], what: str = "files", limit: int = 10) -> str:
    """One message naming the problem paths (the first ``limit``)."""
    shown = "; ".join(str(p) for p in problems[:limit])
    more = " (and %d more)" % (len(problems) - limit) if len(problems) > limit else ""
    return "%d %s could not be read: %s%s" % (len(problems), what, shown, more)


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _check_readable(path: str) -> Optional[str]:
    """None if ``path`` is a regular file we can open for reading now, else the reason."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "vanished while being collected"
    except OSError as exc:
        return "cannot be read (%s)" % _reason(exc)
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            return "was replaced while being collected"
    finally:
        os.close(fd)
    return None


def _kind_of(mode: int) -> Optional[str]:
    if stat_module.S_ISREG(mode):
        return "file"
    if stat_module.S_ISDIR(mode):
        return "dir"
    if stat_module.S_ISLNK(mode):
        return "symlink"
    return None


def _walk_entry(layout: ApplianceLayout, relpath: str, problems: List[Problem],
                seen: set) -> Iterator[CollectedFile]:
    """Pre-order walk of one path (lstat: symlinks are archived as links, never followed)."""
    path = layout.local(relpath)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        problems.append(Problem(path, "vanished while being collected"))
        return
    except OSError as exc:
        problems.append(Problem(path, "cannot be examined (%s)" % _reason(exc)))
        return
    kind = _kind_of(info.st_mode)
    if kind is None:
        problems.append(Problem(path, "is not a regular file, directory or symlink"))
        return
    name = "files/" + relpath
    if name in seen:
        return
    if kind == "file":
        reason = _check_readable(path)
        if reason:
            problems.append(Problem(path, reason))
            return
    seen.add(name)
    yield CollectedFile(name, path, kind)
    if kind != "dir":
        return
    try:
        children = sorted(os.listdir(path))
    except FileNotFoundError:
        problems.append(Problem(path, "vanished while being collected"))
        return
    except OSError as exc:
        problems.append(Problem(path, "cannot be listed (%s)" % _reason(exc)))
        return
    for child in children:
        yield from _walk_entry(layout, posixpath.join(relpath, child), problems, seen)


def collect_files(layout: ApplianceLayout, components: Iterable[str],
                  problems: Optional[List[Problem]] = None) -> Iterator[CollectedFile]:
    """Config files ('config') and the secrets staging folder ('secrets'), deterministic order.

    Configured paths in their given order, then the secrets folder; directories before their
    content, names sorted. Every top-level path is checked when this is called (before any walk):
    a missing one is an ApplianceError unless optional. Files that are unreadable, vanish or are not
    regular files/dirs/symlinks are appended to ``problems`` (the caller decides); without a
    ``problems`` list they raise one ApplianceError naming them all once the walk ends.
    """
    components = set(components)
    unknown = components - set(COMPONENTS)
    if unknown:
        raise ConfigError("unknown component(s): %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(COMPONENTS)))
    roots: List[str] = []
    if "config" in components:
        for entry in layout.config_paths:
            if os.path.lexists(layout.local(entry.path)):
                roots.append(entry.path)
            elif not entry.optional:
                raise ApplianceError("configured path %s does not exist" % layout.local(entry.path))
    if "secrets" in components:
        if not os.path.isdir(layout.secrets_path):
            raise ApplianceError("secrets staging folder %s does not exist (leave out the 'secrets' "
                                 "component if this appliance exports no secrets)" % layout.secrets_path)
        roots.append(layout.secrets_dir)
    return _collect(layout, roots, problems)


def _collect(layout: ApplianceLayout, roots: List[str], problems: Optional[List[Problem]]) -> Iterator[CollectedFile]:
    collected = [] if problems is None else problems
    seen: set = set()
    for relpath in roots:
        yield from _walk_entry(layout, relpath, collected, seen)
    if problems is None and collected:
        raise ApplianceError(problems_message(collected))


# --------------------------------------------------------------------------- facts


def _tree_usage(path: str) -> Dict[str, object]:
    """Bytes and file count below ``path`` (lstat, no symlinks followed)."""
    if not os.path.lexists(path):
        return {"path": path, "exists": False, "bytes": 0, "files": 0}
    total = 0
    files = 0
    pending = [path]
    while pending:
        current = pending.pop()
        try:
            info = os.lstat(current)
        except OSError:
            continue
        if stat_module.S_ISDIR(info.st_mode):
            try:
                with os.scandir(current) as entries:
                    pending.extend(entry.path for entry in entries)
            except OSError:
                continue
        elif stat_module.S_ISREG(info.st_mode):
            total += info.st_size
            files += 1
    return {"path": path, "exists": True, "bytes": total, "files": files}


def _free_space(path: str) -> Optional[Dict[str, object]]:
    try:
        result = os.statvfs(path)
    except OSError:
        return None
    return {"path": path, "bytes_free": result.f_bavail * result.f_frsize,
            "bytes_total": result.f_blocks * result.f_frsize}


_SECRET_MOUNT_OPTIONS = ("password", "pass", "credentials", "cred", "password2")


def network_mounts(mounts_file: str = "/proc/self/mounts") -> List[Dict[str, str]]:
    """CIFS and NFS mounts (source, mount point, type, options without credentials)."""
    result = []
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return result
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        source, mountpoint, fstype, options = fields[:4]
        if not (fstype in ("cifs", "smb3") or fstype.startswith("nfs")):
            continue
        kept = [opt for opt in options.split(",") if opt.split("=", 1)[0] not in _SECRET_MOUNT_OPTIONS]

        def unescape(text):  # /proc/mounts escapes space, tab, newline and backslash in octal
            return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)

        result.append({"source": unescape(source), "mountpoint": unescape(mountpoint),
                       "fstype": fstype, "options": ",".join(kept)})
    return result


def _galera_enabled(galera_cnf: str) -> Optional[bool]:
    """True/False from wsrep_on in galera.cnf; None when the file is absent."""
    try:
        with open(galera_cnf, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ApplianceError("cannot read %s: %s" % (galera_cnf, _reason(exc))) from None
    wsrep_on = False
    provider_none = False
    for line in lines:
        line = line.strip()
        if not line or line[0] in "#;[!":
            continue
        key, _sep, value = line.partition("=")
        key = key.strip().replace("-", "_").lower()
        value = value.split("#", 1)[0].strip().strip("'\"").lower()
        if key == "wsrep_on":
            wsrep_on = value in ("1", "on", "true", "yes", "")
        elif key == "wsrep_provider":
            provider_none = value == "none"
    return wsrep_on and not provider_none


def cluster_role(layout: ApplianceLayout, health_url: Optional[str] = None, verify_tls: bool = True,
                 timeout: float = 5.0) -> Dict[str, object]:
    """Role of this node: from Segura's health endpoint when a URL is given, else from galera.cnf.

    Returns {"role", "is_primary" (True/False/None = unknown), "source", "status"?, "error"?}.
    A health URL that does not answer gives role 'unknown' (never guessed to be primary).
    """
    if health_url:
        if not health_url.startswith(("https://", "http://")):
            raise ConfigError("health URL must start with https:// or http://, got %r" % (health_url,))
        context = None
        if health_url.startswith("https://"):
            context = ssl.create_default_context()
            if not verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(health_url, method="GET",
                                         headers={"User-Agent": "segura.backup"})
        try:
            # Plain urllib on purpose: the engine has no Ansible imports (see DESIGN.md).
            opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
            with opener.open(request, timeout=timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return {"role": "unknown", "is_primary": None, "source": "health", "status": None,
                    "error": "health endpoint %s did not answer: %s" % (health_url, reason)}
        role = HEALTH_ROLES.get(status, "unknown")
        return {"role": role, "is_primary": status == 200, "source": "health", "status": status}
    enabled = _galera_enabled(layout.local("etc/mysql/conf.d/galera.cnf"))
    if not enabled:
        return {"role": "standalone", "is_primary": True, "source": "galera.cnf"}
    return {"role": "cluster_member", "is_primary": None, "source": "galera.cnf",
            "error": "this node is in a Galera cluster; give the health URL to tell whether it is primary"}


def appliance_version(layout: ApplianceLayout, orbit: Optional[str] = None) -> Dict[str, str]:
    """{'version', 'source'}: ``orbit version`` if the CLI exists, else the version file, else unknown."""
    orbit = orbit or shutil.which("orbit")
    if orbit:
        try:
            result = subprocess.run([orbit, "version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplianceError("'orbit version' could not run: %s" % exc) from None
        if result.returncode != 0:
            raise ApplianceError("'orbit version' failed: %s" % _stderr_excerpt(result.stderr))
        lines = [l.strip() for l in result.stdout.decode("utf-8", "replace").splitlines() if l.strip()]
        return {"version": lines[0] if lines else "unknown", "source": "orbit"}
    if layout.version_file:
        path = layout.local(layout.version_file)
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read(4096).strip()
        except OSError:
            text = ""
        if text:
            return {"version": text.splitlines()[0].strip(), "source": path}
    return {"version": "unknown", "source": "none"}


def database_facts(layout: ApplianceLayout, db: DatabaseConnection) -> Dict[str, object]:
    """Server version and per-database sizes (information_schema), in one client call."""
    names = ", ".join("'%s'" % name for name in layout.databases)  # names are validated identifiers
    rows = run_query(db, (
        "SELECT 'version', VERSION(), '', '';\n"
        "SELECT 'db', SCHEMA_NAME, "
        " (SELECT COALESCE(SUM(DATA_LENGTH), 0) FROM information_schema.TABLES t WHERE t.TABLE_SCHEMA = s.SCHEMA_NAME),"
        " (SELECT COALESCE(SUM(INDEX_LENGTH), 0) FROM information_schema.TABLES t WHERE t.TABLE_SCHEMA = s.SCHEMA_NAME)"
        " FROM information_schema.SCHEMATA s WHERE SCHEMA_NAME IN (%s) ORDER BY SCHEMA_NAME;\n" % names))
    version = "unknown"
    sizes: Dict[str, Dict[str, object]] = {}
    for row in rows:
        if row[0] == "version":
            version = row[1]
        elif row[0] == "db":
            sizes[row[1]] = {"exists": True, "data_bytes": int(row[2]), "index_bytes": int(row[3])}
    for name in layout.databases:
        sizes.setdefault(name, {"exists": False, "data_bytes": 0, "index_bytes": 0})
    return {"server_version": version, "databases": sizes}


def facts(layout: ApplianceLayout, db: Optional[DatabaseConnection] = None, health_url: Optional[str] = None,
          verify_tls: bool = True, health_timeout: float = 5.0, orbit: Optional[str] = None) -> Dict[str, object]:
    """Everything ``appliance_info`` reports and the snapshot records. Without ``db`` no database facts."""
    version = appliance_version(layout, orbit)
    paths = {
        "config": [_tree_usage(layout.local(entry.path)) for entry in layout.config_paths],
        "secrets": _tree_usage(layout.secrets_path),
        "sessions": _tree_usage(layout.arz_path),
    }
    free = {"root": _free_space(layout.root), "var": _free_space(layout.local("var"))}
    result = {
        "hostname": socket.gethostname(),
        "root": layout.root,
        "appliance_version": version["version"],
        "appliance_version_source": version["source"],
        "paths": paths,
        "free_space": free,
        "mounts": network_mounts(),
        "cluster": cluster_role(layout, health_url, verify_tls, health_timeout),
    }
    if db is not None:
        result["mariadb"] = database_facts(layout, db)
    return result


def estimate_snapshot_size(appliance_facts: Dict[str, object]) -> Dict[str, int]:
    """Bytes a snapshot will need on the target, for the free-space preflight.

    A conservative upper bound: data + index size of the databases (a compressed SQL dump is
    smaller; indexes are not dumped), plus config and secrets as they are on disk. Sessions are
    returned apart: only new recordings move, and the caller knows which ones.
    """
    database = 0
    for size in appliance_facts.get("mariadb", {}).get("databases", {}).values():
        database += int(size.get("data_bytes", 0)) + int(size.get("index_bytes", 0))
    paths = appliance_facts.get("paths", {})
    files = sum(int(item.get("bytes", 0)) for item in paths.get("config", []))
    files += int(paths.get("secrets", {}).get("bytes", 0))
    sessions = int(paths.get("sessions", {}).get("bytes", 0))
    return {"database_bytes": database, "files_bytes": files, "snapshot_bytes": database + files,
            "sessions_bytes": sessions}
