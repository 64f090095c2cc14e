# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Debian bookworm VM under qemu software emulation, where kernel CIFS and NFS mounts work.

    python -m tests.lab.vm build  [--state DIR]          build (or reuse) the image for the current recipe
    python -m tests.lab.vm up     [--state DIR]          build, boot, wait until SSH works (bounded)
    python -m tests.lab.vm down   [--state DIR]          stop the qemu that `up` started, by its PID
    python -m tests.lab.vm status [--state DIR]          exit 3 when not running
    python -m tests.lab.vm env    [--state DIR]          JSON: host/port/user/key/known_hosts/inventory
    python -m tests.lab.vm ssh    [--state DIR] -- CMD   run CMD in the VM as mt4adm (sudo works)

This machine has no kernel CIFS/NFS client and /dev/kvm cannot boot a stock kernel, so the VM runs under
TCG (slow: ~1 min to boot, ~1 s per SSH command). Inside it the host is 10.0.2.2 (qemu user-mode
networking): guest connections to 10.0.2.2 reach the host's 127.0.0.1 (the lab smbd), and guest
connections to other addresses are made by qemu from the host (the lab ganesha at 10.254.77.2).

Image (machine-wide cache, $SEGURA_LAB_VM_CACHE or /var/tmp/segura-lab-vm/<recipe hash>/):
  debootstrap --variant=minbase bookworm (the base packages of tests/lab/containers.py plus a kernel,
  openssh-server, cifs-utils, nfs-common, sudo) from the machine's own apt mirror (read at run time),
  then tests/lab/vm_image/rootfs/ copied in and tests/lab/vm_image/customize.sh run in a chroot, then
  `mkfs.ext4 -d`. vmlinuz and initrd come from the same rootfs, so the kernel matches its modules.
  The hash covers the package list and every file under tests/lab/vm_image/: a changed recipe rebuilds.
  qemu opens the image with snapshot=on: every boot starts from the built image, nothing is kept.

State (<state>/vm/): the SSH key pair (private half 0600), known_hosts (the image's host key, strict
checking), qemu.pid, console.log (serial console), vm.json (port, image). The public key reaches the
guest on the kernel command line (segura_lab_key=<base64>), so one image serves every state folder.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from tests.lab import containers, core

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE_DIR = os.path.join(HERE, "vm_image")
OVERLAY_DIR = os.path.join(RECIPE_DIR, "rootfs")
CUSTOMIZE_SCRIPT = os.path.join(RECIPE_DIR, "customize.sh")

SUITE = containers.SUITE
VM_INCLUDE = containers.BASE_INCLUDE + (
    ",udev,kmod,initramfs-tools,linux-image-amd64,openssh-server,cifs-utils,nfs-common,sudo,python3-venv")
# Bump when the way the image is made changes in vm.py itself (recipe files are hashed anyway).
RECIPE_VERSION = "1"
IMAGE_SIZE_HEADROOM = 768 * 1024 * 1024  # free space in the root file system beyond the rootfs
CACHE_ENV = "SEGURA_LAB_VM_CACHE"
DEFAULT_CACHE = "/var/tmp/segura-lab-vm"
PORT_ENV = "SEGURA_LAB_VM_SSH_PORT"  # host port forwarded to the guest's sshd (default: a free one)
BOOT_TIMEOUT_ENV = "SEGURA_LAB_VM_BOOT_TIMEOUT"

SSH_USER = "mt4adm"
HOST_FROM_GUEST = "10.0.2.2"  # qemu user-mode networking: the host (its 127.0.0.1)
MEMORY_MB = 1024
CPUS = 2
DEBOOTSTRAP_TIMEOUT = 1200.0
BOOT_TIMEOUT = 300.0  # ~2 min measured on a busy 2-core machine (load 8), ~50 s on a quiet one
SSH_COMMAND_TIMEOUT = 120.0


# --- image ------------------------------------------------------------------------------


