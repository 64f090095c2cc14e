"""Integration fixtures: the lab of real servers (see tests/lab)."""

import json
import os
import subprocess
import sys

import pytest

from tests.lab import core


def lab_cli(*args, state_dir=None, env=None, check=True):
    """Run `python -m tests.lab ARGS` from the repository root and return the CompletedProcess."""
    argv = [sys.executable, "-m", "tests.lab"] + list(args)
    if state_dir:
        argv += ["--state", state_dir]
    result = subprocess.run(argv, cwd=core.REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=300, check=False)
    if check and result.returncode != 0:
        pytest.fail("lab %s failed (exit %d): %s" % (args[0], result.returncode, result.stderr))
    return result


@pytest.fixture(scope="session")
def lab():
    """The lab's endpoints (`python -m tests.lab env`), starting the lab if needed.

    A lab that was already up is left running. A lab this session started is stopped at the end,
    unless another test session still uses it or a person pinned it with `up`.
    """
    state_dir = core.resolve_state_dir()
    was_up = lab_cli("status", state_dir=state_dir, check=False).returncode == 0
    lease = core.take_lease(state_dir)
    try:
        lab_cli("up", "--no-pin", state_dir=state_dir)
        yield json.loads(lab_cli("env", state_dir=state_dir).stdout)
    finally:
        remaining = core.release_lease(state_dir, lease)
        if not was_up and remaining == 0 and not os.environ.get("SEGURA_LAB_KEEP"):
            lab_cli("down", state_dir=state_dir, check=False)


# --------------------------------------------------------------------------------------------------
# Fixtures of the snapshot module's integration tests (test_snapshot_*.py).

import contextlib  # noqa: E402
import hashlib  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import uuid  # noqa: E402

from tests.lab import reference  # noqa: E402

APPLIANCE_NAME = "ref-appliance"
SNAPSHOT_TARGET_KINDS = ["smb_signed", "smb_encrypted", "nfs_v3", "nfs_v41", "path"]


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def free_tcp_port():
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def source_mariadb(tmp_path_factory):
    """A private MariaDB server for the reference appliance's databases, on a free port.

    Not the lab's server: other sessions reseed mt4/senhasegura there, and a reseed during a dump
    failed a snapshot with "Table definition has changed" (seen on this machine).
    """
    from tests.lab.mariadb import PORT_ENV, MariaDBService

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PORT_ENV, str(free_tcp_port()))
        service = MariaDBService(str(tmp_path_factory.mktemp("source-mariadb")))
    service.up()
    try:
        yield service
    finally:
        service.down()


@pytest.fixture(scope="session")
def reference_appliance(lab, source_mariadb, tmp_path_factory):
    """A ~20 MB reference appliance (seed 1) in a temporary root, its databases in `source_mariadb`.

    Yields {root, defaults_file, mysql_port, name, fingerprint}. Tests must not change this root:
    use `appliance_copy` for that.
    """
    root = str(tmp_path_factory.mktemp("reference-appliance"))
    conn = {"defaults_file": source_mariadb.defaults_file}
    reference.seed(root, reference.parse_size("20MB"), 1, conn)
    yield {"root": root, "defaults_file": source_mariadb.defaults_file, "mysql_port": source_mariadb.port,
           "name": APPLIANCE_NAME, "fingerprint": reference.fingerprint(root, conn)}


@pytest.fixture
def appliance_copy(reference_appliance, tmp_path):
    """A private copy of the reference appliance's files (same databases), free to change."""
    root = str(tmp_path / "appliance")
    shutil.copytree(reference_appliance["root"], root, symlinks=True)
    return dict(reference_appliance, root=root)


@pytest.fixture(scope="session")
def age_identity(tmp_path_factory):
    """An age X25519 key pair made by `age-keygen`: {identity_file, recipient, secret}."""
    folder = tmp_path_factory.mktemp("age-key")
    os.chmod(str(folder), 0o700)
    identity_file = str(folder / "key.txt")
    subprocess.run(["age-keygen", "-o", identity_file], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=30)
    recipient = subprocess.run(["age-keygen", "-y", identity_file], check=True, stdout=subprocess.PIPE,
                               text=True, timeout=30).stdout.strip()
    with open(identity_file, encoding="utf-8") as handle:
        secret = [line.strip() for line in handle if line.startswith("AGE-SECRET-KEY-")][0]
    assert recipient.startswith("age1")
    return {"identity_file": identity_file, "recipient": recipient, "secret": secret}


