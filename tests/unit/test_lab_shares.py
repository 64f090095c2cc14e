"""Where the lab's SMB shares live: somewhere smbd's share user can reach, from a clone in any folder.

smbd serves the shares as user `backup`; a clone below a 0700 home (root's is) made `make demo` fail after
~80 s with "permission denied on \\\\127.0.0.1\\backup_encrypted". These tests use real folders and the real
account (no smbd needed): the share root of a state folder below a 0700 folder is one `backup` can pass
through, and the traversal check names the folder that stops it.
"""

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from tests.lab import samba


@pytest.fixture
def account():
    try:
        return pwd.getpwnam(samba.SMB_USER)
    except KeyError:
        pytest.skip("no %s account on this machine" % samba.SMB_USER)


@pytest.fixture
def base():
    """A 0755 folder in /tmp (pytest's own tmp_path sits below a 0700 folder, which would hide the point)."""
    folder = tempfile.mkdtemp(prefix="lab-shares-", dir="/tmp")
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _backup_can_enter(path):
    """Ask the kernel, as user backup (setpriv), whether it can pass through to path."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    result = subprocess.run(["setpriv", "--reuid", samba.SMB_USER, "--regid", samba.SMB_USER, "--init-groups",
                             "test", "-x", os.path.dirname(path)], check=False)
    return result.returncode == 0


def test_a_state_folder_below_a_0700_home_puts_the_shares_where_backup_can_pass(base, account):
    home = os.path.join(base, "home")
    os.mkdir(home, 0o700)
    os.chmod(home, 0o700)
    root = samba._shares_root(os.path.join(home, "clone", ".lab"))  # pylint: disable=protected-access
    assert root.startswith("/var/tmp/segura-lab-shares-"), root
    share = os.path.join(root, samba.ENCRYPTED_SHARE)
    try:
        samba._make_passable(share)  # pylint: disable=protected-access
        assert samba.blocking_folder(share, account) is None
        assert _backup_can_enter(share) in (True, None)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # the same clone in a folder others can pass through keeps its shares below its state folder
    os.chmod(home, 0o755)
    state = os.path.join(home, "clone", ".lab")
    assert samba._shares_root(state) == os.path.join(state, "shares")  # pylint: disable=protected-access


def test_the_traversal_check_names_the_folder_that_stops_backup(base, account):
    home = os.path.join(base, "home")
    share = os.path.join(home, "clone", ".lab", "shares", samba.SIGNED_SHARE)
    os.makedirs(share)
    os.chmod(home, 0o700)
    assert samba.blocking_folder(share, account) == home
    assert _backup_can_enter(share) in (False, None)  # the kernel agrees
    os.chmod(home, 0o711)
    assert samba.blocking_folder(share, account) is None
    assert _backup_can_enter(share) in (True, None)


def test_folders_the_lab_makes_are_passable_under_umask_077(base):
    made = os.path.join(base, "a", "b", "c")
    old = os.umask(0o077)
    try:
        samba._make_passable(made)  # pylint: disable=protected-access
    finally:
        os.umask(old)
    for folder in (os.path.join(base, "a"), os.path.join(base, "a", "b"), made):
        assert os.stat(folder).st_mode & 0o777 == 0o755


def test_the_lab_prepares_shares_backup_can_write_from_a_clone_in_a_0700_home(base, account):
    """SambaService's own preparation (config, folders, passdb; no smbd started, no port taken) for a state
    folder below a 0700 home: the config's share paths are ones user backup can write into."""
    if not shutil.which("smbpasswd") or os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root, samba-common-bin and setpriv (the lab's own needs)")
    home = os.path.join(base, "home")
    os.mkdir(home, 0o700)
    os.chmod(home, 0o700)
    service = samba.SambaService(os.path.join(home, "clone", ".lab"))
    try:
        service._prepare(44555)  # pylint: disable=protected-access
        with open(service.conf, encoding="utf-8") as handle:
            conf = handle.read()
        for share, folder in service.share_dirs.items():
            assert "path = %s" % folder in conf, share
            assert not folder.startswith(home), folder
            probe = os.path.join(folder, "probe")
            result = subprocess.run(["setpriv", "--reuid", samba.SMB_USER, "--regid", samba.SMB_USER,
                                     "--init-groups", "touch", probe], check=False)
            assert result.returncode == 0, "user backup cannot write into %s" % folder
    finally:
        shutil.rmtree(os.path.dirname(service.share_dirs[samba.SIGNED_SHARE]), ignore_errors=True)
