#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: appliance_info
short_description: Facts about a Segura appliance - version, cluster role, database and path sizes, free space, mounts
version_added: 0.1.0
description:
  - Reads what a backup run needs to know about the Segura PAM appliance on the managed host, without
    changing anything.
  - The appliance version comes from C(orbit version) when the CLI is installed, else from a version file.
  - The cluster role comes from Segura's health endpoint when O(appliance.health_url) is given (200 is the
    active primary, 203 an active member that is not primary, 403 inactive, 451 licence expired,
    503 unavailable); without it, from the running MariaDB server - a node with wsrep off, with wsrep on but
    no Galera provider, or the Primary of a cluster of one, is a standalone primary; a member of a cluster of
    two or more nodes, or a node with the provider loaded that is cut off from its cluster (non-Primary or
    Disconnected), is reported with an unknown primary status and a warning. Only when the server is not asked
    (O(gather_database=false)) or does not answer does the Galera configuration
    C(etc/mysql/conf.d/galera.cnf) decide.
  - Database sizes (data and index bytes of each database) come from C(information_schema), through the
    MariaDB client with credentials from an option file only.
  - Sizes of the backed-up paths (configuration, secrets staging, session recordings), usage and free
    space of C(/) and C(/var), and the CIFS and NFS mounts (without credential options).
author:
  - segura.backup maintainers (@segura-backup)
extends_documentation_fragment:
  - segura.backup.attributes
  - segura.backup.appliance
attributes:
  check_mode:
    support: full
    details:
      - The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - It never changes anything.
  safe_file_operations:
    support: none
    details:
      - It writes no file.
options:
  gather_database:
    description:
      - Query the database server for its version and the sizes of O(appliance.databases).
      - Set V(false) on a node whose database is down or not reachable with the given credentials.
    type: bool
    default: true
  health_timeout:
    description:
      - Seconds to wait for the health endpoint.
    type: float
    default: 5.0
  name_only:
    description:
      - Return only RV(appliance.name) and RV(appliance.hostname) and read nothing else - how the verify playbook
        learns the name this appliance's snapshots are filed under (the same default the snapshot, backup_job and
        restore modules use), so an inventory name that is an FQDN or an alias still finds them.
    type: bool
    default: false
requirements:
  - python >= 3.9
  - mariadb client (C(mariadb) or C(mysql)) on the appliance, for the database facts
