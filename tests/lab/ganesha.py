# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real NFS server (nfs-ganesha + rpcbind) inside a network namespace of the lab's own.

rpcbind insists on 0.0.0.0:111, so both daemons run in a network namespace reached over a veth pair
(host side HOST_ADDR, namespace side NFS_ADDR), each with a private /run bound to <state>/nfs/run
so nothing touches the machine's /run. The export `/backup` serves <state>/nfs/export over NFSv3 and
NFSv4.x with no root squash.
"""

from __future__ import annotations

import os
from typing import List, Optional

from tests.lab import core

# Defaults; SEGURA_LAB_NETNS and SEGURA_LAB_NET (first three octets) give a second lab its own.
DEFAULT_NETNS = "segura-lab"
DEFAULT_NET = "10.254.77"
NETNS_ENV = "SEGURA_LAB_NETNS"
NET_ENV = "SEGURA_LAB_NET"
PREFIX_LEN = 30  # .1 host side, .2 namespace side
NFS_PORT = 2049
MOUNT_PORT = 20048
RPCBIND_PORT = 111
EXPORT_PSEUDO = "/backup"


class GaneshaService(core.Service):
    name = "ganesha"

    def __init__(self, state_dir: str):
        super().__init__(state_dir)
        self.base = os.path.join(self.state_dir, "nfs")
        self.conf = os.path.join(self.base, "ganesha.conf")
        self.run_dir = os.path.join(self.base, "run")  # bound onto /run inside the namespace
        self.export_dir = os.path.join(self.base, "export")
        self.recovery_dir = os.path.join(self.base, "recovery")
        self.ganesha_pid_file = os.path.join(self.base, "ganesha.lab.pid")
        self.rpcbind_pid_file = os.path.join(self.base, "rpcbind.lab.pid")
        self.ganesha_log = os.path.join(self.base, "ganesha.log")
        self.rpcbind_log = os.path.join(self.base, "rpcbind.log")
        self.network_file = os.path.join(self.base, "network.json")
        self.network = self._network()

    # --- network namespace --------------------------------------------------------------

    def _network(self) -> dict:
        """The namespace this lab created (recorded), else the one it would create now."""
        recorded = core.read_json(self.network_file)
        if recorded:
            return recorded
        netns = os.environ.get(NETNS_ENV) or DEFAULT_NETNS
        net = os.environ.get(NET_ENV) or DEFAULT_NET
        # Interface names are limited to 15 characters; derive short ones from the namespace name.
        stem = netns.replace("segura-", "sg")[:11]
        return {
            "netns": netns,
            "host_if": stem + "-h",
            "ns_if": stem + "-n",
            "host_addr": net + ".1",
            "ns_addr": net + ".2",
        }

    def _netns_exists(self) -> bool:
        return os.path.exists(os.path.join("/var/run/netns", self.network["netns"]))

    def _netns_inode(self) -> Optional[int]:
        try:
            return os.stat(os.path.join("/var/run/netns", self.network["netns"])).st_ino
        except FileNotFoundError:
            return None

    def _link_exists(self, name: str, netns: Optional[str] = None) -> bool:
        argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
        return core.run(argv, check=False).returncode == 0

    def _ensure_network(self) -> None:
        net = self.network
        ns, host_if, ns_if = net["netns"], net["host_if"], net["ns_if"]
        if not self._netns_exists():
            core.run(["ip", "netns", "add", ns])
        core.write_json(self.network_file, net)  # from here on `down` knows what to delete
        if not self._link_exists(ns_if, ns):
            if not self._link_exists(host_if):
                core.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if])
            core.run(["ip", "link", "set", ns_if, "netns", ns])
        host_cidr = "%s/%d" % (net["host_addr"], PREFIX_LEN)
        ns_cidr = "%s/%d" % (net["ns_addr"], PREFIX_LEN)
        if host_cidr not in core.run(["ip", "-o", "addr", "show", "dev", host_if]).stdout:
            core.run(["ip", "addr", "add", host_cidr, "dev", host_if])
        if ns_cidr not in core.run(["ip", "-n", ns, "-o", "addr", "show", "dev", ns_if]).stdout:
            core.run(["ip", "-n", ns, "addr", "add", ns_cidr, "dev", ns_if])
        core.run(["ip", "link", "set", host_if, "up"])
        core.run(["ip", "-n", ns, "link", "set", ns_if, "up"])
        core.run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _remove_network(self) -> None:
        net = self.network
        if self._link_exists(net["host_if"]):
            core.run(["ip", "link", "del", net["host_if"]])  # takes its peer along
        if self._netns_exists():
            core.run(["ip", "netns", "del", net["netns"]])
        if os.path.exists(self.network_file):
            os.unlink(self.network_file)

    def _in_namespace(self, command: List[str]) -> List[str]:
        """argv that runs `command` in our namespace with a private /run.

        ip netns exec and unshare both exec without forking, and the shell execs the daemon, so the
        PID we spawn is the daemon's PID.
        """
        return [
            "ip", "netns", "exec", self.network["netns"],
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", 'mount --bind "$1" /run && shift && exec "$@"', "sh", self.run_dir,
        ] + command

    # --- processes ----------------------------------------------------------------------

    def _in_our_netns(self, pid: int) -> bool:
        inode = self._netns_inode()
        try:
            return inode is not None and os.stat("/proc/%d/ns/net" % pid).st_ino == inode
        except (FileNotFoundError, PermissionError):  # gone, or a process we may not inspect
            return False

    def _is_our(self, binary: str):
        def check(pid: int) -> bool:
            args = core.pid_cmdline(pid)
            return bool(args) and os.path.basename(args[0]) == binary and self._in_our_netns(pid)

        return check

    def _ganesha_pid(self) -> Optional[int]:
        return core.tracked_pid(self.ganesha_pid_file, self._is_our("ganesha.nfsd"))

    def _rpcbind_pid(self) -> Optional[int]:
        return core.tracked_pid(self.rpcbind_pid_file, self._is_our("rpcbind"))

    def _pids_in_netns(self) -> List[int]:
        """Every process living in our namespace (only what the lab started can be there)."""
        if self._netns_inode() is None:
            return []
        return [int(e) for e in os.listdir("/proc") if e.isdigit() and core.pid_alive(int(e))
                and self._in_our_netns(int(e))]

    def _render_conf(self) -> str:
        return """# Written by tests/lab/ganesha.py; regenerated on every `up`.
