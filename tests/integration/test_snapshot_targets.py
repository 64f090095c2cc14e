"""segura.backup.snapshot, run by ansible-playbook, publishes snapshots on every lab target.

Each test uses a fresh sub-path of the share/export, and reads what landed there from behind the
server (the lab's share folders), which is where a person would look too.

Run: .venv/bin/pytest tests/integration/test_snapshot_targets.py
"""

import json
import os
import re
import subprocess
import threading
import time

import pytest

from tests.integration.conftest import APPLIANCE_NAME, age_prelude_sha256, sha256_file, snapshot_args
from tests.integration.playbook import PYTHON, REPO, run_playbook, run_task
from tests.lab import reference
from tests.lab.samba import smbstatus_json
from tests.secret_checks import assert_no_secret

MODULE = "segura.backup.snapshot"
ALL_COMPONENTS = ("database", "config", "secrets", "sessions")


def _recipients(age_identity):
    return {"recipients": [age_identity["recipient"]]}


def _session_files(target):
    """{path below sessions/: (size, mtime_ns, sha256)} of the recordings on the server."""
    top = os.path.join(target.appliance_dir(), "sessions")
    found = {}
    for folder, _dirs, files in os.walk(top):
        for name in files:
            if name.endswith(".arz"):
                path = os.path.join(folder, name)
                info = os.stat(path)
                found[os.path.relpath(path, top)] = (info.st_size, info.st_mtime_ns, sha256_file(path))
    return found


def _recordings(root):
    top = os.path.join(root, "var/senhasegura/arz")
    return {os.path.relpath(os.path.join(folder, name), top): sha256_file(os.path.join(folder, name))
            for folder, _dirs, files in os.walk(top) for name in files}


# ------------------------------------------------------------------ watching smbd while the module runs
def _client_ports_of(marker, server_port):
    """Local TCP ports of connections to `server_port` held by processes whose command line holds
    `marker` (the module's AnsiballZ file lives in a remote-temp folder only this test uses)."""
    ports = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                if marker.encode() not in handle.read():
                    continue
            inodes = set()
            for fd in os.listdir("/proc/%s/fd" % pid):
                link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
            for table in ("tcp", "tcp6"):
                with open("/proc/%s/net/%s" % (pid, table)) as handle:
                    for line in handle.readlines()[1:]:
                        fields = line.split()
                        local, remote, inode = fields[1], fields[2], fields[9]
                        if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                            ports.add(str(int(local.rsplit(":", 1)[1], 16)))
        except OSError:
            continue  # the process ended while we looked
    return ports


class SmbSessionWatcher(threading.Thread):
    """Polls `smbstatus --json` while the module runs and keeps what smbd reports about OUR session.

    Why this way: the SMB session ends when the module exits, so encryption can only be seen while it
    runs. Other engineers' clients use the same lab smbd, so a session is ours only when its client
    port is a port the module's own process holds (from /proc). The sessions component (11 MB of
    recordings) keeps the module connected long enough for several polls; a test that never sees the
    session fails rather than passing quietly.
    """

    def __init__(self, lab, marker):
        super().__init__(daemon=True)
        self.lab = lab
        self.marker = marker
        self.stop = threading.Event()
        self.seen = []  # (session, tcon) pairs of our connection
        self.polls = 0

    def run(self):
        deadline = time.monotonic() + 300  # bounded, whatever happens to the module
        while not self.stop.is_set() and time.monotonic() < deadline:
            ports = _client_ports_of(self.marker, int(self.lab["smb_port"]))
            if ports:
                self.polls += 1
                status = smbstatus_json(self.lab["lab_state"])
                for tcon in status.get("tcons", {}).values():
                    session = status.get("sessions", {}).get(tcon.get("session_id"))
                    if session and session.get("hostname", "").rsplit(":", 1)[-1] in ports:
                        self.seen.append((session, tcon))
            self.stop.wait(0.1)


def _run_watched(lab, tmp_path, args):
    """run_task with a watcher on smbd; returns (TaskResult, watcher)."""
    remote_tmp = str(tmp_path / "ansible-remote-tmp")
    os.makedirs(remote_tmp)
    watcher = SmbSessionWatcher(lab, remote_tmp)
    watcher.start()
    try:
        run = run_task(MODULE, args, extra_env={"ANSIBLE_REMOTE_TEMP": remote_tmp})
    finally:
        watcher.stop.set()
        watcher.join(timeout=60)
    return run, watcher


