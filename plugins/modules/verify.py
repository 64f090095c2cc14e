#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: verify
short_description: Prove that snapshots of Segura appliances on a backup target are whole
version_added: 0.1.0
description:
  - Checks chosen snapshots on an SMB share, an NFS export or a local directory, and reports per
    snapshot what failed and why.
  - O(mode=quick) streams each stored object once and compares its size and sha256 with the sidecar.
    It needs no key and catches any change of the stored bytes (a flipped bit, a truncated upload, a
    tampered sidecar).
  - O(mode=deep) streams each object once, decrypts it with O(decryption), decompresses it and checks
    every member against C(manifest.json), the database dump's chunks, bytes and sha256, the manifest
    against the sidecar, every session recording the manifest references (present, right size, and right
    sha256 with O(check_session_hashes=true)) and that C(<stem>.sessions.json), which
    M(segura.backup.prune) relies on, equals the manifest's list. Nothing is written to disk.
  - Each result is stored beside its snapshot as C(<stem>.verify.json); M(segura.backup.backup_info)
    shows it, and O(select=sample) uses it to verify the least recently verified snapshots first.
  - The task fails when any chosen snapshot fails, unless O(fail_on_error=false). It fails too when nothing
    was found to verify (an O(appliance) with no snapshot - a name that is not the folder its backups are
    filed under - or an empty target), as a verification that proves nothing does not pass.
author:
  - segura.backup maintainers (@segura-backup)
extends_documentation_fragment:
  - segura.backup.attributes
  - segura.backup.target
  - segura.backup.decryption
  - segura.backup.future_tolerance
  - segura.backup.trust
attributes:
  check_mode:
    support: full
    details:
      - In check mode the snapshots are verified all the same, but no result is stored on the target.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - Every run reads the snapshots again and stores a fresh result (C(changed=true) when a result was
        stored); the snapshots themselves are never modified.
  safe_file_operations:
    support: full
    details:
      - A result is written under a temporary name and renamed over the previous one.
options:
  appliance:
    description:
      - Name of the appliance whose snapshots to verify. Omit it to verify every appliance on the target.
    type: str
  select:
    description:
      - Which snapshots to verify.
      - V(latest) - per appliance, the newest snapshot that has a sidecar (even when it already looks damaged) and
        is not future-dated (see O(future_tolerance)).
      - V(all) - every snapshot that has a sidecar.
      - V(ids) - the snapshots listed in O(ids), whatever their status.
      - V(sample) - per appliance, O(sample_size) snapshots, least recently verified first (never verified
        ones before all others), so nightly samples rotate through the whole history.
    type: str
    choices: [latest, all, ids, sample]
    default: latest
  ids:
    description:
      - Snapshot ids for O(select=ids). An id that is not found fails like a damaged snapshot.
    type: list
    elements: str
  sample_size:
    description:
      - How many snapshots per appliance O(select=sample) verifies.
    type: int
    default: 1
  mode:
    description:
      - V(quick) or V(deep), see the description.
    type: str
    choices: [quick, deep]
    default: quick
  check_session_hashes:
    description:
      - In deep mode, also read every referenced session recording and compare its sha256 (recordings
        are large; by default only presence and size are checked). Each recording is read once per run.
    type: bool
    default: false
  fail_on_error:
    description:
      - Fail the task when any snapshot fails verification. With V(false) the results are returned and
        the task succeeds; check RV(failed_count).
    type: bool
    default: true
