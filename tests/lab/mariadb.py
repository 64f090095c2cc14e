# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A private MariaDB server for the lab: its own datadir, socket, pid file and loopback TCP port.

Everything lives under ``<state_dir>/mariadb``. The server runs with ``--user=root`` (the lab runs as
root, and a ``mysql`` user could not traverse pytest's 0700 temp dirs). ``root`` gets a random password
kept only in a 0600 client defaults file, so every tool connects with ``--defaults-file=<file>`` and
no password ever reaches a command line; ``root@localhost`` also keeps unix-socket authentication.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import subprocess
import time

from tests.lab import core

DEFAULT_PORT = 33306
PORT_ENV = "SEGURA_LAB_MYSQL_PORT"
START_DEADLINE = 60.0
STOP_DEADLINE = 30.0
POLL_INTERVAL = 0.1


LabServiceError = core.LabError


class MariaDBService(core.Service):
    name = "mariadb"

    def __init__(self, state_dir: str):
        super().__init__(state_dir)
        self.base = os.path.join(os.path.abspath(state_dir), "mariadb")
        self.datadir = os.path.join(self.base, "data")
        self.rundir = os.path.join(self.base, "run")
        self.tmpdir = os.path.join(self.base, "tmp")
        self.socket = os.path.join(self.rundir, "mariadb.sock")
        self.pid_file = os.path.join(self.rundir, "mariadb.pid")
        self.log_file = os.path.join(self.base, "mariadb.log")
        self.defaults_file = os.path.join(self.base, "client.cnf")
        # Written only after the first start has set root's password: its absence means "not initialised".
        self.ready_marker = os.path.join(self.base, "initialised")
        self.port = int(os.environ.get(PORT_ENV, DEFAULT_PORT))
        self._process: subprocess.Popen | None = None

    # ----------------------------------------------------------------- public interface
    def up(self) -> dict:
        """Start the server (initialising the datadir on first use); harmless when already running."""
        if self._running_pid() is not None:
            return self._endpoints()
        if _port_in_use(self.port):
            raise LabServiceError(
                "MariaDB lab port 127.0.0.1:%d is already taken by another process; "
                "set %s to a free port" % (self.port, PORT_ENV))
        for path in (self.base, self.rundir, self.tmpdir):
            os.makedirs(path, mode=0o700, exist_ok=True)
        if not os.path.exists(self.ready_marker):
            self._install_datadir()
        self._start()
        if not os.path.exists(self.ready_marker):
            self._set_root_password()
            with open(self.ready_marker, "w"):
                pass
        else:
            self._write_defaults_file(self._stored_password())  # the port may differ from last time
        return self._endpoints()

    def down(self) -> None:
        """Stop exactly the server this state dir started: SIGTERM, bounded wait, then SIGKILL."""
        pid = self._running_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if not self._wait_for_exit(pid, STOP_DEADLINE):
            os.kill(pid, signal.SIGKILL)
            self._wait_for_exit(pid, 5.0)
        self._process = None

    def status(self) -> dict:
        pid = self._running_pid()
        return {
            "name": self.name,
            "running": pid is not None,
            "pid": pid,
            "port": self.port,
            "socket": self.socket,
            "datadir": self.datadir,
            "log": self.log_file,
            "defaults_file": self.defaults_file,
        }

    def env(self) -> dict:
        """Connection facts as strings (ready to export as environment variables)."""
        return {
            "mysql_socket": self.socket,
            "mysql_port": str(self.port),
            "mysql_host": "127.0.0.1",
            "mysql_user": "root",
            "mysql_defaults_file": self.defaults_file,
        }

    # ----------------------------------------------------------------- helpers
    def _endpoints(self) -> dict:
        result = self.env()
        result["pid"] = self._running_pid()
        return result

    def _install_datadir(self) -> None:
        # A half-made datadir (interrupted first start) is ours to throw away: it holds no data yet.
        if os.path.isdir(self.datadir):
            subprocess.run(["rm", "-rf", "--one-file-system", self.datadir], check=True)
        os.makedirs(self.datadir, mode=0o700)
        with open(self.log_file, "ab") as log:
            result = subprocess.run(
                ["mariadb-install-db", "--no-defaults", "--datadir=" + self.datadir, "--user=root",
                 "--auth-root-authentication-method=socket", "--skip-test-db",
                 "--tmpdir=" + self.tmpdir],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=300, check=False)
        if result.returncode != 0:
            raise LabServiceError("mariadb-install-db failed (exit %d); see %s"
                                  % (result.returncode, self.log_file))

    def _server_command(self) -> list:
        return [
            "mariadbd", "--no-defaults",
            "--user=root",
            "--datadir=" + self.datadir,
            "--socket=" + self.socket,
            "--pid-file=" + self.pid_file,
            "--tmpdir=" + self.tmpdir,
            "--log-error=" + self.log_file,
            "--port=%d" % self.port,
            "--bind-address=127.0.0.1",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--max-allowed-packet=64M",
            "--local-infile=1",
            # Fast, crash-unsafe settings are fine for a throwaway lab server.
            "--innodb-buffer-pool-size=256M",
            "--innodb-log-file-size=256M",
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            "--skip-log-bin",
        ]

    def _start(self) -> None:
        if os.path.exists(self.socket):
            os.unlink(self.socket)  # stale: no server of ours is running (checked by up())
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                self._server_command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LabServiceError("mariadbd exited with code %s while starting; log %s:\n%s"
                                      % (self._process.returncode, self.log_file,
                                         core.log_tail(self.log_file)))
            if self._answers():
                return
            time.sleep(POLL_INTERVAL)
        self._kill_started_process()
        raise LabServiceError("mariadbd did not answer within %d s; see %s"
                              % (START_DEADLINE, self.log_file))

    def _kill_started_process(self) -> None:
        """Stop the process this object spawned (used when a start times out)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def _answers(self) -> bool:
        """True once the server accepts a login over its socket (root via unix_socket auth)."""
        result = subprocess.run(
            ["mariadb-admin", "--no-defaults", "--socket=" + self.socket, "--user=root",
             "--connect-timeout=2", "status"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
        return result.returncode == 0

    def _set_root_password(self) -> None:
        password = secrets.token_urlsafe(24)  # URL-safe: no quoting needed in SQL or the .cnf
        self._write_defaults_file(password)
        # SQL goes through stdin so the password never appears in a process list.
        sql = (
            "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket "
            "OR mysql_native_password USING PASSWORD('{pw}');\n"
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '{pw}';\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n"
            "CREATE USER IF NOT EXISTS 'root'@'::1' IDENTIFIED BY '{pw}';\n"
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'::1' WITH GRANT OPTION;\n"
            "FLUSH PRIVILEGES;\n"
        ).format(pw=password)
        result = subprocess.run(
            ["mariadb", "--no-defaults", "--socket=" + self.socket, "--user=root"],
            input=sql.encode(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60, check=False)
        if result.returncode != 0:
            raise LabServiceError("could not set up the lab root account: %s"
                                  % result.stderr.decode(errors="replace").strip())

    def _write_defaults_file(self, password: str) -> None:
        core.write_private_file(
            self.defaults_file,
            "[client]\nuser=root\npassword=%s\nsocket=%s\nport=%d\ndefault-character-set=utf8mb4\n"
            % (password, self.socket, self.port))

    def _stored_password(self) -> str:
        with open(self.defaults_file) as handle:
            for line in handle:
                if line.startswith("password="):
                    return line.rstrip("\n").split("=", 1)[1]
        raise LabServiceError("%s has no password line; remove %s to re-initialise the lab database"
                              % (self.defaults_file, self.base))

    def _running_pid(self) -> int | None:
        """The pid from our pid file, if that process is alive and is a mariadbd on OUR datadir."""
        try:
            with open(self.pid_file) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            pid = self._process.pid if self._process is not None and self._process.poll() is None else None
            if pid is None:
                return None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                cmdline = handle.read().split(b"\0")
        except OSError:
            return None
        if ("--datadir=" + self.datadir).encode() not in cmdline:
            return None  # pid reused by an unrelated process
        if _is_zombie(pid):
            self._reap(pid)
            return None
        return pid

    def _wait_for_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap(pid)
            if not os.path.exists("/proc/%d" % pid) or _is_zombie(pid):
                self._reap(pid)
                return True
            time.sleep(POLL_INTERVAL)
        return False

    def _reap(self, pid: int) -> None:
        """Collect the exit status when the server is our own child (else it lingers as a zombie)."""
        if self._process is not None and self._process.pid == pid:
            self._process.poll()
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _is_zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            # The state follows the parenthesised command name, which may itself contain spaces.
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _port_in_use(port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
    try:
        probe.bind(("127.0.0.1", port))
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    finally:
        probe.close()
    return False
