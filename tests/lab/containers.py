# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Segura appliance look-alikes in podman containers, built without any registry.

    python -m tests.lab.containers build  [--state DIR] [--suite S]     build (or reuse) the images (bookworm|bullseye)
    python -m tests.lab.containers up     [--state DIR] [--count N] [--seed-size 20MB --seed 1]
    python -m tests.lab.containers down   [--state DIR]                 remove exactly the containers `up` made
    python -m tests.lab.containers status [--state DIR]                 exit 3 when not all are running
    python -m tests.lab.containers env    [--state DIR]                 JSON: per appliance host/port/user/key + inventory

Images (cached in podman's store, tagged with a hash of their recipe, so a changed recipe rebuilds):
  * localhost/segura-base:<hash>       debootstrap --variant=minbase bookworm from the machine's own apt
                                        mirror (read at run time from /etc/apt/sources*), `podman import`ed.
  * localhost/segura-appliance:<hash>  tests/lab/appliance_image/Containerfile on top of it: sshd on 59022,
                                        mt4adm (key login, passwordless sudo), MariaDB (root by unix socket,
                                        /etc/mysql/debian.cnf), age, zstd, cifs-utils, nfs-common, the Segura
                                        tree, an `orbit` CLI test double and a health endpoint test double.

Containers run systemd as PID 1 on podman's default bridge network, SSH published on 127.0.0.1.
Node 1 is the primary (galera.cnf wsrep_on=OFF, health double answers 200); the others are
contingency members (galera.cnf wsrep_on=ON, health double answers 203). The health double listens on
http://127.0.0.1:8080/flow/orbit/mntr inside each container.

Podman runs with tests/lab/containers.conf (CONTAINERS_CONF): runc, lower default ulimits, netavark.
State (SSH key pair, known_hosts, inventory, container IDs) lives in <state>/containers/.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from tests.lab import core, reference

HERE = os.path.dirname(os.path.abspath(__file__))
CONTAINERS_CONF = os.path.join(HERE, "containers.conf")
IMAGE_RECIPE_DIR = os.path.join(HERE, "appliance_image")

SUITE = "bookworm"
# The Debian releases Segura appliances run (12 and 11); images of another suite carry it in their name.
SUITES = ("bookworm", "bullseye")
BASE_INCLUDE = "python3,systemd,systemd-sysv,dbus,iproute2,procps,ca-certificates,netbase"
# Bump when the way the base image is made changes (the debootstrap arguments are hashed too).
BASE_RECIPE_VERSION = "1"
BASE_REPO = "localhost/segura-base"
APPLIANCE_REPO = "localhost/segura-appliance"
LABEL_RECIPE = "org.segura-backup.lab.recipe"
LABEL_STATE = "org.segura-backup.lab.state"

SSH_PORT = 59022
SSH_USER = "mt4adm"
DEFAULT_COUNT = 2
DEFAULT_PREFIX = "segura-appl"
PREFIX_ENV = "SEGURA_LAB_CONTAINER_PREFIX"
DEFAULT_PORT_BASE = 59100  # node N publishes SSH on 127.0.0.1:<base + N>
PORT_BASE_ENV = "SEGURA_LAB_CONTAINER_PORT_BASE"
HEALTH_URL = "http://127.0.0.1:8080/flow/orbit/mntr"  # as seen on the node itself

DEBOOTSTRAP_TIMEOUT = 900.0
BUILD_TIMEOUT = 900.0
BOOT_TIMEOUT = 90.0
BUILD_LOCK_DIR = os.path.join(tempfile.gettempdir(), "segura-lab-image-build")  # systemd + sshd + mariadb until `ssh ... true` works

GALERA_PRIMARY = ("# Segura lab appliance %s: primary, not in a Galera cluster (written by tests/lab/containers.py).\n"
                  "[galera]\nwsrep_on=OFF\n")
GALERA_CONTINGENCY = ("# Segura lab appliance %s: contingency member of a Galera cluster (written by\n"
                      "# tests/lab/containers.py). The lab runs no Galera: mariadb.conf.d/99-segura-lab.cnf\n"
                      "# turns wsrep off for mariadbd, so the cluster role reads this file only without a\n"
                      "# database connection; the fleet tells the nodes apart by the health endpoint.\n"
                      "[galera]\nwsrep_on=ON\nwsrep_provider=/usr/lib/galera/libgalera_smm.so\n"
                      "wsrep_cluster_name=\"segura-lab\"\nwsrep_node_name=\"%s\"\n")


# --- podman ---------------------------------------------------------------------------------


def podman_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["CONTAINERS_CONF"] = CONTAINERS_CONF
    return env


def podman(args: List[str], stdin_data: Optional[bytes] = None, timeout: float = 120.0,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run podman with the lab's containers.conf; on failure raise LabError with its stderr."""
    binary = core.require_binary("podman", "podman")
    result = subprocess.run([binary] + args, input=stdin_data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=podman_env(), timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise core.LabError("podman %s failed (exit %d): %s" % (
            " ".join(args[:3]), result.returncode, result.stderr.decode("utf-8", "replace").strip()[-2000:]))
    return result


def image_exists(ref: str) -> bool:
    return podman(["image", "exists", ref], check=False).returncode == 0


# --- the machine's apt mirror (never written into a project file) ---------------------------


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror the machine's apt uses for `suite` (deb822 .sources first, then sources.list)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path, encoding="utf-8") as handle:
            for stanza in re.split(r"\n\s*\n", handle.read()):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _sep, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
                if ("deb" in fields.get("types", []) and suite in fields.get("suites", [])
                        and fields.get("enabled", ["yes"])[0] != "no" and fields.get("uris")):
                    return fields["uris"][0]
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    raise core.LabError("no apt source for '%s' in /etc/apt/sources.list.d/*.sources or sources.list; "
                        "debootstrap needs a Debian mirror" % suite)


# --- images ---------------------------------------------------------------------------------


def _sha256(parts: List[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def base_recipe_hash(suite: str = SUITE) -> str:
    return _sha256([BASE_RECIPE_VERSION.encode(), b"minbase", suite.encode(), BASE_INCLUDE.encode()])


def appliance_recipe_hash(base_ref: str) -> str:
    parts = [base_ref.encode()]
    for name in sorted(os.listdir(IMAGE_RECIPE_DIR)):
        with open(os.path.join(IMAGE_RECIPE_DIR, name), "rb") as handle:
            parts += [name.encode(), handle.read()]
    return _sha256(parts)


def _repo(repo: str, suite: str) -> str:
    if suite not in SUITES:
        raise core.LabError("unknown Debian suite %r (one of %s)" % (suite, ", ".join(SUITES)))
    return repo if suite == SUITE else "%s-%s" % (repo, suite)


def base_image_ref(suite: str = SUITE) -> str:
    return "%s:%s" % (_repo(BASE_REPO, suite), base_recipe_hash(suite)[:16])


def appliance_image_ref(suite: str = SUITE) -> str:
    return "%s:%s" % (_repo(APPLIANCE_REPO, suite), appliance_recipe_hash(base_image_ref(suite))[:16])


def build_base(work_dir: str, suite: str = SUITE) -> dict:
    """debootstrap a minimal Debian `suite` and import it, unless the image for this recipe exists.

    Any suite comes from the mirror the machine's apt uses for bookworm (a Debian mirror carries them all).
    """
    ref = base_image_ref(suite)
    if image_exists(ref):
        return {"image": ref, "built": False, "seconds": 0.0}
    started = time.monotonic()
    debootstrap = core.require_binary("debootstrap", "debootstrap")
    rootfs = tempfile.mkdtemp(prefix="rootfs-", dir=work_dir)
    log_path = os.path.join(work_dir, "debootstrap-%s.log" % suite)
    try:
        with open(log_path, "wb") as log:
            result = subprocess.run(
                [debootstrap, "--variant=minbase", "--include=" + BASE_INCLUDE, suite, rootfs, apt_mirror()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT, check=False)
        if result.returncode != 0:
            raise core.LabError("debootstrap failed (exit %d); log %s:\n%s" % (
                result.returncode, log_path, core.log_tail(log_path)))
        # Stream the rootfs straight into podman (no tarball on disk).
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(
                [core.require_binary("podman", "podman"), "import", "--change", 'CMD ["/lib/systemd/systemd"]',
                 "--change", "LABEL %s=%s" % (LABEL_RECIPE, base_recipe_hash(suite)), "-", ref],
                stdin=tar.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=podman_env(), timeout=600,
                check=False)
        finally:
            tar.stdout.close()
            tar.wait(timeout=60)
        if imported.returncode != 0 or tar.returncode != 0:
            raise core.LabError("importing the base image failed (tar exit %s): %s" % (
                tar.returncode, imported.stderr.decode("utf-8", "replace").strip()[-2000:]))
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return {"image": ref, "built": True, "seconds": round(time.monotonic() - started, 1)}


def build_appliance(work_dir: str, suite: str = SUITE) -> dict:
    """podman build the appliance image on the base, unless the image for this recipe exists."""
    base = build_base(work_dir, suite)
    ref = appliance_image_ref(suite)
    if image_exists(ref):
        return {"image": ref, "built": False, "seconds": 0.0, "base": base}
    started = time.monotonic()
    log_path = os.path.join(work_dir, "build.log" if suite == SUITE else "build-%s.log" % suite)
    with open(log_path, "wb") as log:
        # --network=host: RUN steps reach the mirror the way the host does (no NAT involved).
        result = subprocess.run(
            [core.require_binary("podman", "podman"), "build", "--network=host", "--build-arg",
             "BASE=" + base["image"], "--label", "%s=%s" % (LABEL_RECIPE, appliance_recipe_hash(base["image"])),
             "-t", ref, "-f", os.path.join(IMAGE_RECIPE_DIR, "Containerfile"), IMAGE_RECIPE_DIR],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=podman_env(),
            timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        raise core.LabError("podman build failed (exit %d); log %s:\n%s" % (
            result.returncode, log_path, core.log_tail(log_path, 25)))
    return {"image": ref, "built": True, "seconds": round(time.monotonic() - started, 1), "base": base}


# --- the lab's appliances -------------------------------------------------------------------


class ApplianceContainers:
    """N appliance containers of one lab state folder; `down` removes only the IDs `up` recorded."""

    def __init__(self, state_dir: str, prefix: Optional[str] = None, port_base: Optional[int] = None):
        self.state_dir = os.path.abspath(state_dir)
        self.base = os.path.join(self.state_dir, "containers")
        self.key_path = os.path.join(self.base, "id_ed25519")
        self.known_hosts = os.path.join(self.base, "known_hosts")
        self.inventory_path = os.path.join(self.base, "inventory.ini")
        self.record_path = os.path.join(self.base, "containers.json")
        self.prefix = prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX
        self.port_base = port_base or int(os.environ.get(PORT_BASE_ENV) or DEFAULT_PORT_BASE)

    # --- building blocks ------------------------------------------------------------------

    def build(self, suite: str = SUITE) -> dict:
        core.ensure_dir(self.base)
        # One build at a time per machine: the image store is shared by every lab and checkout.
        with core.state_lock(BUILD_LOCK_DIR, timeout=BUILD_TIMEOUT):
            return build_appliance(self.base, suite)

    def ensure_key(self) -> str:
        """The lab's SSH key pair (ed25519, private half 0600); made once per state folder."""
        core.ensure_dir(self.base, 0o700)
        if not os.path.exists(self.key_path):
            core.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "segura-lab", "-f", self.key_path])
        os.chmod(self.key_path, 0o600)
        return self.key_path

    def ssh_argv(self, port: int) -> List[str]:
        return ["ssh", "-p", str(port), "-i", self.key_path, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "UserKnownHostsFile=" + self.known_hosts, "-o", "StrictHostKeyChecking=yes",
                "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR", "%s@127.0.0.1" % SSH_USER]

    def _nodes(self, count: int) -> List[dict]:
        nodes = []
        for number in range(1, count + 1):
            name = "%s-%d" % (self.prefix, number)
            nodes.append({"name": name, "port": self.port_base + number,
                          "role": "primary" if number == 1 else "contingency"})
        return nodes

    def _remove_leftover(self, name: str) -> None:
        """A container with our name from an earlier run of THIS state folder is ours to remove."""
        result = podman(["container", "inspect", "--format",
                         '{{.Id}} {{index .Config.Labels "%s"}}' % LABEL_STATE, name], check=False)
        if result.returncode != 0:
            return
        container_id, _sep, owner = result.stdout.decode().strip().partition(" ")
        if owner != self.state_dir:
            raise core.LabError("a container named %s exists and belongs to another lab (%s); set %s to use "
                                "other names" % (name, owner or "unknown", PREFIX_ENV))
        podman(["rm", "--force", "--time", "5", container_id], timeout=60)

    def _provision(self, node: dict, public_key: str) -> None:
        """Per-node identity: authorized key for mt4adm, cluster role files."""
        galera = GALERA_PRIMARY % node["name"] if node["role"] == "primary" else \
            GALERA_CONTINGENCY % (node["name"], node["name"])
        script = (
            "set -e\n"
            "install -m 0600 -o mt4adm -g mt4adm /dev/stdin /home/mt4adm/.ssh/authorized_keys <<'KEY'\n%s\nKEY\n"
            "cat > /etc/mysql/conf.d/galera.cnf <<'CNF'\n%sCNF\n"
            "echo %d > /etc/segura-lab/health_status\n"
            "echo %s > /etc/segura-lab/cluster_role\n"
        ) % (public_key.strip(), galera, 200 if node["role"] == "primary" else 203, node["role"])
        podman(["exec", "-i", node["id"], "sh", "-s"], stdin_data=script.encode())

    def _trust_host_key(self, nodes: List[dict]) -> None:
        """known_hosts from the keys each container made at boot (strict checking, no TOFU)."""
        lines = []
        for node in nodes:
            key = podman(["exec", node["id"], "cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.decode().split()
            lines.append("[127.0.0.1]:%d %s %s\n" % (node["port"], key[0], key[1]))
        with open(self.known_hosts, "w", encoding="utf-8") as handle:
            handle.writelines(lines)

    def _ssh_ok(self, port: int) -> bool:
        try:
            result = subprocess.run(self.ssh_argv(port) + ["true"], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def _host_key_ready(self, container_id: str) -> bool:
        return podman(["exec", container_id, "test", "-s", "/etc/ssh/ssh_host_ed25519_key.pub"],
                      check=False).returncode == 0

    # --- lifecycle ------------------------------------------------------------------------

    def up(self, count: int = DEFAULT_COUNT, seed_size: Optional[int] = None, seed_number: int = 1) -> dict:
        """Build (cached), start `count` appliances, wait until SSH works; returns env() plus timings."""
        timings = {}
        started = time.monotonic()
        build = self.build()
        timings["build"] = round(time.monotonic() - started, 1)
        public_key = open(self.ensure_key() + ".pub", encoding="utf-8").read()
        with core.state_lock(self.base):
            if self.status()["running"]:
                return self._env_with(timings)
            self._down_locked()
            begin = time.monotonic()
            nodes = self._nodes(count)
            record = {"image": build["image"], "containers": []}
            for node in nodes:
                self._remove_leftover(node["name"])
                result = podman([
                    "run", "--detach", "--name", node["name"], "--hostname", node["name"],
                    "--systemd=always", "--network=bridge", "--label", "%s=%s" % (LABEL_STATE, self.state_dir),
                    "--publish", "127.0.0.1:%d:%d" % (node["port"], SSH_PORT), build["image"],
                    "/lib/systemd/systemd"], timeout=120)
                node["id"] = result.stdout.decode().strip()
                record["containers"].append(node)
                core.write_json(self.record_path, record)  # recorded at once, so `down` finds partial starts
            for node in nodes:
                if not core.wait_for(lambda: self._host_key_ready(node["id"]), BOOT_TIMEOUT, interval=0.25):
                    raise core.LabError("%s made no SSH host key within %ds:\n%s" % (
                        node["name"], BOOT_TIMEOUT, self._journal_tail(node["id"])))
                self._provision(node, public_key)
            self._trust_host_key(nodes)
            for node in nodes:
                if not core.wait_for(lambda: self._ssh_ok(node["port"]), BOOT_TIMEOUT, interval=0.25):
                    raise core.LabError("ssh -p %d %s@127.0.0.1 did not work within %ds:\n%s" % (
                        node["port"], SSH_USER, BOOT_TIMEOUT, self._journal_tail(node["id"])))
            timings["start"] = round(time.monotonic() - begin, 1)
            self._write_inventory()
            if seed_size:
                begin = time.monotonic()
                for node in nodes:
                    seed(node["id"], seed_size, seed_number)
                timings["seed"] = round(time.monotonic() - begin, 1)
        return self._env_with(timings)

    def _journal_tail(self, container_id: str) -> str:
        result = podman(["exec", container_id, "journalctl", "--no-pager", "-n", "20"], check=False)
        return (result.stdout or result.stderr).decode("utf-8", "replace").strip()

    def down(self) -> List[str]:
        """Remove the containers recorded at `up` (by ID); returns the IDs removed."""
        with core.state_lock(self.base):
            return self._down_locked()

    def _down_locked(self) -> List[str]:
        record = core.read_json(self.record_path)
        removed = []
        for node in (record or {}).get("containers", []):
            if podman(["container", "exists", node["id"]], check=False).returncode == 0:
                podman(["rm", "--force", "--time", "10", node["id"]], timeout=60)
                removed.append(node["id"])
        if record is not None:
            os.unlink(self.record_path)
        return removed

    def status(self) -> dict:
        record = core.read_json(self.record_path) or {"containers": []}
        states = {}
        for node in record["containers"]:
            result = podman(["container", "inspect", "--format", "{{.State.Status}}", node["id"]], check=False)
            states[node["name"]] = result.stdout.decode().strip() if result.returncode == 0 else "absent"
        running = bool(states) and all(state == "running" for state in states.values())
        return {"running": running, "containers": states}

    # --- what tests and playbooks need ----------------------------------------------------

    def env(self) -> dict:
        return self._env_with(None)

    def _env_with(self, timings: Optional[dict]) -> dict:
        record = core.read_json(self.record_path) or {"containers": []}
        appliances = [{"name": node["name"], "id": node["id"], "host": "127.0.0.1", "port": node["port"],
                       "user": SSH_USER, "private_key": self.key_path, "known_hosts": self.known_hosts,
                       "cluster_role": node["role"], "health_url": HEALTH_URL} for node in record["containers"]]
        env = {"image": record.get("image"), "appliances": appliances, "inventory_path": self.inventory_path,
               "inventory": self.inventory_text(record["containers"])}
        if timings is not None:
            env["seconds"] = timings
        return env

    def inventory_text(self, nodes: List[dict]) -> str:
        lines = ["[segura_appliances]"]
        for node in nodes:
            lines.append("%s ansible_host=127.0.0.1 ansible_port=%d segura_lab_cluster_role=%s" % (
                node["name"], node["port"], node["role"]))
        lines += [
            "", "[segura_appliances:vars]", "ansible_user=%s" % SSH_USER,
            "ansible_ssh_private_key_file=%s" % self.key_path,
            "ansible_ssh_common_args='-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'"
            % self.known_hosts,
            "ansible_become=true", "ansible_python_interpreter=/usr/bin/python3", "",
        ]
        return "\n".join(lines)

    def _write_inventory(self) -> None:
        record = core.read_json(self.record_path) or {"containers": []}
        with open(self.inventory_path, "w", encoding="utf-8") as handle:
            handle.write(self.inventory_text(record["containers"]))


# --- reference data -------------------------------------------------------------------------


def seed(container: str, size: int, seed_number: int = 1) -> dict:
    """Fill a running appliance container with the reference appliance (tests/lab/reference.py).

    Files are generated on the host (deterministic for size + seed) and streamed in with tar, replacing
    the managed paths; the node's own galera.cnf (its cluster role) is put back afterwards. The databases
    mt4 + senhasegura are made by the same generator run inside the container against its MariaDB
    (root by unix socket), so no port or password is involved.
    """
    started = time.monotonic()
    role_galera = podman(["exec", container, "cat", "/etc/mysql/conf.d/galera.cnf"]).stdout
    with tempfile.TemporaryDirectory(prefix="segura-seed-") as root:
        files = reference.seed_files(root, size, seed_number)
        managed = " ".join("/" + path for path in reference.BACKED_UP_PATHS)
        podman(["exec", container, "sh", "-c", "rm -rf %s" % managed])
        _stream_tar_into(container, root, list(reference.BACKED_UP_PATHS))
    podman(["exec", "-i", container, "sh", "-c", "cat > /etc/mysql/conf.d/galera.cnf"], stdin_data=role_galera)
    databases = _run_reference(container, "seed_databases(CONN, %d, %d)" % (size, seed_number))
    return {"files": files, "databases": databases,
            "seconds": round(time.monotonic() - started, 1)}


def _stream_tar_into(container: str, root: str, members: List[str]) -> None:
    """tar members of root on the host | tar -x at / in the container (modes and mtimes kept)."""
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", root, "-c"] + members, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        extracted = subprocess.run(
            [core.require_binary("podman", "podman"), "exec", "-i", container, "tar", "--numeric-owner", "-C", "/",
             "-x"], stdin=tar.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=podman_env(), timeout=1800,
            check=False)
    finally:
        tar.stdout.close()
        tar_stderr = tar.stderr.read()
        tar.wait(timeout=60)
    if tar.returncode != 0 or extracted.returncode != 0:
        raise core.LabError("copying the seed into %s failed: %s" % (
            container, (tar_stderr + extracted.stderr).decode("utf-8", "replace").strip()[-2000:]))


def fingerprint(container: str, include_mtime: bool = False) -> dict:
    """reference.fingerprint of a container: its backed-up files and its mt4 + senhasegura databases."""
    return _run_reference(container, "{'files': fingerprint_files('/', %r), 'databases': fingerprint_databases(CONN)}"
                          % include_mtime)


def _run_reference(container: str, expression: str):
    """Evaluate an expression over tests/lab/reference.py inside the container (standard-library Python,
    so it runs where the database is: root through the unix socket, no port, no password)."""
    podman(["cp", reference.__file__, "%s:/usr/local/lib/segura-lab-reference.py" % container])
    script = ("import json, runpy\n"
              "ns = runpy.run_path('/usr/local/lib/segura-lab-reference.py')\n"
              "ns['CONN'] = {'socket': '/run/mysqld/mysqld.sock', 'user': 'root'}\n"
              "print(json.dumps(eval(%r, ns)))\n" % expression)
    result = podman(["exec", "-i", container, "python3", "-"], stdin_data=script.encode(), timeout=900)
    return json.loads(result.stdout.decode())


# --- command line ---------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.containers", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("command", choices=("build", "up", "down", "status", "env"))
    parser.add_argument("--state", help="lab state folder (default $SEGURA_LAB_STATE or <repo>/.lab)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="appliances to start (up)")
    parser.add_argument("--seed-size", type=reference.parse_size, help="seed reference data of this size (up)")
    parser.add_argument("--seed", type=int, default=1, help="reference seed number (with --seed-size)")
    parser.add_argument("--suite", choices=SUITES, default=SUITE, help="Debian release of the image (build)")
    options = parser.parse_args(argv)
    lab = ApplianceContainers(core.resolve_state_dir(options.state))
    return core.run_command(options.command, {
        "build": lambda: lab.build(options.suite),
        "up": lambda: lab.up(options.count, options.seed_size, options.seed),
        "down": lambda: {"removed": lab.down()},
        "status": lab.status,
        "env": lab.env,
    }, errors=(reference.ReferenceSeedError,))


if __name__ == "__main__":
    sys.exit(main())
