# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra checks of the default scenario, on each appliance container (hosts podman://NAME) and, for
the snapshots, on this host's side of the lab's shares (the folders smbd and ganesha serve)."""

import json
import os
import sys

import pytest

RUN = json.load(open(os.environ["SEGURA_MOLECULE_RUN"], encoding="utf-8"))
sys.path.insert(0, os.path.join(RUN["repo"], ".build", "collections"))

# The engine itself checks the snapshots from this host's side of the shares (noqa: the path is set above).
from ansible_collections.segura.backup.plugins.module_utils._engine import catalog  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.signing import Signers, TrustPolicy  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.verification import verify_snapshot  # noqa: E402

PRIMARY = "molecule-segura-primary"
CALENDAR = "*-*-* 03:15:00"  # schedule_on_calendar in molecule.yml
VENV_PYTHON = "/opt/segura-backup/venv/bin/python"
SHARE_FOLDERS = {"smb": RUN["lab"]["smb_dir_encrypted"], "nfs": RUN["lab"]["nfs_dir"]}


def name_of(host):
    return host.backend.name


def test_timer_enabled_with_the_inventory_calendar(host):
    timer = host.service("segura-backup.timer")
    assert timer.is_enabled
    assert timer.is_running
    shown = host.check_output("systemctl show segura-backup.timer -p TimersCalendar")
    assert "OnCalendar=%s " % CALENDAR in shown, shown


def test_job_config_with_the_share_password_is_root_only(host):
    config = host.file("/etc/segura-backup/segura-backup.json")
    assert config.is_file
    assert (config.mode, config.user, config.group) == (0o600, "root", "root")
    folder = host.file("/etc/segura-backup")
    assert (folder.mode, folder.user) == (0o700, "root")


def test_runtime_venv_imports_the_engine_dependencies(host):
    imported = host.run("%s -c 'import smbclient, nfs_rs, zstandard, cryptography, jmespath'" % VENV_PYTHON)
    assert imported.rc == 0, imported.stderr
    # pyrage is a test dependency (requirements-dev.txt), not part of the appliance's runtime
    assert host.run("%s -c 'import pyrage'" % VENV_PYTHON).rc != 0
    # nothing installed globally: the system python has none of them
    assert host.run("python3 -c 'import zstandard'").rc != 0


def sidecars(kind, appliance):
    """(sidecar, object size on disk) of each snapshot of the appliance in this run's share folder."""
    folder = os.path.join(SHARE_FOLDERS[kind], RUN["share_folder"], appliance, "snapshots")
    if not os.path.isdir(folder):
        return []
    found = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json") and name.count(".") == 1:
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                sidecar = json.load(handle)
            object_path = os.path.join(folder, sidecar["object"])
            found.append((sidecar, os.path.getsize(object_path) if os.path.exists(object_path) else None))
    return found


def deep_verify(host, kind, appliance):
    """Complete means restorable: signed by the key the appliance holds, decrypted with the run's age identity,
    every member's sha256 and the database stream checked - not only an object of the sidecar's size."""
    public = " ".join(host.file("/etc/segura-backup/signing_key.pub").content_string.split()[:2])
    pinned = Signers.parse('%s namespaces="segura-backup" %s\n' % (appliance, public), "the appliance's key")
    with PathTarget(os.path.join(SHARE_FOLDERS[kind], RUN["share_folder"])) as target:
        listing = catalog.list_snapshots(target, appliance)
        complete = [record for record in listing.snapshots if record.complete]
        assert listing.complete and complete, listing.errors
        for record in complete:
            result = verify_snapshot(target, record, "deep", Decryption.identity_file(RUN["identity_file"]),
                                     trust=TrustPolicy(pinned, False))
            assert result.ok, (record.id, result.problems)
    return len(complete)


@pytest.mark.parametrize("kind", ["smb", "nfs"])
def test_primary_has_a_complete_snapshot_and_contingency_none(host, kind):
    appliance = name_of(host)
    found = sidecars(kind, appliance)
    if appliance == PRIMARY:
        assert found, "no snapshot of %s in %s/%s" % (appliance, SHARE_FOLDERS[kind], RUN["share_folder"])
        for sidecar, size in found:
            assert sidecar["appliance"] == appliance
            assert size == sidecar["size"], (sidecar["object"], size, sidecar["size"])
        assert deep_verify(host, kind, appliance) == len(found)
    else:
        assert found == []
        assert not os.path.exists(os.path.join(SHARE_FOLDERS[kind], RUN["share_folder"], appliance))
