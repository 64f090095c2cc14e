# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Where the appliance keeps its data; the appliance and database options of plugins/module_utils/_engine/specs.py (tests/unit/test_house.py compares them).
    DOCUMENTATION = r"""
options:
  appliance:
    description:
      - The Segura appliance on the managed host. The defaults match a real appliance; a lab or a
        test appliance can live below another O(appliance.root).
    type: dict
    default: {}
    suboptions:
      name:
        description:
          - Name the snapshots are filed under on the target (C(<name>/snapshots/...)).
          - Defaults to the short host name.
        type: str
      root:
        description:
          - Directory every appliance path below is relative to.
        type: path
        default: /
      arz_dir:
        description:
          - Session recordings (one folder per day), relative to O(appliance.root).
        type: str
        default: var/senhasegura/arz
      secrets_dir:
        description:
          - Staging folder of the break-the-glass secrets export, relative to O(appliance.root).
        type: str
        default: srv/cache/coba
      config_paths:
        description:
          - Configuration files and folders to back up, relative to O(appliance.root).
          - Each item is a path, or a dict with C(path) and C(optional) (a missing optional path is skipped,
            a missing required one fails the run).
          - Defaults to C(var/senhasegura/orbinibkp.conf) and, when present, C(etc/mysql/conf.d/galera.cnf)
            and C(etc/senhasegura).
        type: list
        elements: raw
      databases:
        description:
          - The MariaDB databases, dumped together in one consistent transaction.
        type: list
        elements: str
        default: [mt4, senhasegura]
      health_url:
        description:
          - Segura's health endpoint (C(https://<host>/flow/orbit/mntr)) used to tell a primary from a
            contingency member. Without it the running MariaDB server decides (wsrep off, no Galera provider,
            or the Primary of a cluster of one is a lone primary; a member of a larger cluster, or one cut off
            from its cluster, is unknown), else the Galera configuration.
        type: str
      validate_certs:
        description:
          - Verify the TLS certificate of O(appliance.health_url).
        type: bool
        default: true
  database:
    description:
      - How to reach the appliance's MariaDB. Credentials only ever travel in a defaults file,
        never on a command line.
      - With nothing set, C(/etc/mysql/debian.cnf) when it exists, else root over the local socket.
    type: dict
    default: {}
    suboptions:
      defaults_file:
        description:
          - A MariaDB client option file holding user and password (mode 0600).
        type: path
      socket:
        description:
          - Unix socket of the server.
        type: path
      host:
        description:
          - Server host, for TCP connections.
        type: str
      port:
        description:
          - Server port, for TCP connections.
        type: int
      user:
        description:
          - User name, when not in O(database.defaults_file).
        type: str
      method:
        description:
          - How a snapshot carries the databases (M(segura.backup.snapshot), M(segura.backup.backup_job);
            a restore uses the method its snapshot was taken with).
          - V(physical) - C(mariadb-backup --backup --stream=mbstream) of the whole instance, streamed into
            the object. Restores bit for bit (FLOAT values, system-versioned history, accounts), and fast,
            but only with a C(mariadb-backup) of the B(same server version) (X.Y.Z) as the snapshot's.
          - V(logical) - C(mariadb-dump --single-transaction --dump-history) of O(appliance.databases).
            Portable across server versions, but a dump prints FLOAT values rounded; the result's
            snapshot's C(warnings) and the manifest name every column and table a dump
            cannot carry exactly.
          - Unset - V(physical) when C(mariadb-backup) is installed, its version is the server's, the server
            runs on this host and its datadir is readable; otherwise V(logical), with a warning naming why.
            An explicit V(physical) that cannot work fails the run before anything is written.
        type: str
        choices: [physical, logical]
      service:
        description:
          - Physical restore only - the systemd unit of the database server, stopped before the datadir is
            swapped and started after it.
          - V(none) - the caller stops the server before the restore (for example in the restore's
            C(pre_commands)) and starts it afterwards; the restore refuses while a server still holds the datadir.
        type: str
        default: mariadb
      datadir:
        description:
          - Physical restore only - the server's data directory. Default - the running server's
            C(@@datadir); required with O(database.service=none), as the server is then down.
        type: path
"""