NFS_CORE_PARAM {
    Bind_addr = %(addr)s;
    NFS_Port = %(nfs_port)d;
    MNT_Port = %(mnt_port)d;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Mount_Path_Pseudo = true;
    Protocols = 3, 4;
}
NFSV4 {
    RecoveryBackend = fs;
    RecoveryRoot = "%(recovery)s";
    Graceless = true;
    Lease_Lifetime = 10;
}
NFS_KRB5 {
    Active_krb5 = false;
}
EXPORT {
    Export_Id = 1;
    Path = "%(export)s";
    Pseudo = "%(pseudo)s";
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3, 4;
    Transports = TCP;
    FSAL {
        Name = VFS;
    }
}
""" % {
            "addr": self.network["ns_addr"],
            "nfs_port": NFS_PORT,
            "mnt_port": MOUNT_PORT,
            "recovery": self.recovery_dir,
            "export": self.export_dir,
            "pseudo": EXPORT_PSEUDO,
        }

    def _ready(self) -> bool:
        addr = self.network["ns_addr"]
        return core.tcp_port_open(addr, NFS_PORT) and core.tcp_port_open(addr, RPCBIND_PORT)

    # --- Service ------------------------------------------------------------------------

    def up(self) -> dict:
        ganesha = core.require_binary("ganesha.nfsd", "nfs-ganesha nfs-ganesha-vfs")
        rpcbind = core.require_binary("rpcbind", "rpcbind")
        core.require_binary("ip", "iproute2")
        core.require_binary("unshare", "util-linux")
        if not os.path.exists("/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so") and not any(
            os.path.exists(os.path.join(d, "ganesha", "libfsalvfs.so")) for d in ("/usr/lib", "/usr/lib64")
        ):
            raise core.LabError("ganesha's VFS backend is missing: apt-get install nfs-ganesha-vfs")
        for folder in (self.base, self.run_dir, self.export_dir, self.recovery_dir):
            core.ensure_dir(folder)
        self._ensure_network()
        rpcbind_pid, ganesha_pid = self._rpcbind_pid(), self._ganesha_pid()
        if rpcbind_pid is not None and ganesha_pid is not None:
            if not core.wait_for(self._ready, core.READY_TIMEOUT):
                raise core.LabError("lab ganesha (pid %d) runs but does not answer" % ganesha_pid)
            return self.env()
        # Half a lab (one daemon died) is restarted whole: ganesha must register with a fresh rpcbind.
        for pid in (ganesha_pid, rpcbind_pid):
            if pid is not None:
                core.stop_pids([pid])
        core.stop_pids(self._pids_in_netns())
        with open(self.conf, "w", encoding="utf-8") as handle:
            handle.write(self._render_conf())
        os.chmod(self.export_dir, 0o777)  # clients write as root (no squash) or as any test uid
        addr = self.network["ns_addr"]

        process = core.spawn(self._in_namespace([rpcbind, "-f"]), self.rpcbind_log)
        core.write_pid_file(self.rpcbind_pid_file, process.pid)
        core.wait_ready("rpcbind on %s:%d" % (addr, RPCBIND_PORT),
                        lambda: core.tcp_port_open(addr, RPCBIND_PORT), process, self.rpcbind_log)

        process = core.spawn(
            self._in_namespace([
                ganesha, "-F", "-L", self.ganesha_log, "-f", self.conf,
                "-p", os.path.join(self.base, "ganesha.pid"), "-N", "NIV_EVENT",
            ]),
            self.ganesha_log + ".stdout",
        )
        core.write_pid_file(self.ganesha_pid_file, process.pid)
        core.wait_ready("ganesha.nfsd on %s:%d" % (addr, NFS_PORT), self._ready, process, self.ganesha_log)
        return self.env()

    def down(self) -> None:
        # ganesha first, alone: on exit it unregisters from rpcbind and waits ~3 s if rpcbind is gone.
        for pid in (self._ganesha_pid(), self._rpcbind_pid()):
            if pid is not None:
                core.stop_pids([pid])
        core.stop_pids(self._pids_in_netns())
        self._remove_network()
        for path in (self.ganesha_pid_file, self.rpcbind_pid_file, os.path.join(self.base, "ganesha.pid")):
            if os.path.exists(path):
                os.unlink(path)
        self.network = self._network()

    def status(self) -> dict:
        ganesha_pid, rpcbind_pid = self._ganesha_pid(), self._rpcbind_pid()
        running = ganesha_pid is not None and rpcbind_pid is not None and self._ready()
        return {
            "running": running,
            "ganesha_pid": ganesha_pid,
            "rpcbind_pid": rpcbind_pid,
            "netns": self.network["netns"] if self._netns_exists() else None,
        }

    def env(self) -> dict:
        return {
            "nfs_server": self.network["ns_addr"],
            "nfs_port": NFS_PORT,
            "nfs_export": EXPORT_PSEUDO,
            "nfs_dir": self.export_dir,
            "nfs_netns": self.network["netns"],
            "nfs_host_addr": self.network["host_addr"],
        }