def recipe_files() -> List[str]:
    """Every file of the recipe folder, relative and sorted (what the hash and the build use)."""
    found = []
    for folder, _dirs, names in os.walk(RECIPE_DIR):
        for name in names:
            found.append(os.path.relpath(os.path.join(folder, name), RECIPE_DIR))
    return sorted(found)


def recipe_hash() -> str:
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, SUITE, "minbase", VM_INCLUDE):
        digest.update(hashlib.sha256(part.encode()).digest())
    for name in recipe_files():
        path = os.path.join(RECIPE_DIR, name)
        with open(path, "rb") as handle:
            body = handle.read()
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        digest.update(hashlib.sha256(name.encode() + b"\0" + executable + body).digest())
    return digest.hexdigest()


def cache_root() -> str:
    return os.path.abspath(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def image_dir() -> str:
    return os.path.join(cache_root(), recipe_hash()[:16])


def image_paths(folder: str) -> Dict[str, str]:
    return {
        "disk": os.path.join(folder, "rootfs.ext4"),
        "kernel": os.path.join(folder, "vmlinuz"),
        "initrd": os.path.join(folder, "initrd.img"),
        "host_key": os.path.join(folder, "ssh_host_ed25519_key.pub"),
        "build": os.path.join(folder, "build.json"),
    }


def _copy_overlay(rootfs: str) -> None:
    """Copy vm_image/rootfs/ into the rootfs as root-owned files, 0755 if executable else 0644."""
    for name in recipe_files():
        if not name.startswith("rootfs" + os.sep):
            continue
        source = os.path.join(RECIPE_DIR, name)
        target = os.path.join(rootfs, os.path.relpath(source, OVERLAY_DIR))
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if os.path.islink(target) or os.path.exists(target):
            os.unlink(target)
        shutil.copyfile(source, target)
        os.chown(target, 0, 0)
        os.chmod(target, 0o755 if os.access(source, os.X_OK) else 0o644)


def _run_logged(argv: List[str], log_path: str, timeout: float, what: str) -> None:
    with open(log_path, "ab") as log:
        log.write(("\n$ %s\n" % " ".join(argv)).encode())
        log.flush()
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout, check=False)
    if result.returncode != 0:
        raise core.LabError("%s failed (exit %d); log %s:\n%s" % (what, result.returncode, log_path,
                                                                  core.log_tail(log_path, 25)))


def _single(pattern_dir: str, prefix: str) -> str:
    """The one file in pattern_dir whose name starts with prefix (vmlinuz-*, initrd.img-*)."""
    names = sorted(n for n in os.listdir(pattern_dir) if n.startswith(prefix) and not n.endswith(".bak"))
    if len(names) != 1:
        raise core.LabError("expected one %s* in %s, found %s" % (prefix, pattern_dir, names))
    return os.path.join(pattern_dir, names[0])


def build_image() -> dict:
    """Build the image for the current recipe unless the cache holds it; returns paths and timing."""
    folder = image_dir()
    paths = image_paths(folder)
    if os.path.exists(paths["build"]):
        return dict(core.read_json(paths["build"]) or {}, built=False, seconds=0.0, **paths)
    core.ensure_dir(cache_root())
    # One build per machine at a time; the lock folder is the cache itself (shared by every checkout).
    with core.state_lock(cache_root(), timeout=DEBOOTSTRAP_TIMEOUT + 300):
        if os.path.exists(paths["build"]):  # someone else built it while we waited
            return dict(core.read_json(paths["build"]) or {}, built=False, seconds=0.0, **paths)
        return _build_locked(folder, paths)