# ------------------------------------------------------------------ tests
def test_snapshot_is_published_with_a_matching_sidecar(lab, lab_target, reference_appliance, age_identity, tmp_path):
    args = snapshot_args(reference_appliance, lab_target, _recipients(age_identity), components=ALL_COMPONENTS)
    if lab_target.kind.startswith("smb"):
        run, watcher = _run_watched(lab, tmp_path, args)
    else:
        run, watcher = run_task(MODULE, args), None
    assert run.rc == 0, run.output
    snap = run.result["snapshot"]
    assert run.result["changed"] is True

    object_path = os.path.join(lab_target.server_dir, snap["object"])
    sidecar_path = os.path.join(lab_target.server_dir, snap["sidecar"])
    assert os.path.isfile(object_path) and os.path.isfile(sidecar_path)
    assert snap["object"].endswith(".tar.zst.age")
    with open(sidecar_path, encoding="utf-8") as handle:
        sidecar = json.load(handle)
    stored_sha256 = sha256_file(object_path)
    assert sidecar["size"] == os.path.getsize(object_path) == snap["size"]
    assert sidecar["sha256"] == stored_sha256 == snap["sha256"]
    assert sidecar["object"] == os.path.basename(object_path)
    assert sidecar["encryption"] == {"mode": "x25519", "recipients": [age_identity["recipient"]],
                                     "prelude_sha256": age_prelude_sha256(object_path)}
    with open(object_path, "rb") as handle:
        assert handle.read(22) == b"age-encryption.org/v1\n"

    # One object, one sidecar, its signature (and the engine's <stem>.sessions.json list), no partial, the
    # lock released.
    stem = os.path.basename(sidecar_path)[:-len(".json")]
    expected = {os.path.basename(object_path), os.path.basename(sidecar_path), stem + ".json.sig"}
    assert set(lab_target.snapshot_files()) - {stem + ".sessions.json"} == expected
    # The signature is the appliance's, as OpenSSH's own tool sees it (the recovery procedure).
    signers = tmp_path / "signers"
    signers.write_text(reference.signers_text(reference_appliance["root"], APPLIANCE_NAME))
    with open(sidecar_path, "rb") as stdin:
        checked = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", APPLIANCE_NAME,
                                  "-n", "segura-backup", "-s", sidecar_path + ".sig"], stdin=stdin,
                                 capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0 and "Good" in checked.stdout, checked.stdout + checked.stderr
    assert snap["signature"]["file"] == stem + ".json.sig"
    assert not os.path.exists(os.path.join(lab_target.appliance_dir(), "lock"))
    # Every recording is on the target, byte for byte.
    uploaded = {path: entry[2] for path, entry in _session_files(lab_target).items()}
    assert uploaded == _recordings(reference_appliance["root"])
    assert snap["counts"]["sessions_uploaded"] == len(uploaded) == 49

    if lab_target.kind.startswith("smb"):
        assert watcher.seen, "smbstatus never showed the module's session (%d polls)" % watcher.polls
        shares = {tcon["service"] for _session, tcon in watcher.seen}
        assert shares == {lab_target.options["share"]}
        for session, tcon in watcher.seen:
            assert session["username"] == lab["smb_username"]
            assert tcon["signing"]["degree"] == "full"  # signing is always required
            if lab_target.kind == "smb_encrypted":
                assert tcon["encryption"]["degree"] == "full"
                assert tcon["encryption"]["cipher"].startswith("AES-")


def test_check_mode_changes_nothing_and_reports_preflight_ok(lab_target, reference_appliance, age_identity):
    args = snapshot_args(reference_appliance, lab_target, _recipients(age_identity), components=ALL_COMPONENTS)
    first = run_task(MODULE, args)
    assert first.rc == 0, first.output
    before = lab_target.listing(folder_times=True)

    check = run_task(MODULE, args, check=True)
    assert check.rc == 0, check.output
    preflight = check.result["preflight"]
    assert preflight["ok"] is True and preflight["problems"] == []
    assert {"target_reachable", "target_writable", "lock_free", "appliance", "free_space",
            "components"} <= set(preflight["checks"])
    assert all(entry["ok"] for entry in preflight["checks"].values())
    assert "snapshot" not in check.result
    assert lab_target.listing(folder_times=True) == before


