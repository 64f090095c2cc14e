# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real smbd on 127.0.0.1 with a signed share and an encrypted share.

Everything Samba writes (passdb, locks, caches, logs, pid files, sockets) lives under
<state>/samba, so this smbd shares nothing with a system Samba or another engineer's smbd.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import stat
from typing import List, Optional

from tests.lab import core
from tests.lab.ganesha import GaneshaService

SMB_HOST = "127.0.0.1"
DEFAULT_SMB_PORT = 445
SMB_PORT_ENV = "SEGURA_LAB_SMB_PORT"
SMB_USER = "backup"  # existing Debian system account; created if absent
SIGNED_SHARE = "backup_signed"
ENCRYPTED_SHARE = "backup_encrypted"
# Every character that tends to break quoting: backslash, ampersand, bang, dollar, quotes,
# percent, comma and space.
SMB_PASSWORD = "Pa\\ss & w!rd $'\"% ,x"

_STATE_SUBDIRS = ("private", "lock", "state", "cache", "pid", "ncalrpc", "log")


def _shares_root(state_dir: str) -> str:
    """Where the share folders go. smbd serves them as user `backup`, which must be able to pass through
    every folder above them: below the state folder when it can, else (a clone in a 0700 home, as root's
    is, or a state folder made 0700 under umask 077) in a folder of this state's own below /var/tmp, named
    after the state folder's path."""
    folder = os.path.abspath(state_dir)
    while True:
        try:
            passable = os.stat(folder).st_mode & 0o001
        except FileNotFoundError:
            passable = True  # not made yet: made 0755 by the lab (_make_passable)
        if not passable:
            digest = hashlib.sha256(os.path.abspath(state_dir).encode("utf-8")).hexdigest()[:16]
            return os.path.join("/var/tmp", "segura-lab-shares-" + digest)
        if folder == os.path.dirname(folder):
            return os.path.join(state_dir, "shares")
        folder = os.path.dirname(folder)


