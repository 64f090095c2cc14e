# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab pieces the molecule scenarios need, run with the project's .venv python.

    segura_lab.py prepare SCENARIO        lab up? image built + tagged, wheels, age key, run file
    segura_lab.py prepare-vm SCENARIO     the same without the container image (the VM scenario)
    segura_lab.py prepare-bullseye SCENARIO   the same on the Debian 11 image, wheels for its Python 3.9
    segura_lab.py node CONTAINER ROLE     cluster identity (primary|contingency) + reference data
    segura_lab.py fingerprint CONTAINER   reference fingerprint (files + databases) as JSON on stdout
    segura_lab.py remember CONTAINER SCENARIO   save that fingerprint as <run folder>/fingerprint-before.json
    segura_lab.py cleanup SCENARIO        remove this run's folder from the lab's SMB share and NFS export
    segura_lab.py vm-up SCENARIO          boot the scenario's own qemu VM (tests/lab/vm.py); JSON env
    segura_lab.py vm-down SCENARIO        stop exactly that VM

Everything a run needs is written to <repo>/.build/molecule/<scenario>/run.json (no secret in it: the
SMB password stays in the lab's 0600 password file). Each `prepare` picks a new folder name inside the
shares, so the snapshots a check finds were made by this run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, REPO)

from tests.lab import containers, core  # noqa: E402  (needs the repository on sys.path)
from tests.lab import wheels as lab_wheels  # noqa: E402

# The tag every scenario's molecule.yml names; `prepare` points it at the image of the current recipe.
MOLECULE_IMAGE = "localhost/segura-appliance:molecule"
# The same for the Debian 11 image (extensions/molecule/bullseye), and that release's Python.
MOLECULE_IMAGE_BULLSEYE = "localhost/segura-appliance-bullseye:molecule"
BULLSEYE_PYTHON = "3.9.2"
SEED_SIZE = 3_000_000  # bytes of reference files per appliance: small, the scenarios check behaviour


def run_dir(scenario: str) -> str:
    return core.ensure_dir(os.path.join(REPO, ".build", "molecule", scenario), 0o700)


def run_file(scenario: str) -> str:
    return os.path.join(run_dir(scenario), "run.json")


def fingerprint_file(scenario: str) -> str:
    return os.path.join(run_dir(scenario), "fingerprint-before.json")


def lab_env() -> dict:
    """The running lab's endpoints (python -m tests.lab env), or a LabError saying how to start it."""
    status = subprocess.run([sys.executable, "-m", "tests.lab", "status"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=120, check=False)
    if status.returncode != 0:
        raise core.LabError("the lab (smbd, ganesha, MariaDB) is not running: start it with `make lab-up` "
                            "(scripts/molecule.sh does that for you)")
    result = subprocess.run([sys.executable, "-m", "tests.lab", "env"], cwd=REPO, stdout=subprocess.PIPE,
                            timeout=120, check=True)
    env = json.loads(result.stdout)
    env.pop("smb_password", None)  # the run file holds no secret; playbooks read smb_password_file
    return env


def wheels(python: str = "") -> str:
    """The runtime's wheels, built on the host once per requirements.txt (containers lack the host's pip CA).

    ``python`` empty: for the host's own Python, at the CI pins (constraints/runtime-lock.txt). Else binary
    wheels for that CPython version (Debian 11's 3.9.2), newest within the ranges, environment markers
    evaluated for it (tests/lab/wheels.py).
    """
    folder = os.path.join(REPO, ".build", "molecule", "wheels" + ("-py" + python if python else ""))
    requirements = os.path.join(REPO, "requirements.txt")
    lock = os.path.join(REPO, "constraints", "runtime-lock.txt")
    stamp = os.path.join(folder, ".requirements")
    with open(requirements, encoding="utf-8") as handle:
        wanted = handle.read()
    if not python:
        with open(lock, encoding="utf-8") as handle:
            wanted += handle.read()
    if os.path.exists(stamp) and open(stamp, encoding="utf-8").read() == wanted:
        return folder
    core.ensure_dir(folder)
    if python:
        lab_wheels.download(lab_wheels.requirement_lines(requirements), python, folder)
    else:
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-r",
                                requirements, "-c", lock, "-w", folder], timeout=600, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, check=False)
        if built.returncode != 0:
            raise core.LabError("pip wheel -r requirements.txt failed: %s" % built.stderr.decode()[-2000:])
    with open(stamp, "w", encoding="utf-8") as handle:
        handle.write(wanted)
    return folder


