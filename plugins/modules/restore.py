#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: restore
short_description: Restore a snapshot onto a Segura appliance, verified before and after
version_added: 0.1.0
description:
  - Brings a snapshot taken by M(segura.backup.snapshot) back onto the appliance on the managed host -
    both databases, the configuration files and the secrets staging folder, and optionally the session
    recordings - after proving that the snapshot is whole.
  - "Nothing is touched before the whole object has been verified: pass 1 streams the object once,
    checks its size and sha256 against the sidecar and every member against C(manifest.json) (which is
    the last member). Pass 2 streams it again and restores, re-checking every member against that
    manifest before it is used."
  - "B(One read) for a physical restore of a signed snapshot encrypted to X25519 recipients, whose sidecar
    records its age header (snapshots taken since this was added) -
    its signed sidecar records the sha256 of the age header and payload nonce (C(encryption.prelude_sha256)),
    which pins the file key, so every chunk is the appliance's as soon as it decrypts. Pass 1 then feeds
    the physical backup to C(mbstream -x) in the staging folder while it verifies; the live datadir is
    not touched before the whole object verified, and a damaged chunk, a cut read or a refused plan
    removes the staging folder. A second pass reads the object again only for the files, if any are
    restored. C(extracted_while_verifying) in RV(plan.checks) and RV(restore.object_reads) say which way
    was taken; check mode never extracts. Passphrase snapshots keep two passes (every appliance holds
    the passphrase, so one taken over could write chunks under another's header); so does any snapshot
    whose recipients' keys are not kept safe as what they are - keys that can also forge chunks."
  - The databases are restored by the method the snapshot was taken with (its RV(plan.database_method)).
  - B(Physical) (a C(mariadb-backup) stream of the whole instance) - refused before anything is touched
    unless this host's C(mariadb-backup) and C(mariadbd) are the B(same version) as the snapshot's (the
    message names both). The verified chunks are fed to C(mbstream -x) into C(<datadir>.restore-<time>)
    beside the datadir, prepared with C(mariadb-backup --prepare), then started once by a throwaway
    C(mariadbd --skip-networking) whose per-table facts (row counts with system-versioned history, and
    C(CHECKSUM TABLE)) describe the snapshot's own point. The copy gets the datadir's owner and mode; the
    service O(database.service) is stopped, with its socket units (Debian's C(mariadb.socket) would start
    it again at the first connection) - with V(none) the caller stops it, and the module refuses while a
    server still holds the datadir; the datadir is renamed to C(<datadir>.pre-restore-<time>) and the copy
    renamed into its place; the service is started and its facts compared with the copy's.
  - Refused before anything is touched when the running server keeps InnoDB or Aria files outside its
    datadir (C(innodb_log_group_home_dir), C(innodb_undo_directory), C(innodb_data_home_dir),
    C(aria_log_dir_path)) - the swap moves the datadir only.
  - The live comparison runs right after the start; stop whatever writes to the databases first (Segura,
    and events of the event scheduler), or a write in between fails the check and rolls the restore back.
  - A datadir that cannot be renamed - a mount point of its own, or a folder of a container image's lower
    layer - keeps its folder, and its entries are moved instead (by rename, else copied with C(cp -a) and
    removed); the free-space check then counts the old datadir's size beside it too.
  - B(Rollback) - if any step after the first rename fails (start, or a difference in the facts), the
    restored copy is moved to C(<datadir>.failed-restore-<time>), the previous datadir is renamed back and
    the service started again; the task fails and says so. The previous datadir is kept after a success
    too, and a warning names it - remove it once the restore is accepted.
  - The restored server holds the snapshot's accounts and grants; O(database) must be able to log in with
    them (root over the local socket, as on Debian, always can).
  - "On a Galera node restore one node physically, start it as a new cluster (set C(safe_to_bootstrap: 1)
    in its C(grastate.dat), C(galera_new_cluster)); the other nodes rejoin by SST, which copies that node."
  - B(Logical) (a C(mariadb-dump)) - the dump is fed to B(one) C(mariadb) client; it recreates C(mt4) before
    C(senhasegura), which the module checks before it starts (Segura's restore order). Credentials only
    ever travel in a defaults file.
  - Files are written to a temporary name in their folder, hashed, compared with the manifest, then
    renamed into place with their mode, owner and mtime. Inside the restored paths a symbolic link is
    never followed. Members outside the appliance's configured paths, symbolic links pointing out of
    them, path traversal, devices and hard links are refused before anything is written.
  - A snapshot of another appliance is refused unless O(allow_other_appliance=true); a snapshot taken on
    another application version is refused unless O(force_version_mismatch=true).
  - After the restore every file is compared with the manifest again, and the databases with facts about
    the B(source) - never a dump with a re-dump of itself. Physical - the live server against the prepared
    copy (above). Logical - each table's row count (history included) and C(CHECKSUM TABLE) against
    C(db/facts.json), taken at the dump's own point; tables the snapshot reported as not carried exactly
    (FLOAT columns) are compared by row count and named in the warnings. A difference fails the task.
    Logical snapshots of earlier releases carry no facts; for them a re-dump is compared with the
    snapshot's dump, and RV(restore.verification) says that this check is weak.
author:
  - segura.backup maintainers (@segura-backup)
extends_documentation_fragment:
  - segura.backup.target
  - segura.backup.decryption
  - segura.backup.appliance
  - segura.backup.future_tolerance
  - segura.backup.trust
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Check mode runs the whole preflight, including the full deep verification of the object, and
        reports what would be restored and which existing files would be overwritten. It writes nothing
        and runs neither O(pre_commands) nor O(post_commands).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row with the same arguments, the second run reports no change.
    support: partial
    details:
      - Files, directories and links that already match the snapshot are left alone. Restoring the
        V(database) component always reloads the databases, so it always reports a change.
  safe_file_operations:
    description: Uses Ansible's strict file operation functions to ensure proper permissions and avoid data corruption.
    support: full
    details:
      - Every file is written under a temporary name, checked and renamed into place.
options:
  snapshot:
    description:
      - V(latest) for the newest complete snapshot that is not future-dated (see O(future_tolerance)), or the
        8-hex-digit id of one (a future-dated one is then restored, with a warning).
    type: str
    default: latest
  source_appliance:
    description:
      - Take the snapshot from this appliance's folder on the target instead of the restored
        appliance's own (O(appliance.name)). Needs O(allow_other_appliance=true) when the names differ.
    type: str
  allow_other_appliance:
    description:
      - Allow restoring a snapshot that another appliance made, for example onto a replacement machine
        with another name.
    type: bool
    default: false
  components:
    description:
      - What to restore. Defaults to every one of V(database), V(config) and V(secrets) that the
        snapshot holds.
    type: list
    elements: str
    choices: [database, config, secrets]
  restore_sessions:
    description:
      - Copy the session recordings the snapshot references from the target back into
        O(appliance.arz_dir), each verified by size and sha256. Recordings already present are skipped.
    type: bool
    default: false
  force_version_mismatch:
    description:
      - Restore even when the snapshot was taken on another Segura version than the appliance runs.
        Segura supports restores only onto the same version; use this only with support's advice.
    type: bool
    default: false
  pre_commands:
    description:
      - Commands run before anything live is written, for example to stop Segura's services (a signed
        physical snapshot may already be extracted into its staging folder beside the datadir). Each is a list
        of arguments, run without a shell. A failing command aborts the restore.
    type: list
    elements: list
    default: []
  post_commands:
    description:
      - Commands run after a successful restore and its verification, for example to start the
        services again. Not run when the restore fails.
    type: list
    elements: list
    default: []
  command_timeout:
    description:
      - Seconds each of O(pre_commands) and O(post_commands) may take.
    type: int
    default: 600
  post_verify:
    description:
      - Verify the result - restored files against the manifest, and the databases against the source's
        facts (see above). A physical restore always compares the started server with the prepared copy,
        as the rollback depends on it.
    type: bool
    default: true
  signing_key:
    description:
      - This appliance's own signing key. Its public half is trusted for O(appliance.name), so a restore onto
        the appliance that took the snapshot needs no O(trust). Nothing happens when no file is there.
      - Default C(etc/segura-backup/signing_key) below O(appliance.root), where the C(segura.backup.runtime)
        role creates it.
    type: path
  special_bits_paths:
    description:
      - Paths (below O(appliance.root), shell patterns such as V(/usr/local/bin/*)) whose setuid, setgid
        and sticky bits a restore may bring back, and only from a snapshot with a valid signature. Every
        other such bit is dropped and named in the warnings (a share writer must not be able to plant a
        setuid root program).
    type: list
    elements: str
    default: []
requirements:
  - python >= 3.9
  - zstandard
  - cryptography
  - smbprotocol (for SMB targets)
  - nfs-rs (for NFS targets)
  - mariadb and mariadb-dump (MariaDB client) on the appliance
  - for a physical snapshot, mariadb-backup, mbstream and mariadbd of the snapshot's server version, and root
notes:
  - Stop Segura before a restore (O(pre_commands)) so nothing writes to the databases meanwhile.
  - Files present on the appliance but not in the snapshot are left in place.
  - The manifest records no mode or owner for session recordings; restored ones get mode 0640 in
    folders of mode 0750, owned by the user running the module.
seealso:
  - module: segura.backup.snapshot
  - module: segura.backup.verify
  - module: segura.backup.backup_info
"""

EXAMPLES = r"""
- name: What would a restore of the latest snapshot do? (deep-verifies, writes nothing)
  segura.backup.restore:
    target:
      type: smb
      server: backup.example.com
      share: segura
      username: svc-segura-backup
      password: "{{ vault_smb_password }}"
    decryption:
      identity_file: /root/segura-backup-key.txt
  check_mode: true
  register: drill

- name: Restore a given snapshot with Segura stopped meanwhile
  segura.backup.restore:
    target:
      type: nfs
      server: nfs.example.com
      export: /exports/segura
    decryption:
      identity_file: /root/segura-backup-key.txt
    snapshot: 1a2b3c4d
    pre_commands:
      - [systemctl, stop, senhasegura]
    post_commands:
      - [systemctl, start, senhasegura]

- name: Rebuild a replacement appliance from the old primary's snapshots, recordings included
  segura.backup.restore:
    target:
      type: path
      path: /srv/backup_remoto
    decryption:
      passphrase: "{{ vault_backup_passphrase }}"
    appliance:
      name: segura-dr
    source_appliance: segura-primary
    allow_other_appliance: true
    restore_sessions: true
"""

RETURN = r"""
plan:
  description: What the preflight found, and what a restore would do.
  returned: always
  type: dict
  contains:
    snapshot:
      description: The selected snapshot (id, appliance, created, object, size, sha256, appliance_version).
      type: dict
    components:
      description: Components restored.
      type: list
      elements: str
    database_method:
      description: V(physical) or V(logical), the method the snapshot was taken with; null without the database.
      type: str
    databases:
      description:
        - Databases the dump recreates, in its order (C(mt4) before C(senhasegura)); with a physical snapshot
          (the whole instance) the databases whose tables are checked.
      type: list
      elements: str
    database_bytes:
      description: Bytes of the dump, or of the physical backup stream.
      type: int
    files:
      description: Regular files in the restored components (also V(dirs), V(symlinks), V(file_bytes)).
      type: int
    overwrite:
      description: Existing paths that differ from the snapshot and are (or would be) replaced (first 50).
      type: list
      elements: str
    overwrite_count:
      description: How many existing paths differ.
      type: int
    unchanged:
      description: Paths that already match the snapshot.
      type: int
    sessions_to_copy:
      description: Session recordings that would be copied back.
      type: int
    checks:
      description:
        - Each preflight check (signature, quick, deep, version, database_order, database_reachable, physical,
          free_space, special_bits_dropped).
        - C(signature) - V(valid) and the signer's key fingerprint; with O(trust.allow_unsigned), V(unsigned) or
          V(invalid) and the reason.
        - C(deep) - members read and seconds; C(extracted_while_verifying) V(true) when the physical backup went
          to its staging folder during this pass (a signed snapshot whose age header the sidecar pins).
        - C(physical) - the versions of C(mariadb-backup) and C(mariadbd) here and in the snapshot, the datadir,
          the service, free space beside the datadir and, with service V(none), whether a server holds it.
      type: dict
    problems:
      description: Why the restore is refused, if it is.
      type: list
      elements: str
    warnings:
      description:
        - What the restore does although it was not quite asked for - a newer untrusted snapshot passed over, an
          unsigned snapshot accepted, setuid/setgid/sticky bits not restored.
      type: list
      elements: str
restore:
  description: What was done.
  returned: success, not in check mode
  type: dict
  contains:
    object_reads:
      description:
        - How often the object was read from the target - V(1) when a signed physical snapshot was extracted
          while it was verified and nothing else had to be restored from it, else V(2) (verify, then restore).
      type: int
      sample: 1
    written:
      description: Counts of files, dirs and symlinks written, entries whose metadata was fixed, and unchanged ones.
      type: dict
    signature:
      description: The signature check of the restored snapshot (as RV(plan.checks)).
      type: dict
    overwritten:
      description: Existing paths that were replaced (first 50).
      type: list
      elements: str
    sessions:
      description: Recordings restored and skipped, and bytes copied.
      type: dict
    verification:
      description:
        - Post-restore checks of files, sessions and databases.
        - C(database.strength) says what the database check proves - V(exact) (physical, live server against
          the prepared copy), V(copy) (physical with service V(none) - the prepared copy was checked, the
          server not started), V(exact except the known losses) (logical, against the source's facts;
          C(known_losses) lists them), V(row counts) (logical onto another server version), V(weak) (an old
          snapshot without facts - a re-dump against its dump).
      type: dict
    physical:
      description:
        - What a physical restore did - C(datadir), C(previous_datadir) (the old datadir, kept), C(service),
          C(started), C(live_check), C(bytes) and C(durations) (extract, prepare, check_copy,
          swap_start_check); null for a logical restore.
      type: dict
    durations:
      description: Seconds per phase (fetch_verify is pass 1), database, files, sessions, post_verify, total.
      type: dict
      sample: {fetch_verify: 1.2, database: 6.8, files: 0.3, sessions: 0.0, post_verify: 1.9, total: 10.4}
    pre_commands:
      description: The pre commands run, with exit code and captured output.
      type: list
      elements: dict
    post_commands:
      description: The post commands run, with exit code and captured output.
      type: list
      elements: dict
    warnings:
      description: Things a person should know that did not fail the restore.
      type: list
      elements: str
"""

from datetime import datetime, timezone

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.segura.backup.plugins.module_utils._engine import deps
from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import RESTORE_STOPPED, stop_cleanly_on_signals
from ansible_collections.segura.backup.plugins.module_utils._engine.clock_skew import describe_future_dated, parse_future_tolerance
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError
from ansible_collections.segura.backup.plugins.module_utils._engine.options import (
    appliance_name,
    build_database,
    build_decryption,
    build_layout,
    build_trust,
    signing_key_path,
)
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.apply import restore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.plan import plan_restore
from ansible_collections.segura.backup.plugins.module_utils._engine.restore.request import RestoreRequest
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import restore_spec
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target


def main():
    module = AnsibleModule(argument_spec=restore_spec(), supports_check_mode=True)
    params = module.params
    absent = deps.missing(list(deps.CORE) + deps.for_target(params["target"]["type"]))
    if absent:
        module.fail_json(msg=missing_required_lib(", ".join(absent)))

    plan = None
    try:
        components = params["components"]
        wants_database = components is None or "database" in components
        own_name = appliance_name(params["appliance"])
        request = RestoreRequest(
            appliance=own_name,
            layout=build_layout(params["appliance"]),
            decryption=build_decryption(params["decryption"]),
            db=build_database(params["database"]) if wants_database else None,
            snapshot=params["snapshot"],
            source_appliance=params["source_appliance"],
            allow_other_appliance=params["allow_other_appliance"],
            components=components,
            restore_sessions=params["restore_sessions"],
            force_version_mismatch=params["force_version_mismatch"],
            pre_commands=[[str(arg) for arg in command] for command in params["pre_commands"]],
            post_commands=[[str(arg) for arg in command] for command in params["post_commands"]],
            command_timeout=params["command_timeout"],
            post_verify=params["post_verify"],
            future_tolerance=parse_future_tolerance(params["future_tolerance"]),
            db_service=(params["database"] or {}).get("service") or "mariadb",
            db_datadir=(params["database"] or {}).get("datadir"),
            trust=build_trust(params["trust"], own_name, signing_key_path(params)),
            special_bits_paths=params["special_bits_paths"],
        )
        with stop_cleanly_on_signals(RESTORE_STOPPED):
            with open_target(params["target"]) as target:
                # Not in check mode: a signed physical snapshot is extracted into staging while verified.
                plan = plan_restore(target, request, extract=not module.check_mode)
                try:
                    summary = plan.summary()
                    if plan.record.future_dated:  # "latest" never takes one: it was asked for by id
                        module.warn("restoring it as asked by id: %s"
                                    % describe_future_dated(plan.record, datetime.now(timezone.utc)))
                    if not plan.ok:
                        module.fail_json(msg="restore refused, nothing was written: %s" % "; ".join(plan.problems),
                                         plan=summary)
                    if module.check_mode:
                        for warning in plan.warnings:
                            module.warn(warning)
                        module.exit_json(changed=plan.would_write(), plan=summary)
                    result = restore(target, request, plan=plan)
                finally:
                    if plan.extracted is not None:  # a stop or error before the swap: its staging folder goes
                        plan.extracted.discard()  # (nothing once the datadir was swapped)
    except BackupError as exc:
        extra = {"plan": plan.summary()} if plan is not None else {}
        commands = getattr(exc, "results", None)
        if commands is not None:
            extra["commands"] = commands
        module.fail_json(msg=str(exc), error=type(exc).__name__, **extra)
    changed = result.pop("changed")
    for warning in result.get("warnings") or []:
        module.warn(warning)
    module.exit_json(changed=changed, plan=summary, restore=result)


if __name__ == "__main__":
    main()