def _make_passable(path: str) -> None:
    """Make path and its missing parents 0755 whatever the umask (a 0700 folder would stop user backup)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        os.mkdir(folder, 0o755)
        os.chmod(folder, 0o755)


def blocking_folder(path: str, account: pwd.struct_passwd) -> Optional[str]:
    """The first folder above ``path`` that ``account`` cannot pass through (no search permission for
    it as owner, group member or other), or None when it reaches ``path``."""
    groups = {account.pw_gid} | {group.gr_gid for group in grp.getgrall() if account.pw_name in group.gr_mem}
    parents = []
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        parents.append(folder)
        if folder == os.path.dirname(folder):
            break
        folder = os.path.dirname(folder)
    for folder in reversed(parents):
        info = os.stat(folder)
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return folder
    return None


class SambaService(core.Service):
    name = "samba"

    def __init__(self, state_dir: str):
        super().__init__(state_dir)
        self.base = os.path.join(self.state_dir, "samba")
        self.conf = os.path.join(self.base, "smb.conf")
        self.pid_file = os.path.join(self.base, "smbd.lab.pid")
        self.log_path = os.path.join(self.base, "log", "smbd.stdout.log")
        self.password_file = os.path.join(self.base, "password")
        shares = _shares_root(self.state_dir)
        self.share_dirs = {
            SIGNED_SHARE: os.path.join(shares, SIGNED_SHARE),
            ENCRYPTED_SHARE: os.path.join(shares, ENCRYPTED_SHARE),
        }

    # --- configuration ------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port of a running smbd is what its config says; otherwise $SEGURA_LAB_SMB_PORT or 445."""
        if os.path.exists(self.conf) and self._running_pid() is not None:
            with open(self.conf, encoding="utf-8") as handle:
                for line in handle:
                    key, _sep, value = line.partition("=")
                    if key.strip() == "smb ports":
                        return int(value.strip())
        return int(os.environ.get(SMB_PORT_ENV) or DEFAULT_SMB_PORT)

    def guest_address(self) -> Optional[str]:
        """The host side of the lab's NFS veth pair (e.g. 10.254.77.1), when the lab network is up.

        Podman containers and their Ansible runs cannot reach 127.0.0.1 of this machine, but they
        reach this lab-made address, so smbd listens there too.
        """
        recorded = core.read_json(GaneshaService(self.state_dir).network_file) or {}
        address = recorded.get("host_addr")
        if not address:
            return None
        shown = core.run(["ip", "-o", "-4", "addr", "show", "dev", recorded["host_if"]], check=False)
        return address if " %s/" % address in shown.stdout else None

    def _bound_addresses(self) -> List[str]:
        """What the running smbd's config binds (the guest address only if it was up at start)."""
        if os.path.exists(self.conf):
            with open(self.conf, encoding="utf-8") as handle:
                for line in handle:
                    key, _sep, value = line.partition("=")
                    if key.strip() == "interfaces":
                        return value.split()
        return [SMB_HOST]

    def _render_conf(self, port: int, guest_address: Optional[str] = None) -> str:
        paths = {name: os.path.join(self.base, name) for name in _STATE_SUBDIRS}
        return "\n".join(
            [
                "# Written by tests/lab/samba.py; regenerated on every `up`.",
                "[global]",
                "  server role = standalone server",
                "  workgroup = SEGURALAB",
                "  netbios name = SEGURALAB",
                "  disable netbios = yes",
                "  interfaces = %s" % " ".join([SMB_HOST] + ([guest_address] if guest_address else [])),
                "  bind interfaces only = yes",
                "  smb ports = %d" % port,
                "  load printers = no",
                "  printing = bsd",
                "  printcap name = /dev/null",
                "  disable spoolss = yes",
                "  server min protocol = SMB2_10",
                "  server signing = mandatory",
                "  passdb backend = tdbsam:%s" % os.path.join(paths["private"], "passdb.tdb"),
                "  private dir = %s" % paths["private"],
                "  lock directory = %s" % paths["lock"],
                "  state directory = %s" % paths["state"],
                "  cache directory = %s" % paths["cache"],
                "  pid directory = %s" % paths["pid"],
                "  ncalrpc dir = %s" % paths["ncalrpc"],
                "  log file = %s" % os.path.join(paths["log"], "log.%m"),
                "  max log size = 1000",
                "  log level = 1",
                "  map to guest = never",
                "",
                "[%s]" % SIGNED_SHARE,
                "  path = %s" % self.share_dirs[SIGNED_SHARE],
                "  read only = no",
                "  valid users = %s" % SMB_USER,
                "",
                "[%s]" % ENCRYPTED_SHARE,
                "  path = %s" % self.share_dirs[ENCRYPTED_SHARE],
                "  read only = no",
                "  valid users = %s" % SMB_USER,
                "  smb encrypt = required",
                "",
            ]
        )

    def _prepare(self, port: int) -> str:
        """Write config, folders and the user; return the smbd binary to run."""
        core.require_binary("smbpasswd", "samba-common-bin")
        core.require_binary("smbstatus", "samba")
        smbd = core.require_binary("smbd", "samba")
        core.ensure_dir(self.base, 0o755)
        for name in _STATE_SUBDIRS:
            core.ensure_dir(os.path.join(self.base, name), 0o700 if name == "private" else 0o755)
        account = _ensure_account(SMB_USER)
        for path in self.share_dirs.values():
            _make_passable(path)
            os.chown(path, account.pw_uid, account.pw_gid)
            os.chmod(path, 0o770)
            blocked = blocking_folder(path, account)
            if blocked:  # smbd would start and then refuse every tree connect ("permission denied")
                raise core.LabError(
                    "smbd serves %s as user %s, which cannot pass through %s (mode %o): run "
                    "`chmod o+x %s`, or keep the lab state elsewhere (%s=/var/tmp/segura-lab)"
                    % (path, SMB_USER, blocked, stat.S_IMODE(os.stat(blocked).st_mode), blocked, core.STATE_ENV))
        with open(self.conf, "w", encoding="utf-8") as handle:
            handle.write(self._render_conf(port, self.guest_address()))
        core.write_private_file(self.password_file, SMB_PASSWORD)
        # smbpasswd reads the new password twice from stdin (-s); nothing lands on a command line.
        core.run(
            ["smbpasswd", "-c", self.conf, "-s", "-a", SMB_USER],
            stdin_text="%s\n%s\n" % (SMB_PASSWORD, SMB_PASSWORD),
        )
        return smbd

    # --- process tracking ---------------------------------------------------------------

    def _is_our_smbd(self, pid: int) -> bool:
        args = core.pid_cmdline(pid)
        return bool(args) and os.path.basename(args[0]) == "smbd" and self.conf in args

    def _running_pid(self):
        return core.tracked_pid(self.pid_file, self._is_our_smbd)

    def helper_pids(self) -> List[int]:
        """Every process (smbd children, samba-dcerpcd, rpcd_*) started with our config path."""
        return core.pids_with_argument(self.conf)

    # --- Service ------------------------------------------------------------------------

    def up(self) -> dict:
        pid = self._running_pid()
        if pid is not None:
            if not core.wait_for(lambda: core.tcp_port_open(SMB_HOST, self.port), core.READY_TIMEOUT):
                raise core.LabError("lab smbd (pid %d) runs but does not answer on port %d" % (pid, self.port))
            return self.env()
        port = self.port
        if core.tcp_port_open(SMB_HOST, port):
            raise core.LabError(
                "port %d on %s is already taken by another process (%s); stop it or set %s to a free port"
                % (port, SMB_HOST, core.listeners_on(SMB_HOST, port), SMB_PORT_ENV)
            )
        # Helpers left over from a crashed run hold our tdb files; they are ours by config path.
        core.stop_pids(self.helper_pids())
        smbd = self._prepare(port)
        process = core.spawn(
            [smbd, "-F", "--no-process-group", "--debug-stdout", "-s", self.conf], self.log_path
        )
        core.write_pid_file(self.pid_file, process.pid)
        core.wait_ready("smbd on %s:%d" % (SMB_HOST, port), lambda: core.tcp_port_open(SMB_HOST, port),
                        process, self.log_path)
        return self.env()

    def down(self) -> None:
        pid = self._running_pid()
        if pid is not None:
            core.stop_pids([pid])
        # samba-dcerpcd re-parents to PID 1 and outlives smbd: find it by our config path.
        core.stop_pids(self.helper_pids())
        # Samba's own pid files (smbd.pid, samba-dcerpcd.pid) would only mislead the next start.
        pid_dir = os.path.join(self.base, "pid")
        leftovers = [os.path.join(pid_dir, n) for n in os.listdir(pid_dir)] if os.path.isdir(pid_dir) else []
        for path in leftovers + [self.pid_file]:
            if os.path.exists(path):
                os.unlink(path)

    def status(self) -> dict:
        pid = self._running_pid()
        return {
            "running": pid is not None and core.tcp_port_open(SMB_HOST, self.port),
            "pid": pid,
            "helpers": [p for p in self.helper_pids() if p != pid],
            "port": self.port,
        }

    def env(self) -> dict:
        bound = self._bound_addresses() if self._running_pid() is not None else []
        return {
            "smb_server": SMB_HOST,
            # for podman containers (they cannot reach this machine's 127.0.0.1); None when not bound
            "smb_guest_server": next((address for address in bound if address != SMB_HOST), None),
            "smb_port": self.port,
            "smb_username": SMB_USER,
            "smb_password_file": self.password_file,
            "smb_password": SMB_PASSWORD,
            "smb_share_signed": SIGNED_SHARE,
            "smb_share_encrypted": ENCRYPTED_SHARE,
            "smb_dir_signed": self.share_dirs[SIGNED_SHARE],
            "smb_dir_encrypted": self.share_dirs[ENCRYPTED_SHARE],
            "smb_conf": self.conf,
        }


def _ensure_account(user: str) -> pwd.struct_passwd:
    """The Unix account behind the SMB user; created as a locked system account when absent."""
    try:
        return pwd.getpwnam(user)
    except KeyError:
        core.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user])
        return pwd.getpwnam(user)


def smbstatus_json(state_dir: str) -> dict:
    """`smbstatus --json` of the lab smbd: sessions and tree connects with signing/encryption."""
    conf = SambaService(core.resolve_state_dir(state_dir)).conf
    result = core.run(["smbstatus", "-s", conf, "--json"])
    return json.loads(result.stdout)