@pytest.mark.parametrize("kind", ["smb_signed", "smb_encrypted"])  # the tests run as root: only Samba's account is refused
def test_check_mode_finds_a_folder_it_may_not_write_without_writing(kind, lab_target_factory, reference_appliance,
                                                                    age_identity):
    """The preflight asks the server (an SMB open for the rights to add and delete entries) instead of writing a
    probe file: a folder the account may not write is reported, and no folder's mtime moves."""
    target = lab_target_factory(kind)
    os.makedirs(target.server_dir)
    os.chmod(target.server_dir, 0o555)  # owned by root: Samba's user 'backup' may list, not write
    try:
        before = target.listing(folder_times=True)
        check = run_task(MODULE, snapshot_args(reference_appliance, target, _recipients(age_identity)), check=True)
        assert check.rc != 0
        writable = check.result["preflight"]["checks"]["target_writable"]
        assert writable["ok"] is False and "permission denied" in writable["error"], writable
        assert target.listing(folder_times=True) == before
    finally:
        os.chmod(target.server_dir, 0o755)


def test_check_mode_on_a_target_path_never_used_before(lab_target, reference_appliance, age_identity):
    """A first run's preflight: the sub-path does not exist yet (a real run creates it)."""
    args = snapshot_args(reference_appliance, lab_target, _recipients(age_identity))
    before = lab_target.listing(folder_times=True)
    check = run_task(MODULE, args, check=True)
    assert check.rc == 0, check.output
    assert check.result["preflight"]["ok"] is True
    assert lab_target.listing(folder_times=True) == before


def test_sessions_are_synced_incrementally(lab_target, appliance_copy, age_identity):
    args = snapshot_args(appliance_copy, lab_target, _recipients(age_identity), components=ALL_COMPONENTS)
    first = run_task(MODULE, args)
    assert first.rc == 0, first.output
    assert first.result["snapshot"]["counts"]["sessions_uploaded"] == 49
    after_first = _session_files(lab_target)
    assert len(after_first) == 49

    second = run_task(MODULE, args)
    assert second.rc == 0, second.output
    counts = second.result["snapshot"]["counts"]
    assert (counts["sessions_uploaded"], counts["sessions_skipped"], counts["sessions_referenced"]) == (0, 49, 49)
    assert _session_files(lab_target) == after_first  # not one file rewritten (mtimes included)

    new_relpath = "2025/0104/061500-000050-ssh.arz"
    new_file = os.path.join(appliance_copy["root"], "var/senhasegura/arz", new_relpath)
    os.makedirs(os.path.dirname(new_file))
    with open(new_file, "wb") as handle:
        handle.write(os.urandom(300 * 1024))
    third = run_task(MODULE, args)
    assert third.rc == 0, third.output
    counts = third.result["snapshot"]["counts"]
    assert (counts["sessions_uploaded"], counts["sessions_skipped"], counts["sessions_referenced"]) == (1, 49, 50)
    assert counts["sessions_uploaded_bytes"] == 300 * 1024
    after_third = _session_files(lab_target)
    assert set(after_third) - set(after_first) == {new_relpath}
    assert after_third[new_relpath][2] == sha256_file(new_file)
    assert {path: after_third[path] for path in after_first} == after_first
    files = lab_target.snapshot_files()
    assert len([name for name in files if name.endswith(".tar.zst.age")]) == 3  # three snapshots
    assert len([name for name in files if re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}\.json", name)]) == 3  # sidecars
    assert not [name for name in files if name.endswith(".partial")]


def test_backup_playbook_publishes_a_snapshot(lab_target_factory, reference_appliance, age_identity):
    """playbooks/backup.yml through run_playbook, with an inventory like the demo's."""
    target = lab_target_factory("smb_encrypted")
    host = {
        "ansible_connection": "local",
        "ansible_python_interpreter": PYTHON,
        "backup_appliance": {"name": "ref-appliance", "root": reference_appliance["root"]},
        "backup_database": {"defaults_file": reference_appliance["defaults_file"]},
        "backup_encryption": {"recipients": [age_identity["recipient"]]},
        "backup_target": target.options,
    }
    run = run_playbook(os.path.join(REPO, "playbooks", "backup.yml"),
                       {"segura_appliances": {"hosts": {"lab-appliance": host}}})
    assert run.rc == 0, run.output
    # The backup role publishes the object and its sidecar, then verifies it (quick) and records that.
    files = sorted(name for name in target.snapshot_files() if not name.endswith(".sessions.json"))
    assert len(files) == 4, files  # object, sidecar, signature, verification record
    assert [f for f in files if f.endswith(".tar.zst.age")]
    assert [f for f in files if f.endswith(".verify.json")]
    assert [f for f in files if f.endswith(".json") and not f.endswith(".verify.json")]
    assert_no_secret(run.output, target.options["password"], "the snapshot run's output")