def age_identity(scenario: str) -> dict:
    identity = os.path.join(run_dir(scenario), "age-key.txt")
    if not os.path.exists(identity):
        subprocess.run(["age-keygen", "-o", identity], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
    os.chmod(identity, 0o600)
    recipient = subprocess.run(["age-keygen", "-y", identity], check=True, stdout=subprocess.PIPE, text=True,
                               timeout=30).stdout.strip()
    return {"identity_file": identity, "recipient": recipient}


def prepare(scenario: str, image: bool = True, suite: str = containers.SUITE) -> dict:
    lab = lab_env()
    bullseye = suite == "bullseye"
    info = {"scenario": scenario, "repo": REPO, "lab": lab, "wheels_dir": wheels(BULLSEYE_PYTHON if bullseye else ""),
            "share_folder": "molecule-%s-%s" % (scenario, uuid.uuid4().hex[:8])}
    if image:
        built = containers.ApplianceContainers(core.resolve_state_dir()).build(suite)
        containers.podman(["tag", built["image"], MOLECULE_IMAGE_BULLSEYE if bullseye else MOLECULE_IMAGE])
        info.update(image=built["image"], image_built=built["built"])
    info.update(age_identity(scenario))
    core.write_json(run_file(scenario), info)
    return info


def node(container: str, role: str) -> dict:
    """What tests/lab/containers.py gives node N at `up`: galera.cnf, health answer, cluster_role; then seed."""
    galera = (containers.GALERA_PRIMARY % container if role == "primary"
              else containers.GALERA_CONTINGENCY % (container, container))
    script = ("set -e\ncat > /etc/mysql/conf.d/galera.cnf <<'CNF'\n%sCNF\n"
              "echo %d > /etc/segura-lab/health_status\necho %s > /etc/segura-lab/cluster_role\n"
              ) % (galera, 200 if role == "primary" else 203, role)
    # The container was just started: systemd brings MariaDB up on its own time.
    if not core.wait_for(lambda: containers.podman(["exec", container, "test", "-S", "/run/mysqld/mysqld.sock"],
                                                   check=False).returncode == 0, 120, interval=0.5):
        raise core.LabError("MariaDB in %s did not start within 120 s" % container)
    containers.podman(["exec", "-i", container, "sh", "-s"], stdin_data=script.encode())
    seeded = containers.seed(container, SEED_SIZE)
    return {"container": container, "role": role, "seed_seconds": seeded["seconds"]}


def cleanup(scenario: str) -> dict:
    """Remove this run's folder: behind smbd directly, and through an NFS client (never behind ganesha)."""
    info = core.read_json(run_file(scenario))
    if not info:
        return {"removed": []}
    lab, folder = info["lab"], info["share_folder"]
    removed = []
    smb_copy = os.path.join(lab["smb_dir_encrypted"], folder)
    if os.path.isdir(smb_copy):
        subprocess.run(["rm", "-rf", "--one-file-system", smb_copy], check=True, timeout=120)
        removed.append(smb_copy)
    if os.path.isdir(os.path.join(lab["nfs_dir"], folder)):  # looked at from here, removed through ganesha
        sys.path.insert(0, os.path.join(REPO, ".build", "collections"))
        from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target

        with open_target({"type": "nfs", "server": lab["nfs_server"], "export": lab["nfs_export"], "path": "",
                          "version": "3", "timeout": 15}) as client:
            _remove_tree(client, folder)
        removed.append("nfs:%s" % folder)
    return {"removed": removed}


def _remove_tree(client, relpath: str) -> None:
    for entry in client.listdir(relpath):
        child = relpath + "/" + entry.name
        if entry.is_dir:
            _remove_tree(client, child)
        else:
            client.remove(child)
    client.rmdir(relpath)


def vm(scenario: str):
    from tests.lab.vm import KernelVM

    # The scenario's own state folder: its own key, known_hosts and qemu PID, apart from the pytest VM.
    return KernelVM(os.path.join(run_dir(scenario), "state"))


def vm_up(scenario: str) -> dict:
    machine = vm(scenario)
    # A boot under emulation on a loaded machine hangs now and then (tests/integration/test_kernel_mount_vm.py).
    for attempt in (1, 2):
        try:
            env = machine.up()
            break
        except core.LabError as exc:
            if attempt == 2:
                raise
            print("the VM did not come up, booting once more: %s" % exc, file=sys.stderr)
    ssh_config = os.path.join(run_dir(scenario), "ssh_config")
    # For testinfra's ssh backend: the VM's host key checked strictly, commands ride on vm.py's master.
    with open(ssh_config, "w", encoding="utf-8") as handle:
        handle.write("Host segura-vm\n  HostName 127.0.0.1\n  Port %d\n  User %s\n  IdentityFile %s\n"
                     "  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n"
                     "  ControlPath %s\n  ControlMaster no\n  BatchMode yes\n" % (
                         env["port"], env["user"], env["private_key"], env["known_hosts"], machine.control_path))
    env["ssh_config"] = ssh_config
    return env


ARITY = {"prepare": 1, "prepare-vm": 1, "prepare-bullseye": 1, "node": 2, "fingerprint": 1, "remember": 2, "cleanup": 1, "vm-up": 1, "vm-down": 1}


def main(argv) -> int:
    if not argv or ARITY.get(argv[0]) != len(argv) - 1:
        print(__doc__, file=sys.stderr)
        return 2
    command = argv[0]
    try:
        if command == "prepare":
            result = prepare(argv[1])
        elif command == "prepare-vm":
            result = prepare(argv[1], image=False)
        elif command == "prepare-bullseye":
            result = prepare(argv[1], suite="bullseye")
        elif command == "node":
            result = node(argv[1], argv[2])
        elif command == "fingerprint":
            result = containers.fingerprint(argv[1])
        elif command == "remember":
            core.write_json(fingerprint_file(argv[2]), containers.fingerprint(argv[1]))
            result = {"saved": fingerprint_file(argv[2])}
        elif command == "cleanup":
            result = cleanup(argv[1])
        elif command == "vm-up":
            result = vm_up(argv[1])
        else:
            result = {"stopped_pid": vm(argv[1]).down()}
    except core.LabError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