requirements:
  - python >= 3.9
  - cryptography (the snapshots' signatures are checked in both modes)
  - zstandard (for O(mode=deep))
notes:
  - O(mode=deep) of an encrypted snapshot needs the private key, which appliances do not hold on
    purpose. Run deep verification from a controller or a vault host that has it - the verify playbook
    and the P(segura.backup.backup#role) role run it on the controller (C(delegate_to) localhost).
seealso:
  - module: segura.backup.backup_info
  - module: segura.backup.snapshot
  - module: segura.backup.restore
"""

EXAMPLES = r"""
- name: Quick check of the newest snapshot of every appliance
  segura.backup.verify:
    target:
      type: smb
      server: backup.example.com
      share: segura
      username: svc-segura-backup
      password: "{{ vault_smb_password }}"

- name: Deep check of three snapshots per appliance, rotating through the history
  segura.backup.verify:
    target:
      type: nfs
      server: nfs.example.com
      export: /exports/segura
    select: sample
    sample_size: 3
    mode: deep
    decryption:
      identity_file: /etc/segura-backup/restore-key.txt
  delegate_to: localhost  # the private key stays on the controller (see the notes)

- name: Deep check of one snapshot, session recordings hashed too, without failing the play
  segura.backup.verify:
    target:
      type: path
      path: /srv/backup_remoto
    appliance: segura-primary
    select: ids
    ids: [1a2b3c4d]
    mode: deep
    check_session_hashes: true
    decryption:
      passphrase: "{{ vault_backup_passphrase }}"
    fail_on_error: false
  register: proof
"""

RETURN = r"""
snapshots:
  description: One result per verified snapshot, newest first.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Snapshot id.
      type: str
    appliance:
      description: Appliance the snapshot belongs to.
      type: str
    object:
      description: File name of the object.
      type: str
    mode:
      description: V(quick) or V(deep).
      type: str
    ok:
      description: Whether the snapshot passed every check.
      type: bool
    problems:
      description: What failed and why, one message each; empty when RV(snapshots[].ok).
      type: list
      elements: str
      sample: ["the object's sha256 is 9f86d0..., the sidecar says 2c26b4..."]
    size:
      description: Bytes of the object that were read.
      type: int
    sha256:
      description: sha256 of those bytes.
      type: str
    duration:
      description: Seconds the check took.
      type: float
    checks:
      description:
        - Details per check (signature, object, archive members, session recordings).
        - C(signature) is V(valid) with the signer's key fingerprint, V(refused) with the reason, or with
          O(trust.allow_unsigned) V(unsigned) or V(invalid) with the reason.
      type: dict
      sample:
        signature: {"status": "valid", "key": "SHA256:2kYw9g+ddj8j8Xi8wMqmDBkF9b53ToNurJ3JcdpPyHQ"}
        object: {"size": 41234567, "sha256": "2c26b4...", "ok": true}
        archive: {"members": 21, "bytes": 180345678, "ok": true}
        sessions: {"referenced": 840, "missing": 0, "wrong_size": 0, "hashed": 0, "wrong_sha256": 0}
    recorded:
      description: Whether the result was stored on the target.
      type: bool
    record_error:
      description: Why the result could not be stored (it keeps its verdict); absent when it was stored.
      type: str
      returned: when the result could not be stored
    index_error:
      description:
        - The warning, naming why, when the appliance's catalog index (see M(segura.backup.backup_info)) was
          not updated after the result was stored; never a failure. Listings then read the files instead.
      type: str
      returned: when the index could not be updated
verified_count:
  description: Number of snapshots verified.
  returned: always
  type: int
failed_count:
  description: Number of snapshots that failed.
  returned: always
  type: int
missing_ids:
  description: Ids asked for with O(select=ids) that are not on the target.
  returned: always
  type: list
  elements: str
"""

from datetime import datetime, timezone

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, deps
from ansible_collections.segura.backup.plugins.module_utils._engine.cancel import stop_cleanly_on_signals
from ansible_collections.segura.backup.plugins.module_utils._engine.clock_skew import describe_future_dated, parse_future_tolerance
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import BackupError
from ansible_collections.segura.backup.plugins.module_utils._engine.options import build_decryption, build_trust
from ansible_collections.segura.backup.plugins.module_utils._engine.specs import verify_spec
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from ansible_collections.segura.backup.plugins.module_utils._engine.verification import require_something_to_verify, select_snapshots, summary, verify_snapshots


def main():
    module = AnsibleModule(argument_spec=verify_spec(), supports_check_mode=True,
                           required_if=[["select", "ids", ["ids"]]])
    params = module.params
    # cryptography checks the signatures in both modes; zstandard decompresses in deep mode only.
    wanted = deps.for_target(params["target"]["type"]) + (list(deps.CORE) if params["mode"] == "deep" else ["cryptography"])
    absent = deps.missing(wanted)
    if absent:
        module.fail_json(msg=missing_required_lib(", ".join(absent)))

    try:
        with stop_cleanly_on_signals("no result was recorded for the snapshot being read"):
            decryption = build_decryption(params["decryption"]) if params["mode"] == "deep" else None
            trust = build_trust(params["trust"])
            with open_target(params["target"]) as target:
                listing = catalog.list_snapshots(target, params["appliance"])
                now = datetime.now(timezone.utc)
                future = listing.flag_future_dated(now, parse_future_tolerance(params["future_tolerance"]))
                chosen, missing = select_snapshots(listing, params["select"], ids=params["ids"],
                                                   sample_size=params["sample_size"])
                where = target.describe()
                require_something_to_verify(listing, chosen, missing, params["appliance"], where,
                                            on_target=catalog.list_appliances(target)[0])
                results = verify_snapshots(target, chosen, params["mode"], decryption=decryption,
                                           check_session_hashes=params["check_session_hashes"],
                                           record_results=not module.check_mode, trust=trust)
    except BackupError as exc:
        module.fail_json(msg=str(exc), error=type(exc).__name__)

    for error in listing.errors:
        module.warn("incomplete listing: %s" % error)
    for record in future:
        module.warn(describe_future_dated(record, now))
    index_warned = set()
    for result in results:
        signature = result.checks.get("signature") or {}
        if signature.get("status") in ("unsigned", "invalid"):
            module.warn("%s/%s is NOT trusted, accepted because trust.allow_unsigned is set: %s"
                        % (result.appliance, result.id, signature.get("reason")))
        if result.record_error:
            module.warn("the result of %s/%s was not stored: %s" % (result.appliance, result.id, result.record_error))
        if result.index_error and result.appliance not in index_warned:
            index_warned.add(result.appliance)
            module.warn(result.index_error)
    failed = [r for r in results if not r.ok]
    outcome = dict(
        changed=any(r.recorded for r in results),
        snapshots=[r.to_dict() for r in results],
        verified_count=len(results),
        failed_count=len(failed) + len(missing),
        missing_ids=missing,
    )
    message = summary(results)
    if missing:
        message = "no snapshot with id %s on the target; %s" % (", ".join(missing), message)
    if (failed or missing) and params["fail_on_error"]:
        module.fail_json(msg=message, **outcome)
    module.exit_json(msg=message, **outcome)


if __name__ == "__main__":
    main()
