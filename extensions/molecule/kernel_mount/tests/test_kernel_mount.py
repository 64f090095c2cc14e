# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra checks of the kernel_mount scenario, in the VM (ssh://segura-vm, root through sudo) and, for
the snapshots, on this host's side of the lab's shares."""

import json
import os

import pytest

RUN = json.load(open(os.environ["SEGURA_MOLECULE_RUN"], encoding="utf-8"))
CREDENTIALS = "/etc/segura-backup/cifs-credentials"
MOUNTS = {  # mount point: (unit, file system type, an option the role asked for, host folder of the share)
    "/srv/backup_remoto": ("srv-backup_remoto.mount", "cifs", "seal", RUN["lab"]["smb_dir_encrypted"]),
    "/srv/backup_nfs": ("srv-backup_nfs.mount", "nfs4", "vers=4.1", RUN["lab"]["nfs_dir"]),
}


def lab_password():
    with open(RUN["lab"]["smb_password_file"], encoding="utf-8") as handle:
        return handle.read().rstrip("\n")


@pytest.mark.parametrize("mount_point", sorted(MOUNTS))
def test_share_is_mounted_by_its_enabled_unit(host, mount_point):
    unit, fstype, option, _folder = MOUNTS[mount_point]
    mounted = host.mount_point(mount_point)
    assert mounted.exists
    assert mounted.filesystem == fstype
    assert option in mounted.options, mounted.options
    assert host.service(unit).is_running
    assert host.service(unit).is_enabled


def test_cifs_credentials_file_is_root_only(host):
    credentials = host.file(CREDENTIALS)
    assert credentials.is_file
    assert (credentials.mode, credentials.user, credentials.group) == (0o600, "root", "root")


def test_no_password_in_fstab_unit_or_mount_table(host):
    password = lab_password()
    for text in (host.file("/etc/fstab").content_string,
                 host.file("/etc/systemd/system/srv-backup_remoto.mount").content_string,
                 host.check_output("findmnt -n -o OPTIONS /srv/backup_remoto")):
        if password in text:  # never through assert: pytest would print the password
            pytest.fail("the SMB password is in the fstab, the unit or the mount table", pytrace=False)
        assert "password" not in text.replace("credentials=", "")


@pytest.mark.parametrize("mount_point", sorted(MOUNTS))
def test_snapshot_landed_on_the_server_through_the_mount(mount_point):
    folder = os.path.join(MOUNTS[mount_point][3], RUN["share_folder"], "segura-vm", "snapshots")
    sidecars = [name for name in os.listdir(folder) if name.endswith(".json") and name.count(".") == 1] \
        if os.path.isdir(folder) else []
    assert len(sidecars) == 1, (folder, sidecars)
    with open(os.path.join(folder, sidecars[0]), encoding="utf-8") as handle:
        sidecar = json.load(handle)
    assert os.path.getsize(os.path.join(folder, sidecar["object"])) == sidecar["size"]
