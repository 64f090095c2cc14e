#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: snapshot
short_description: Take a consistent, encrypted snapshot of a Segura appliance and publish it on a target
version_added: 0.1.0
description:
  - Streams one snapshot of the Segura PAM appliance on the managed host to an SMB share, an NFS
    export or a local directory, without staging it on the appliance's disk or holding it in memory.
  - The object is C(<appliance>/snapshots/<UTC time>-<id>.tar.zst.age) on the target, an age-encrypted,
    zstd-compressed tar holding C(snapshot.json), the databases, the configuration files and the secrets
    staging folder, and C(manifest.json) last (every member with size and sha256).
  - The databases, by O(database.method) - V(physical) (the default when a C(mariadb-backup) of the server's
    version is installed) streams C(mariadb-backup --backup --stream=mbstream) of the whole instance into
    C(db/backup.mbstream.NNNNNN) members, restored bit for bit by a C(mariadb-backup) of the same version;
    V(logical) runs B(one) C(mariadb-dump --single-transaction --dump-history) of both databases into
    C(db/dump.sql.NNNNNN) members, portable across versions, and C(db/facts.json) (each table's row count and
    checksum at the dump's point, which the restore is checked against); every column a dump cannot carry
    exactly (FLOAT) is named in RV(snapshot.warnings).
  - It is written under a temporary name, closed, size-checked and renamed; a small unencrypted sidecar
    C(<same>.json) is written last, and its presence is what makes the snapshot complete. A failure at
    any point leaves no complete-looking object, and earlier snapshots are never touched.
  - Session recordings (component V(sessions)) are synced incrementally beside the snapshots to
    C(<appliance>/sessions/YYYY/MMDD/) and referenced by the manifest; only new files move.
  - One lock per appliance on the target keeps two runs from interleaving; a stale lock (its holder
    died) is taken over once it expires.
  - In a disaster, Debian's C(age -d -i KEY | zstd -d | tar -x) opens the object; then
    C(cat db/backup.mbstream.* | mbstream -x -C DIR), C(mariadb-backup --prepare --target-dir=DIR) and
    C(mariadb-backup --copy-back --target-dir=DIR) bring a physical snapshot back, and
    C(cat db/dump.sql.* | mariadb) loads a logical one.
author:
  - segura.backup maintainers (@segura-backup)
extends_documentation_fragment:
  - segura.backup.attributes
  - segura.backup.target
  - segura.backup.encryption
  - segura.backup.appliance
  - segura.backup.snapshot_options
attributes:
  check_mode:
    support: full
    details:
      - In check mode the module runs a real preflight and writes nothing - it lists the target, asks
        the server whether the account may create and remove files there (an SMB open for those rights,
        an NFS ACCESS call, C(access(2)) on a path), reads the lock, queries the database and walks the
        component paths, and compares free space with an estimate.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Every run takes a new snapshot. Session recordings already on the target are not uploaded again.
  safe_file_operations:
    support: full
    details:
      - Objects are written under a temporary name and renamed without replacing anything.
requirements:
  - python >= 3.9
  - zstandard
  - cryptography
  - smbprotocol (for SMB targets)
  - nfs-rs (for NFS targets)
  - the MariaDB client tools on the appliance - mariadb-backup of the server's version for the physical method
    (chosen when it can run here - same version, server on this host), else mariadb-dump (logical)
notes:
  - The P(segura.backup.runtime#role) role installs the Python requirements into a dedicated virtualenv.
  - Run it on the primary member of a cluster; the P(segura.backup.backup#role) role skips the others.
seealso:
  - module: segura.backup.verify
  - module: segura.backup.backup_info
  - module: segura.backup.prune
  - module: segura.backup.restore
"""

EXAMPLES = r"""
- name: Snapshot the appliance to an encrypted SMB share
  segura.backup.snapshot:
    target:
      type: smb
      server: backup.example.com
      share: segura
      path: backups
      username: svc-segura-backup
      password: "{{ vault_smb_password }}"
    encryption:
      recipients:
        - age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
  register: snap

- name: Include session recordings, to an NFSv4.1 export
  segura.backup.snapshot:
    target:
      type: nfs
      server: nfs.example.com
      export: /exports/segura
      version: "4.1"
    components: [database, config, secrets, sessions]
    encryption:
      recipients_file: /etc/segura-backup/recipients.txt

- name: Preflight only (check mode), to a kernel mount made by the mount role
  segura.backup.snapshot:
    target:
      type: path
      path: /srv/backup_remoto
    encryption:
      mode: passphrase
      passphrase: "{{ vault_backup_passphrase }}"
  check_mode: true
  register: preflight
"""

RETURN = r"""
snapshot:
  description: The snapshot that was published.
  returned: success, not in check mode
  type: dict
  contains:
    id:
      description: Short random id of the snapshot.
      type: str
      sample: 1a2b3c4d
    appliance:
      description: Name the snapshot is filed under.
      type: str
      sample: segura-primary
    created:
      description: UTC time of the snapshot.
      type: str
      sample: "2026-11-27T05:00:12Z"
    object:
      description: Target-relative path of the object.
      type: str
      sample: segura-primary/snapshots/20261127T050012Z-1a2b3c4d.tar.zst.age
    sidecar:
      description: Target-relative path of the sidecar that marks the snapshot complete.
      type: str
    location:
      description: Where the object is, as a URL-like string (no credentials).
      type: str
      sample: smb://backup.example.com:445/segura/backups/segura-primary/snapshots/20261127T050012Z-1a2b3c4d.tar.zst.age
    size:
      description: Bytes of the stored object.
      type: int
    sha256:
      description: sha256 of the stored object, as written and recorded in the sidecar.
      type: str
    duration:
      description: Seconds the snapshot took, session sync included.
      type: float
    bytes_in:
      description: Bytes read from the appliance into the object (dump, files, manifest).
      type: int
    bytes_out:
      description: Bytes written to the target for the object (after compression and encryption).
      type: int
    throughput_mb_s:
      description: RV(snapshot.bytes_in) per second, in MiB/s.
      type: float
    components:
      description: Components taken.
      type: list
      elements: str
    counts:
      description: Per-component counts.
      type: dict
      sample:
        db_chunks: 3
        db_bytes: 41234567
        files: 12
        dirs: 4
        symlinks: 1
        sessions_referenced: 840
        sessions_uploaded: 12
        sessions_uploaded_bytes: 96468992
        sessions_skipped: 828
        sessions_symlinks: 2
        sessions_hardlinks: 0
    sessions:
      description:
        - How the session recordings were taken, or null without the sessions component.
        - C(status) V(complete), or V(partial) when entries of the recordings tree could not be taken (the rest
          was; each also named in RV(snapshot.warnings)); C(problem_count); C(problems) (the first 100,
          each C(path) and C(reason)). The sidecar and M(segura.backup.backup_info) carry the same.
      type: dict
      sample:
        status: partial
        problem_count: 1
        problems: [{"path": "/var/senhasegura/arz/2026/1127/pipe", "reason": "is a FIFO (named pipe), not a recording"}]
    encryption:
      description:
        - Encryption mode and the public keys of the recipients; for an encrypted snapshot also
          C(prelude_sha256), the sha256 of the age header and payload nonce, which the signed sidecar
          records so that a restore can trust each decrypted chunk as it comes (see the restore module).
      type: dict
    signature:
      description:
        - The fingerprint of the key that signed the sidecar (as C(ssh-keygen -l) prints it) and the name of
          the signature file; V(null) when the snapshot was published unsigned (no O(signing_key) file).
      type: dict
      sample: {"key": "SHA256:2kYw9g+ddj8j8Xi8wMqmDBkF9b53ToNurJ3JcdpPyHQ", "file": "20261207T120000Z-1a2b3c4d.json.sig"}
    appliance_version:
      description: Segura version of the appliance, as recorded with the snapshot.
      type: str
    database:
      description:
        - How the databases were taken (also in the manifest; method and versions in the sidecar too).
        - C(method) V(physical) or V(logical); C(server_version); C(tool_version) of C(mariadb-backup)
          (a physical restore needs the same); C(position) (physical - C(lsn_from), C(lsn_to), and with binary
          logging C(binlog) file, position and GTID); C(losses) (logical - every table and column the dump
          cannot carry exactly, with the reason); C(facts) (logical - the member holding the source's
          per-table row counts and checksums at the dump's point, which the restore is checked against).
      type: dict
      returned: when the database component was taken
      sample:
        method: physical
        server_version: 10.11.19-MariaDB-0+deb12u1
        tool: mariadb-backup
        tool_version: 10.11.19
        galera: false
        position: {lsn_from: 44420, lsn_to: 6962487}
        losses: []
    warnings:
      description:
        - What this snapshot does not carry exactly, and why the logical method was chosen if it was, and
          the entries of the recordings tree that could not be taken (each also given as an Ansible warning).
      type: list
      elements: str
    lock_taken_over:
      description:
        - Whether a stale lock of a dead run had to be taken over.
        - A lock is stale when it expired, or at once when it was made on this host (same kernel boot
          and pid namespace) by a process that no longer runs.
      type: bool
    lock_takeover:
      description: Whose lock was taken over and why (also given as a warning); null when none was.
      type: str
    leftovers_removed:
      description:
        - Files of a dead run removed at once after taking over its lock (its partial snapshot objects and
          half-written session files); empty otherwise. Leftovers of runs not provably gone wait for prune.
      type: list
      elements: str
preflight:
  description: Result of the preflight checks.
  returned: check mode
  type: dict
  contains:
    ok:
      description: Whether every check passed.
      type: bool
    checks:
      description: One entry per check (target_reachable, target_writable, lock_free, appliance, free_space, database_method, components).
      type: dict
    problems:
      description: What failed, one message each.
      type: list
      elements: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.segura.backup.plugins.module_utils._engine import deps
from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import stop_cleanly_on_signals
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError
from ansible_collections.segura.backup.plugins.module_utils._engine.job import snapshot_request
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import preflight, take_snapshot
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import snapshot_spec
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target


def main():
    module = AnsibleModule(argument_spec=snapshot_spec(), supports_check_mode=True)
    absent = deps.missing(list(deps.CORE) + deps.for_target(module.params["target"]["type"]))
    if absent:
        module.fail_json(msg=missing_required_lib(", ".join(absent)))

    params = module.params
    try:
        with stop_cleanly_on_signals():
            request = snapshot_request(params)
            with open_target(params["target"]) as target:
                if module.check_mode:
                    report = preflight(target, request)
                    if not report["ok"]:
                        module.fail_json(msg="preflight failed: %s" % "; ".join(report["problems"]), preflight=report)
                    module.exit_json(changed=True, preflight=report)
                result = take_snapshot(target, request)
    except BackupError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)
    for warning in result.get("warnings") or []:
        module.warn(warning)
    if result.get("lock_takeover"):
        module.warn(result["lock_takeover"])
    module.exit_json(changed=True, snapshot=result)


if __name__ == "__main__":
    main()
