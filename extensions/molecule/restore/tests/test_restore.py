# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra checks of the restore scenario: after backup, loss of both databases and restore, the
appliance (podman://molecule-segura-restore) has the reference fingerprint it had before the backup."""

import json
import os
import sys

RUN = json.load(open(os.environ["SEGURA_MOLECULE_RUN"], encoding="utf-8"))
sys.path.insert(0, RUN["repo"])

from tests.lab import containers  # noqa: E402  (the repository's lab helpers)


def test_both_databases_are_back(host):
    listed = host.check_output("mysql --defaults-file=/etc/mysql/debian.cnf -N -e 'SHOW DATABASES'").split()
    assert "mt4" in listed and "senhasegura" in listed


def test_fingerprint_equals_the_one_before_the_backup(host):
    with open(os.path.join(os.path.dirname(os.environ["SEGURA_MOLECULE_RUN"]), "fingerprint-before.json"),
              encoding="utf-8") as handle:
        before = json.load(handle)
    now = containers.fingerprint(host.backend.name)
    assert now["databases"] == before["databases"]
    assert now["files"] == before["files"]


def test_the_restore_was_physical_and_kept_the_previous_datadir(host):
    """The appliance image has mariadb-backup of its server's version, so the snapshot was physical and the
    restore swapped the datadir with systemd: the previous one is kept, nothing half-made is left."""
    kept = host.check_output("find /var/lib -maxdepth 1 -name 'mysql.*' -printf '%f\\n'").split()
    assert len(kept) == 1 and kept[0].startswith("mysql.pre-restore-"), kept
    datadir = host.file("/var/lib/mysql")
    assert datadir.is_directory and datadir.user == "mysql" and datadir.group == "mysql"
    assert host.file("/var/lib/mysql/ibdata1").user == "mysql"
    assert host.service("mariadb").is_running
    assert host.run("systemctl is-active mariadb.socket").stdout.strip() == "active"