def _build_locked(folder: str, paths: Dict[str, str]) -> dict:
    started = time.monotonic()
    timings = {}
    work = tempfile.mkdtemp(prefix="build-", dir=cache_root())
    rootfs = os.path.join(work, "rootfs")
    log_path = os.path.join(work, "build.log")
    try:
        begin = time.monotonic()
        # --cache-dir keeps the .debs: a changed recipe rebuilds without downloading them again.
        _run_logged([core.require_binary("debootstrap", "debootstrap"), "--variant=minbase",
                     "--cache-dir=" + core.ensure_dir(os.path.join(cache_root(), "debs")),
                     "--include=" + VM_INCLUDE, SUITE, rootfs, containers.apt_mirror(SUITE)],
                    log_path, DEBOOTSTRAP_TIMEOUT, "debootstrap")
        timings["debootstrap"] = round(time.monotonic() - begin, 1)

        begin = time.monotonic()
        _copy_overlay(rootfs)
        shutil.copyfile(CUSTOMIZE_SCRIPT, os.path.join(rootfs, "segura-lab-customize.sh"))
        # A private mount namespace: the /proc mount vanishes with it, even if the script fails.
        _run_logged(["unshare", "--mount", "--propagation", "private", "--fork", "chroot", rootfs, "/bin/sh", "-c",
                     "mount -t proc proc /proc && sh /segura-lab-customize.sh"],
                    log_path, 600, "customizing the rootfs (vm_image/customize.sh)")
        os.unlink(os.path.join(rootfs, "segura-lab-customize.sh"))
        shutil.rmtree(os.path.join(rootfs, "var", "cache", "apt", "archives"), ignore_errors=True)
        os.makedirs(os.path.join(rootfs, "var", "cache", "apt", "archives", "partial"), exist_ok=True)
        timings["customize"] = round(time.monotonic() - begin, 1)

        begin = time.monotonic()
        stage = os.path.join(work, "image")
        os.makedirs(stage)
        staged = image_paths(stage)
        boot = os.path.join(rootfs, "boot")
        shutil.copyfile(_single(boot, "vmlinuz-"), staged["kernel"])
        shutil.copyfile(_single(boot, "initrd.img-"), staged["initrd"])
        shutil.copyfile(os.path.join(rootfs, "etc", "ssh", "ssh_host_ed25519_key.pub"), staged["host_key"])
        kernel_release = os.path.basename(_single(boot, "vmlinuz-"))[len("vmlinuz-"):]
        size = _tree_bytes(rootfs) + IMAGE_SIZE_HEADROOM
        size -= size % (1024 * 1024)
        _run_logged([core.require_binary("mkfs.ext4", "e2fsprogs"), "-q", "-F", "-L", "segura-vm", "-d", rootfs,
                     staged["disk"], "%dK" % (size // 1024)], log_path, 600, "mkfs.ext4 -d")
        timings["mkfs"] = round(time.monotonic() - begin, 1)
        timings["total"] = round(time.monotonic() - started, 1)
        record = {"recipe": recipe_hash(), "kernel_release": kernel_release, "disk_bytes": size,
                  "build_seconds": timings}
        core.write_json(staged["build"], record)
        shutil.copyfile(log_path, os.path.join(stage, "build.log"))
        if os.path.exists(folder):
            shutil.rmtree(folder)  # a half-written folder from a crashed build (no build.json)
        os.rename(stage, folder)  # build.json inside: the cache entry appears complete or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _remove_other_builds(os.path.basename(folder))
    return dict(record, built=True, seconds=timings["total"], **paths)


def _remove_other_builds(keep: str) -> None:
    """Images of older recipes (~0.8 GB each) go; a qemu still running one keeps its open file."""
    for name in os.listdir(cache_root()):
        if name != keep and len(name) == 16 and all(c in "0123456789abcdef" for c in name):
            shutil.rmtree(os.path.join(cache_root(), name), ignore_errors=True)


def _tree_bytes(root: str) -> int:
    total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                total += os.lstat(path).st_blocks * 512
    return total


# --- the VM -------------------------------------------------------------------------------


def console_tail(path: str, lines: int = 20) -> str:
    """The end of the serial console log without systemd's colour codes and status spinner lines."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", core.log_tail(path, 200))
    kept = [line for line in text.splitlines() if line.strip() and "] Job " not in line]
    return "\n".join(kept[-lines:])


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class KernelVM:
    """One qemu VM per lab state folder; `down` stops exactly the qemu PID that `up` recorded."""

    def __init__(self, state_dir: str):
        self.state_dir = os.path.abspath(state_dir)
        self.base = os.path.join(self.state_dir, "vm")
        self.key_path = os.path.join(self.base, "id_ed25519")
        self.known_hosts = os.path.join(self.base, "known_hosts")
        self.pid_file = os.path.join(self.base, "qemu.pid")
        self.console_log = os.path.join(self.base, "console.log")
        self.qemu_log = os.path.join(self.base, "qemu.log")
        self.record_path = os.path.join(self.base, "vm.json")
        self.inventory_path = os.path.join(self.base, "inventory.ini")
        self.master_pid_file = os.path.join(self.base, "ssh-master.pid")
        self.master_log = os.path.join(self.base, "ssh-master.log")
        self.last_ssh_error = ""
        # A unix socket path must stay under ~100 bytes, so it lives in /tmp, named after the state folder.
        self.control_path = os.path.join(tempfile.gettempdir(), "segura-vm-%s.sock" % hashlib.sha256(
            self.state_dir.encode()).hexdigest()[:12])

    # --- building blocks ------------------------------------------------------------------

    def build(self) -> dict:
        return build_image()

    def ensure_key(self) -> str:
        """The VM's SSH key pair (ed25519, private half 0600); made once per state folder."""
        core.ensure_dir(self.base, 0o700)
        if not os.path.exists(self.key_path):
            core.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "segura-lab-vm", "-f", self.key_path])
        os.chmod(self.key_path, 0o600)
        return self.key_path

    def _is_our_qemu(self, pid: int) -> bool:
        args = core.pid_cmdline(pid)
        return bool(args) and os.path.basename(args[0]).startswith("qemu-system") and \
            ("file:" + self.console_log) in args

    def _running_pid(self) -> Optional[int]:
        return core.tracked_pid(self.pid_file, self._is_our_qemu)

    def _is_our_master(self, pid: int) -> bool:
        args = core.pid_cmdline(pid)
        return bool(args) and os.path.basename(args[0]) == "ssh" and "-M" in args and \
            ("ControlPath=" + self.control_path) in args

    def _master_pid(self) -> Optional[int]:
        return core.tracked_pid(self.master_pid_file, self._is_our_master)

    def qemu_argv(self, image: dict, port: int) -> List[str]:
        public_key = open(self.key_path + ".pub", encoding="utf-8").read().strip()
        encoded_key = base64.b64encode(public_key.encode()).decode()
        # loglevel=4: kernel chatter on an emulated serial port costs boot time; warnings and systemd's
        # unit status lines (what tells why a boot hangs) still reach the console log.
        append = "root=/dev/vda rw console=ttyS0 loglevel=4 panic=-1 segura_lab_key=%s" % encoded_key
        return [
            core.require_binary("qemu-system-x86_64", "qemu-system-x86"),
            # -nodefaults: no VGA, CD-ROM, floppy or parallel port (fewer drivers to load at boot).
            # Not `-cpu max,svm=off`: with it systemd's mounts and sandboxed units failed (measured);
            # the image blacklists the kvm modules instead.
            "-name", "segura-lab-vm", "-nodefaults", "-accel", "tcg,thread=multi", "-cpu", "max",
            "-m", str(MEMORY_MB), "-smp", str(CPUS),
            "-kernel", image["kernel"], "-initrd", image["initrd"], "-append", append,
            # snapshot=on: writes go to a temporary overlay, the cached image never changes.
            "-drive", "file=%s,format=raw,if=virtio,snapshot=on" % image["disk"],
            "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:%d-:22" % port,
            "-device", "virtio-net-pci,netdev=net0",
            "-display", "none", "-monitor", "none", "-serial", "file:" + self.console_log,
            "-no-reboot",  # a guest panic or reboot ends qemu, so `up` fails fast instead of looping
        ]

    def ssh_argv(self, port: Optional[int] = None, master: bool = False) -> List[str]:
        """ssh to the VM. Commands ride on the master connection that `up` opened (a handshake and
        login cost seconds under emulation); without it they connect directly."""
        port = port or self._record().get("port")
        role = ["-M", "-N", "-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=4"] if master else ["-o", "ControlMaster=no"]
        return ["ssh"] + role + [
            "-o", "ControlPath=" + self.control_path, "-p", str(port), "-i", self.key_path,
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=" + self.known_hosts,
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            "%s@127.0.0.1" % SSH_USER]

    def _record(self) -> dict:
        return core.read_json(self.record_path) or {}

    def _ssh_ok(self, port: int) -> bool:
        try:
            result = subprocess.run(self.ssh_argv(port) + ["true"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            self.last_ssh_error = "ssh timed out after 30 s"
            return False
        self.last_ssh_error = result.stderr.decode("utf-8", "replace").strip()[-500:]
        return result.returncode == 0

    # --- lifecycle ------------------------------------------------------------------------

    def up(self) -> dict:
        """Build (cached), boot, wait until `ssh true` works; returns env() plus timings."""
        timings = {}
        begin = time.monotonic()
        image = self.build()
        timings["build"] = round(time.monotonic() - begin, 1)
        self.ensure_key()
        with core.state_lock(self.base, timeout=BOOT_TIMEOUT + 60):
            if self._running_pid() is not None:
                if self._master_pid() is None:
                    self._start_master(self._record()["port"])
                return self._env_with(timings)
            port = int(os.environ.get(PORT_ENV) or free_tcp_port())
            if core.tcp_port_open("127.0.0.1", port):
                raise core.LabError("port %d is taken (%s); set %s to a free port" % (
                    port, core.listeners_on("127.0.0.1", port), PORT_ENV))
            host_key = open(image["host_key"], encoding="utf-8").read().split()
            with open(self.known_hosts, "w", encoding="utf-8") as handle:
                handle.write("[127.0.0.1]:%d %s %s\n" % (port, host_key[0], host_key[1]))
            for path in (self.console_log, self.qemu_log):
                if os.path.exists(path):
                    os.unlink(path)
            begin = time.monotonic()
            process = core.spawn(self.qemu_argv(image, port), self.qemu_log)
            core.write_pid_file(self.pid_file, process.pid)
            core.write_json(self.record_path, {"port": port, "pid": process.pid, "image": os.path.dirname(image["disk"]),
                                               "kernel_release": image.get("kernel_release")})
            timeout = float(os.environ.get(BOOT_TIMEOUT_ENV) or BOOT_TIMEOUT)
            try:
                self._wait_for_ssh(port, process, timeout)
                timings["boot"] = round(time.monotonic() - begin, 1)
                self._start_master(port)
            except core.LabError as exc:
                qemu_said = core.log_tail(self.qemu_log, 5)
                self._down_locked()
                raise core.LabError("%s\nqemu: %s" % (exc, qemu_said))
            self._write_inventory()
        return self._env_with(timings)

    def _wait_for_ssh(self, port: int, process: subprocess.Popen, timeout: float) -> None:
        """Poll `ssh true` once a second (each try is a process; the machine is shared) until it works,
        qemu exits, or the timeout passes."""
        def ready_or_dead() -> bool:
            return process.poll() is not None or self._ssh_ok(port)

        if not core.wait_for(ready_or_dead, timeout, interval=1.0):
            raise core.LabError("the VM's sshd on 127.0.0.1:%d did not answer within %ds (last ssh error: %s); "
                                "console %s:\n%s" % (port, timeout, self.last_ssh_error or "none", self.console_log,
                                                     console_tail(self.console_log)))
        if process.poll() is not None:
            raise core.LabError("qemu exited with code %s during boot; console %s:\n%s" % (
                process.returncode, self.console_log, console_tail(self.console_log)))

    def _start_master(self, port: int) -> None:
        """Open the shared SSH connection (its own process, tracked by PID like qemu)."""
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)  # left by a master that was killed
        process = core.spawn(self.ssh_argv(port, master=True), self.master_log)
        core.write_pid_file(self.master_pid_file, process.pid)
        core.wait_ready("the SSH master connection to the VM", lambda: os.path.exists(self.control_path), process,
                        self.master_log, timeout=60)

    def down(self) -> Optional[int]:
        """Stop the qemu recorded at `up` (SIGTERM, then SIGKILL); returns its PID or None."""
        core.ensure_dir(self.base, 0o700)
        with core.state_lock(self.base, timeout=BOOT_TIMEOUT + 60):
            return self._down_locked()

    def _down_locked(self) -> Optional[int]:
        master = self._master_pid()
        if master is not None:
            core.stop_pids([master])
        pid = self._running_pid()
        if pid is not None:
            core.stop_pids([pid])
        for path in (self.master_pid_file, self.control_path, self.pid_file, self.record_path):
            if os.path.exists(path):
                os.unlink(path)
        return pid

    def status(self) -> dict:
        pid = self._running_pid()
        record = self._record()
        return {"running": pid is not None, "pid": pid, "port": record.get("port") if pid else None,
                "ssh_master_pid": self._master_pid(), "ssh_ok": bool(pid) and self._ssh_ok(record["port"])}

    # --- using it -------------------------------------------------------------------------

    def run(self, command: str, stdin_data: Optional[bytes] = None, check: bool = True,
            timeout: float = SSH_COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        """Run a shell command in the VM as mt4adm (prefix `sudo` for root); stdin may carry a secret."""
        result = subprocess.run(self.ssh_argv() + [command], input=stdin_data if stdin_data is not None else b"",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise core.LabError("in the VM, `%s` failed (exit %d): %s" % (
                command, result.returncode, result.stderr.decode("utf-8", "replace").strip()[-2000:]))
        return result

    def put_file(self, remote_path: str, data: bytes, mode: str = "0600") -> None:
        """Write data to remote_path as root, created private (umask 077) before any byte lands."""
        self.run("sudo sh -c 'umask 077 && cat > \"$1\" && chmod %s \"$1\"' sh '%s'" % (mode, remote_path),
                 stdin_data=data)

    def env(self) -> dict:
        return self._env_with(None)

    def _env_with(self, timings: Optional[dict]) -> dict:
        record = self._record()
        env = {"host": "127.0.0.1", "port": record.get("port"), "user": SSH_USER, "private_key": self.key_path,
               "known_hosts": self.known_hosts, "host_from_guest": HOST_FROM_GUEST,
               "kernel_release": record.get("kernel_release"), "image": record.get("image") or image_dir(),
               "console_log": self.console_log, "inventory_path": self.inventory_path,
               "inventory": self.inventory_text(record.get("port"))}
        if timings is not None:
            env["seconds"] = timings
        return env

    def inventory_text(self, port: Optional[int]) -> str:
        return "\n".join([
            "[segura_vm]",
            "segura-vm ansible_host=127.0.0.1 ansible_port=%s" % port,
            "",
            "[segura_vm:vars]",
            "ansible_user=%s" % SSH_USER,
            "ansible_ssh_private_key_file=%s" % self.key_path,
            "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'"
            % self.known_hosts,
            "ansible_become=true", "ansible_python_interpreter=/usr/bin/python3", "",
        ])

    def _write_inventory(self) -> None:
        with open(self.inventory_path, "w", encoding="utf-8") as handle:
            handle.write(self.inventory_text(self._record().get("port")))


# --- command line ---------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.vm", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("command", choices=("build", "up", "down", "status", "env", "ssh"))
    parser.add_argument("--state", help="lab state folder (default $SEGURA_LAB_STATE or <repo>/.lab)")
    parser.add_argument("remote", nargs=argparse.REMAINDER, help="ssh: the command to run in the VM (after --)")
    options = parser.parse_args(argv)
    machine = KernelVM(core.resolve_state_dir(options.state))
    if options.command == "ssh":
        if machine._running_pid() is None:
            print("error: the VM is not running: python -m tests.lab.vm up", file=sys.stderr)
            return 1
        remote = options.remote[1:] if options.remote[:1] == ["--"] else options.remote
        os.execvp("ssh", machine.ssh_argv() + remote)
    return core.run_command(options.command, {
        "build": machine.build,
        "up": machine.up,
        "down": lambda: {"stopped_pid": machine.down()},
        "status": machine.status,
        "env": machine.env,
    })


if __name__ == "__main__":
    sys.exit(main())