notes:
  - The P(segura.backup.backup#role) role (through M(segura.backup.backup_job)) tells the cluster role the same
    way, to back up the primary only.
  - Remote space for backups should be at least 150% of RV(appliance.var.bytes_used) (Segura's sizing advice).
seealso:
  - module: segura.backup.snapshot
  - module: segura.backup.backup_info
"""

EXAMPLES = r"""
- name: Read the appliance facts
  segura.backup.appliance_info:
  register: info

- name: Tell the primary from the contingency through Segura's health endpoint
  segura.backup.appliance_info:
    appliance:
      health_url: https://{{ inventory_hostname }}/flow/orbit/mntr
    gather_database: false
  register: info

- name: Back up only when this node is the primary
  segura.backup.snapshot:
    target:
      type: path
      path: /srv/backup_remoto
    encryption:
      recipients_file: /etc/segura-backup/recipients.txt
  when: info.appliance.cluster.is_primary | bool
"""

RETURN = r"""
appliance:
  description: The appliance facts.
  returned: success
  type: dict
  contains:
    hostname:
      description: Host name of the appliance (with O(name_only=true) the only key besides RV(appliance.name)).
      type: str
      sample: segura-primary
    name:
      description: Name its snapshots are filed under (O(appliance.name), else the short host name).
      type: str
      sample: segura-primary
    root:
      description: The O(appliance.root) every path is relative to.
      type: str
      sample: /
    appliance_version:
      description: Segura version, or V(unknown).
      type: str
      sample: 3.32.0
    appliance_version_source:
      description: Where the version was read (V(orbit), a file path, or V(none)).
      type: str
    cluster:
      description: Cluster role of the node.
      type: dict
      contains:
        role:
          description: V(primary), V(secondary), V(inactive), V(licence_expired), V(unavailable) (health endpoint),
            V(standalone), V(cluster_member) (running server or Galera configuration) or V(unknown).
          type: str
        is_primary:
          description: Whether the node is the one to back up; null when it cannot be told.
          type: bool
        source:
          description: V(health), V(server) (the running MariaDB's wsrep state) or V(galera.cnf).
          type: str
        cluster_size:
          description: Nodes in the Galera cluster as the server reports it (0 with wsrep off), when read from the server.
          type: int
        status:
          description: HTTP status of the health endpoint, when it was asked.
          type: int
        error:
          description: Why the role is not known, when it is not.
          type: str
    paths:
      description: Size (bytes) and file count of what is backed up.
      type: dict
      contains:
        config:
          description: One entry per configured path (path, exists, bytes, files).
          type: list
          elements: dict
        secrets:
          description: The secrets staging folder (path, exists, bytes, files).
          type: dict
        sessions:
          description: The session recordings folder (path, exists, bytes, files).
          type: dict
    free_space:
      description: Free and total bytes of the file systems of the root and of C(var) (path, bytes_free, bytes_total).
      type: dict
    var:
      description: Usage of the file system holding C(var).
      type: dict
      contains:
        path:
          description: The C(var) folder below O(appliance.root).
          type: str
        bytes_total:
          description: Size of the file system.
          type: int
        bytes_used:
          description: Bytes not available (total minus free).
          type: int
        bytes_free:
          description: Bytes available to unprivileged users.
          type: int
    mounts:
      description: CIFS and NFS mounts (source, mountpoint, fstype, options without credentials).
      type: list
      elements: dict
    mariadb:
      description: Server version and per database C(exists), C(data_bytes), C(index_bytes).
      returned: O(gather_database=true)
      type: dict
      sample:
        server_version: 10.11.6-MariaDB-0+deb12u1
        databases:
          mt4: {"exists": true, "data_bytes": 1589248, "index_bytes": 327680}
          senhasegura: {"exists": true, "data_bytes": 65536, "index_bytes": 0}
    estimate:
      description: Bytes a snapshot may need on the target (database_bytes, files_bytes, snapshot_bytes, sessions_bytes).
      type: dict
"""

import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.facts import estimate_snapshot_size
from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.facts import facts as appliance_facts
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError
from ansible_collections.segura.backup.plugins.module_utils._engine.options import appliance_name, build_database, build_layout
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import appliance_info_spec


def _var_usage(free_space):
    """Used/total/free bytes of the /var file system, from the engine's free-space entry."""
    entry = free_space.get("var")
    if not entry:
        return None
    return {"path": entry["path"], "bytes_total": entry["bytes_total"], "bytes_free": entry["bytes_free"],
            "bytes_used": max(entry["bytes_total"] - entry["bytes_free"], 0)}


def main():
    module = AnsibleModule(argument_spec=appliance_info_spec(), supports_check_mode=True)
    params = module.params
    if params["name_only"]:
        try:
            name = appliance_name(params["appliance"])
        except BackupError as exc:
            module.fail_json(msg=str(exc), error=type(exc).__name__)
        module.exit_json(changed=False, appliance={"name": name, "hostname": socket.gethostname()})
    try:
        layout = build_layout(params["appliance"])
        db = build_database(params["database"]) if params["gather_database"] else None
        facts = appliance_facts(layout, db=db, health_url=params["appliance"].get("health_url"),
                                verify_tls=params["appliance"]["validate_certs"],
                                health_timeout=params["health_timeout"])
        facts["name"] = appliance_name(params["appliance"])
        facts["var"] = _var_usage(facts["free_space"])
        facts["estimate"] = estimate_snapshot_size(facts)
    except BackupError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)
    if facts["cluster"].get("error"):
        module.warn(facts["cluster"]["error"])
    module.exit_json(changed=False, appliance=facts)


if __name__ == "__main__":
    main()