class LabTarget:
    """One target of the lab under a fresh sub-path: the module's `target` option and the folder
    behind the server (`server_dir`) where tests read what the module wrote."""

    def __init__(self, kind, options, server_dir):
        self.kind = kind
        self.options = options
        self.server_dir = server_dir

    def appliance_dir(self, appliance=APPLIANCE_NAME):
        return os.path.join(self.server_dir, appliance)

    def listing(self, folder_times=False):
        """{relative path: (size, mtime_ns, sha256)} of every file behind the server, dirs as None.

        With ``folder_times`` (what check mode is held to) every folder is (mode, mtime_ns), and the base folder
        itself is the entry "." (None when it does not exist): a file written and removed again, or a folder
        made, changes a folder's mtime even when no file is left behind.
        """
        result = {}
        if folder_times:
            result["."] = self._folder_state(self.server_dir) if os.path.isdir(self.server_dir) else None
        if not os.path.isdir(self.server_dir):
            return result
        for folder, dirs, files in os.walk(self.server_dir):
            for name in dirs:
                path = os.path.join(folder, name)
                result[os.path.relpath(path, self.server_dir) + "/"] = self._folder_state(path) if folder_times else None
            for name in files:
                path = os.path.join(folder, name)
                info = os.stat(path)
                result[os.path.relpath(path, self.server_dir)] = (info.st_size, info.st_mtime_ns, sha256_file(path))
        return result

    @staticmethod
    def _folder_state(path):
        info = os.stat(path)
        return (info.st_mode, info.st_mtime_ns)

    def snapshot_files(self, appliance=APPLIANCE_NAME):
        folder = os.path.join(self.appliance_dir(appliance), "snapshots")
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def make_lab_target(kind, lab, local_dir, subdir=None):
    """The `target` option of one lab target kind, rooted at a fresh sub-path."""
    subdir = subdir or "test-%s" % uuid.uuid4().hex[:12]
    if kind == "path":
        os.makedirs(local_dir, exist_ok=True)
        return LabTarget(kind, {"type": "path", "path": local_dir}, local_dir)
    if kind.startswith("smb"):
        encrypted = kind == "smb_encrypted"
        options = {
            "type": "smb", "server": lab["smb_server"], "port": int(lab["smb_port"]),
            "share": lab["smb_share_encrypted"] if encrypted else lab["smb_share_signed"],
            "path": subdir, "username": lab["smb_username"], "password": lab["smb_password"],
            "encrypt": encrypted, "timeout": 15,
        }
        return LabTarget(kind, options, os.path.join(lab["smb_dir_encrypted" if encrypted else "smb_dir_signed"], subdir))
    options = {"type": "nfs", "server": lab["nfs_server"], "export": lab["nfs_export"], "path": subdir,
               "version": "3" if kind == "nfs_v3" else "4.1", "timeout": 15}
    return LabTarget(kind, options, os.path.join(lab["nfs_dir"], subdir))


def _remove_lab_target(target):
    """Clean up a test's sub-path: behind smbd directly; NFS through a client (never behind ganesha)."""
    if target.kind == "path" or target.kind.startswith("smb"):
        shutil.rmtree(target.server_dir, ignore_errors=True)
        return
    from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target

    base = dict(target.options, path="")
    try:
        with open_target(base) as client:
            def remove_tree(relpath):
                for entry in client.listdir(relpath):
                    child = relpath + "/" + entry.name
                    if entry.is_dir:
                        remove_tree(child)
                        client.rmdir(child)
                    else:
                        client.remove(child)
            remove_tree(target.options["path"])
            client.rmdir(target.options["path"])
    except Exception:  # best effort: a leftover folder with a random name harms nobody
        pass


@pytest.fixture
def lab_target_factory(lab, tmp_path):
    """make(kind) -> LabTarget on a fresh sub-path; every sub-path is removed after the test."""
    made = []

    def make(kind, subdir=None):
        target = make_lab_target(kind, lab, str(tmp_path / ("target-%d" % len(made))), subdir)
        made.append(target)
        return target

    yield make
    for target in made:
        _remove_lab_target(target)


@pytest.fixture(params=SNAPSHOT_TARGET_KINDS)
def lab_target(request, lab_target_factory):
    """Each of the five targets (smb signed, smb encrypted, nfs v3, nfs v4.1, path), on a fresh sub-path."""
    return lab_target_factory(request.param)


def snapshot_args(appliance, target, encryption, components=("database", "config", "secrets"), **extra):
    """Arguments of segura.backup.snapshot for the (reference) appliance dict and a LabTarget."""
    args = {
        "target": target.options if isinstance(target, LabTarget) else target,
        "encryption": encryption,
        "components": list(components),
        "appliance": {"name": appliance.get("name", APPLIANCE_NAME), "root": appliance["root"]},  # + config_paths
        # These tests are about the dump path (its faults, its by-hand recovery); the physical method has
        # its own tests (tests/integration/test_database_methods.py).
        "database": {"defaults_file": appliance["defaults_file"], "method": "logical"},
    }
    if appliance.get("config_paths") is not None:
        args["appliance"]["config_paths"] = list(appliance["config_paths"])
    args.update(extra)
    return args


def age_prelude_sha256(path):
    """The sha256 of an age file's header (through its MAC line) and 16-byte payload nonce, from the file
    itself: what a sidecar since 0.3 records as encryption.prelude_sha256."""
    with open(path, "rb") as handle:
        head = handle.read(64 * 1024)
    end = head.index(b"\n---") + 1
    end = head.index(b"\n", end) + 1 + 16
    return hashlib.sha256(head[:end]).hexdigest()


def trust_args(appliance, *names):
    """The ``trust`` option of verify (or restore) pinning the key below the appliance's root for ``names``."""
    return {"signers": reference.signers_text(appliance["root"], *(names or (appliance.get("name", APPLIANCE_NAME),)))}


def appliance_trust(appliance, *names, allow_unsigned=False):
    """The engine's trust of a restore or verify: the key below the appliance's root, pinned for ``names``."""
    from ansible_collections.segura.backup.plugins.module_utils._engine.signing import Signers, TrustPolicy

    text = reference.signers_text(appliance["root"], *(names or (appliance.get("name", APPLIANCE_NAME),)))
    return TrustPolicy(Signers.parse(text, "the test appliance's key"), allow_unsigned)
