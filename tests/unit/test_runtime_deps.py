"""Where a Python package of the runtime cannot exist (nfs-rs below Python 3.11, Debian 11), the refusal
names the alternative; the SMB fast paths are fenced by smbprotocol's version. The real runs: the molecule
scenario bullseye (Debian 11) and tests/integration/test_smb_fences.py (the lab's Samba)."""

import sys

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import deps
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import nfs, smb


def test_below_python_3_11_nfs_is_refused_naming_the_kernel_mount_and_a_path_target(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 9, 2, "final", 0))
    message = deps.nfs_unavailable()
    assert "Python 3.11 or later and this is Python 3.9" in message
    assert "segura.backup.mount" in message and "'path' target" in message


def test_on_python_3_11_a_missing_nfs_rs_is_named_with_the_alternative(monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 11, 2, "final", 0))
    message = deps.nfs_unavailable()
    assert "'nfs-rs' is required" in message and "segura.backup.mount" in message


def test_missing_reports_nfs_rs_with_its_reason(monkeypatch):
    real_import = deps.importlib.import_module

    def no_nfs_rs(name):
        if name == "nfs_rs":
            raise ImportError("No module named 'nfs_rs'")
        return real_import(name)

    monkeypatch.setattr(deps.importlib, "import_module", no_nfs_rs)
    monkeypatch.setattr(sys, "version_info", (3, 9, 2, "final", 0))
    (only,) = deps.missing(["zstandard", "nfs_rs"])
    assert only.startswith("nfs-rs: NFS targets through nfs-rs need Python 3.11")


def test_an_nfs_target_without_nfs_rs_says_what_to_do_instead(monkeypatch):
    monkeypatch.setattr(nfs, "HAS_NFS_RS", False)
    monkeypatch.setattr(sys, "version_info", (3, 9, 2, "final", 0))
    with pytest.raises(ConfigError, match="segura.backup.mount"):
        nfs.NfsTarget(server="192.0.2.1", export="/backup")


@pytest.mark.parametrize("version, allowed", [
    ((1, 16, 0), False), ((1, 16, 1), True), ((1, 17, 0), True), ((1, 17, 9), True), ((1, 18, 0), False), ((2, 0, 0), False), ((), False),
])
def test_smb_fast_paths_only_with_a_tested_smbprotocol(monkeypatch, version, allowed):
    monkeypatch.setattr(smb, "_smbprotocol_version", lambda: version)
    assert smb.fast_paths_allowed() is allowed
    if not allowed:
        assert smb._CompoundPuts.usable() is False
