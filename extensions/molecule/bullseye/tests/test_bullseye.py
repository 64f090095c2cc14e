# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra checks of the bullseye scenario (podman://molecule-segura-bullseye): the runtime on Debian 11's
Python 3.9 holds the ranges' packages (no nfs-rs, no pyrage), the timer is on, the snapshot reached the SMB share, and after
the loss of both databases and the restore the appliance has the fingerprint it had before the backup."""

import json
import os
import sys

RUN = json.load(open(os.environ["SEGURA_MOLECULE_RUN"], encoding="utf-8"))
sys.path.insert(0, RUN["repo"])

from tests.lab import containers  # noqa: E402  (the repository's lab helpers)

VENV_PYTHON = "/opt/segura-backup/venv/bin/python"


def test_the_appliance_is_debian_11_with_python_3_9(host):
    assert host.system_info.distribution == "debian" and host.system_info.release.split(".")[0] == "11"
    assert host.check_output("%s -c 'import sys; print(sys.version_info[:2])'" % VENV_PYTHON) == "(3, 9)"


def test_runtime_has_the_ranges_packages_for_python_3_9(host):
    script = ("import importlib.metadata as m\n"
              "for name in ('smbprotocol', 'pyspnego', 'cryptography', 'zstandard', 'jmespath'):\n"
              "    print(name, m.version(name))\n")
    versions = dict(line.split() for line in host.check_output("%s -c %s" % (VENV_PYTHON, _quote(script))).splitlines())
    assert versions["smbprotocol"].startswith("1.16."), versions  # 1.17 needs Python 3.10
    imported = host.run("%s -c 'import smbclient, zstandard, cryptography, jmespath'" % VENV_PYTHON)
    assert imported.rc == 0, imported.stderr
    for absent in ("nfs_rs", "pyrage"):  # no build for 3.9; a test tool only
        assert host.run("%s -c 'import %s'" % (VENV_PYTHON, absent)).rc != 0


def test_the_schedule_role_set_up_the_timer(host):
    timer = host.service("segura-backup.timer")
    assert timer.is_enabled and timer.is_running


def test_the_snapshot_reached_the_smb_share(host):
    folder = os.path.join(RUN["lab"]["smb_dir_encrypted"], RUN["share_folder"])
    names = [name for _dirs, _sub, files in os.walk(folder) for name in files]
    assert any(name.endswith(".json.sig") for name in names), names
    assert any(name.endswith(".json") for name in names), names


def test_fingerprint_equals_the_one_before_the_backup(host):
    with open(os.path.join(os.path.dirname(os.environ["SEGURA_MOLECULE_RUN"]), "fingerprint-before.json"),
              encoding="utf-8") as handle:
        before = json.load(handle)
    now = containers.fingerprint(host.backend.name)
    assert now["databases"] == before["databases"]
    assert now["files"] == before["files"]


def _quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"
