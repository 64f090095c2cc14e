"""Servers that die, links that drop and shares that fill up while a snapshot streams.

Each case, on the private fault lab (never the shared one):
1. a good snapshot is taken;
2. a second run is broken at one moment - start of the upload, its middle, the rename of the
   object, the sidecar write - by a real SIGKILL of the real server (smbd with its children, or
   ganesha), a real `ip link set down` of the NFS veth, or a real filler file that fills the share.
   The hook (tests/faults/conftest.py HookedTarget) only chooses the moment;
3. the run must end in one of our errors (a BackupError), not a raw library exception;
4. after the server is back: every snapshot listed as complete deep-verifies, the earlier one is
   byte for byte what it was, the broken one is not complete, the next run succeeds (taking over the
   dead run's lock once it expired), and prune with partial_grace 0 removes whatever `.partial`
   the broken run left behind.
"""

import os

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from tests.faults.conftest import (
    LabTarget,
    BIG_FILE_BYTES,
    HookedTarget,
    Trigger,
    deep_check_all,
    is_object_partial,
    is_sidecar_partial,
    prune_partials,
    sha256_file,
    snapshot_dir_files,
    snapshot_request,
    expire_lock,
)

# When to break the run: (event, relpath, bytes written so far) -> bool
MOMENTS = {
    "start": lambda event, relpath, count: event == "write" and is_object_partial(relpath) and count > 0,
    "middle": lambda event, relpath, count: (event == "write" and is_object_partial(relpath)
                                             and count >= BIG_FILE_BYTES // 2),
    "rename": lambda event, relpath, count: event == "rename" and is_object_partial(relpath),
    "sidecar": lambda event, relpath, count: event == "open_write" and is_sidecar_partial(relpath),
}


class Case:
    """One target of the fault lab with a good snapshot on it."""

    def __init__(self, target, request, identity_file):
        self.target = target
        self.request = request
        self.identity_file = identity_file
        with open_target(target.options) as client:
            self.good = take_snapshot(client, request)
        self.good_path = os.path.join(target.server_dir, self.good["object"])
        self.good_sha256 = sha256_file(self.good_path)

    def broken_run(self, moment, action):
        """The run broken by ``action`` at ``moment``; returns the error it ended in."""
        trigger = Trigger(MOMENTS[moment] if isinstance(moment, str) else moment, action)
        with pytest.raises(BackupError) as failure:
            client = open_target(self.target.options)
            try:
                take_snapshot(HookedTarget(client, trigger), self.request)
            finally:
                try:
                    client.close()
                except BackupError:
                    pass  # closing a connection to a dead server may fail; it must fail as ours
        print("broken at %s: %s: %s" % (moment, type(failure.value).__name__, failure.value))
        assert trigger.fired, "the fault was never injected; the run failed by itself: %s" % failure.value
        assert str(failure.value)
        return failure.value

    def assert_nothing_lost(self, expect_partial_left=None):
        """After the server is back: the checks of the module docstring, steps 4."""
        expire_lock(self.target.options, nfs=self.target.kind.startswith("nfs"))
        listing = deep_check_all(self.target.options, self.identity_file)
        complete = [r.id for r in listing.snapshots if r.complete]
        assert complete == [self.good["id"]], [(r.id, r.status) for r in listing.snapshots]
        assert sha256_file(self.good_path) == self.good_sha256
        partial_files = [n for n in snapshot_dir_files(self.target.server_dir) if self.good["id"] not in n]
        if expect_partial_left is not None:
            assert bool(partial_files) == expect_partial_left, partial_files

        with open_target(self.target.options) as client:
            following = take_snapshot(client, self.request)  # takes over the dead run's lock
        listing = deep_check_all(self.target.options, self.identity_file)
        assert sorted(r.id for r in listing.snapshots if r.complete) == sorted([self.good["id"], following["id"]])

        outcome = prune_partials(self.target.options)
        left = snapshot_dir_files(self.target.server_dir)
        assert not [n for n in left if n.endswith(".partial")], left
        assert {n.split("-")[1].split(".")[0] for n in left} == {self.good["id"], following["id"]}, left
        assert deep_check_all(self.target.options, self.identity_file).snapshots
        assert not os.path.exists(os.path.join(self.target.appliance_dir(), "lock"))
        return outcome


@pytest.fixture
def case(fault_lab, fault_appliance, age_identity):
    def make(kind, **request_args):
        """``kind``: a fault-lab target kind, or a LabTarget made by the test."""
        # No database here: killing the dump is tested in test_appliance_faults.py, and the 6 MiB file
        # gives the upload a middle. Keeps the ~40 snapshots of this file quick.
        request_args.setdefault("components", ("config", "secrets"))
        request = snapshot_request(fault_appliance, age_identity["recipient"], **request_args)
        target = fault_lab.target(kind) if isinstance(kind, str) else kind
        return Case(target, request, age_identity["identity_file"])
    return make


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_smbd_killed_mid_snapshot(fault_lab, case, moment):
    current = case("smb_signed")
    current.broken_run(moment, fault_lab.kill_samba)
    fault_lab.restart()
    outcome = current.assert_nothing_lost(expect_partial_left=True)
    assert outcome.plan.partials, "prune found no stale partial to remove"


# Over NFSv4.1 the lab's ganesha answers some operations "uncertain", in bursts after a restart;
# nfs-rs raises NfsUncertainOutcomeError for them, which the target retries or verifies (targets/nfs.py).
@pytest.mark.parametrize("moment,kind", [
    ("middle", "nfs_v3"),
    ("rename", "nfs_v3"),
    ("sidecar", "nfs_v41"),
    ("start", "nfs_v41"),
])
def test_ganesha_killed_mid_snapshot(fault_lab, case, moment, kind):
    current = case(kind)
    current.broken_run(moment, fault_lab.kill_ganesha)
    fault_lab.restart()
    outcome = current.assert_nothing_lost(expect_partial_left=True)
    assert outcome.plan.partials, "prune found no stale partial to remove"


def test_nfs_link_cut_mid_upload(fault_lab, case):
    current = case("nfs_v41")
    try:
        current.broken_run("middle", lambda: fault_lab.set_link(False))
    finally:
        fault_lab.set_link(True)
    current.assert_nothing_lost()


# ------------------------------------------------------------------------------------ full shares


def _fill(folder, name="filler.bin", limit=64 * 1024 * 1024):
    """Write a file into ``folder`` (behind the server) until its file system is full (bounded)."""
    path = os.path.join(folder, name)
    block = os.urandom(64 * 1024)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while written < limit:
            try:
                written += os.write(fd, block)
            except OSError:
                break
    finally:
        os.close(fd)
    assert written < limit, "the file system never filled up"
    return path


def _small_appliance(fault_appliance):
    """A 1 MiB incompressible config file: three snapshots of it fit the 3 MiB share, a filler does not."""
    with open(os.path.join(fault_appliance["root"], "fill-test.bin"), "wb") as handle:
        handle.write(os.urandom(1024 * 1024))
    return {"components": ("config",), "config_paths": ["fill-test.bin"]}


def _full_case(case, kind, fault_appliance, server_root):
    current = case(kind, **_small_appliance(fault_appliance))
    fillers = []
    error = current.broken_run(
        lambda event, relpath, count: event == "write" and is_object_partial(relpath) and count >= 256 * 1024,
        lambda: fillers.append(_fill(server_root)))
    assert "space" in str(error).lower() or "full" in str(error).lower(), error
    for path in fillers:
        os.unlink(path)
    current.assert_nothing_lost()


def test_smb_share_fills_up_mid_upload(fault_lab, case, fault_appliance):
    _full_case(case, "smb_full", fault_appliance, fault_lab.info["smb_dir_encrypted"])


def test_path_target_fills_up_mid_upload(case, fault_appliance, small_tmpfs):
    target = LabTarget("path", {"type": "path", "path": small_tmpfs}, small_tmpfs)
    _full_case(case, target, fault_appliance, small_tmpfs)
