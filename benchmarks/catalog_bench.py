"""How long listing and pruning take over many snapshots: 20 appliances x 500 snapshots (10,000).

Creates tiny fake objects with valid sidecars (catalog.AtomicUpload + catalog.publish_sidecar) on
  - a path target (a fresh temporary directory), and
  - the lab's encrypted SMB share: the files are created through a local PathTarget on the folder
    behind smbd (same catalog helpers, seconds instead of minutes), then everything is timed over SMB.
Then times, median of 3 runs each:
  - backup_info's listing: catalog.list_snapshots(read_sidecars=True), one sidecar read per snapshot;
  - the listing by presence alone: catalog.list_snapshots(read_sidecars=False);
  - a prune plan (check mode): pruning.prune(dry_run=True) with keep_daily=7, keep_weekly=4, keep_monthly=12;
  - the catalog index: built once for every appliance (catalog.refresh_index), then backup_info's listing
    with it (list_snapshots(use_index=True)), checked equal to the listing that read every sidecar;
  - by hand, on SMB: smbclient's recursive ls of the same folders.
Prints a markdown table. The lab must be up (`python -m tests.lab status`): when it is not, or its SMB
share does not answer, the benchmark fails (exit 2) instead of leaving SMB out.

Run: .venv/bin/python -m benchmarks.catalog_bench [--appliances 20] [--per-appliance 500]
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, ".build", "collections"), REPO]
# Links the collection under .build/ so ansible_collections.segura.backup imports.
import tests.conftest  # noqa: E402,F401  pylint: disable=unused-import

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, pruning, retention  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget  # noqa: E402

NOW = datetime.now(timezone.utc).replace(microsecond=0)
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
POLICY = retention.Policy(keep_daily=7, keep_weekly=4, keep_monthly=12)
PAYLOAD = b"fake object " * 8


def populate(target, appliances, per_appliance):
    """``per_appliance`` snapshots per appliance, one every 6 hours back from now."""
    for number in range(appliances):
        appliance = "bench-%02d" % number
        for index in range(per_appliance):
            created = NOW - timedelta(hours=6 * index, minutes=number)
            name = catalog.object_name(created, catalog.new_snapshot_id(), True)
            with catalog.AtomicUpload(target, catalog.object_path(appliance, name)) as upload:
                upload.write(PAYLOAD)
            catalog.publish_sidecar(target, catalog.Sidecar(
                id=catalog.parse_object_name(name)[1], appliance=appliance, created=created, object=name,
                size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                components=["database", "config", "secrets"], counts={"files": 1, "members": 4}, bytes_in=1000,
                versions={"appliance": "3.32.0.12", "tool": "0.1.0"},
                encryption={"mode": "x25519", "recipients": [RECIPIENT]},
                db={"chunks": 1, "bytes": 900, "sha256": "a" * 64}, sessions={"count": 0, "bytes": 0}, duration=1.0))


def median_seconds(function, runs=3):
    times = []
    for dummy in range(runs):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure(label, make_target, expected):
    rows = []
    with make_target() as target:
        full_time, listing = median_seconds(lambda: catalog.list_snapshots(target))
        assert listing.complete and len(listing.snapshots) == expected, (listing.errors[:3], len(listing.snapshots))
        assert all(r.complete for r in listing.snapshots)
        rows.append((label, "backup_info listing (every sidecar read)", expected, full_time, expected))
        light_time, light = median_seconds(lambda: catalog.list_snapshots(target, read_sidecars=False))
        assert len(light.snapshots) == expected
        rows.append((label, "listing by presence (no file read)", expected, light_time, 0))
        plan_time, outcomes = median_seconds(lambda: pruning.prune(target, POLICY, now=NOW, dry_run=True))
        assert all(o.error is None for o in outcomes), [o.error for o in outcomes if o.error][:3]
        kept = sum(len(o.plan.kept) for o in outcomes)
        removed = sum(len(o.plan.remove) for o in outcomes)
        reads = sum(o.plan.sidecars_read for o in outcomes)
        rows.append((label, "prune plan (keep %d, remove %d)" % (kept, removed), expected, plan_time, reads))
        # The catalog index, as snapshot, verify and prune leave it: built once (timed apart), then used.
        started = time.perf_counter()
        built = [catalog.refresh_index(target, name) for name in catalog.list_appliances(target)[0]]
        assert all(b.get("written") for b in built), built[:3]
        rows.append((label, "catalog index built from nothing, every appliance (once)", expected,
                     time.perf_counter() - started, expected))
        indexed_time, indexed = median_seconds(lambda: catalog.list_snapshots(target, use_index=True))
        assert _shown(indexed) == _shown(listing), "the indexed listing differs from the one that read every file"
        used = sum(index.used for index in indexed.indexes.values())
        read = sum(index.read for index in indexed.indexes.values())
        assert used == expected and read == 0, (used, read)
        rows.append((label, "backup_info listing with the catalog index (%d index files read, %d copies used)"
                     % (len(indexed.indexes), used), expected, indexed_time, 0))
    return rows


def _shown(listing):
    return json.dumps(listing.to_dict(NOW), sort_keys=True, default=str)


def playbook_rows(options, expected):
    """One backup_info task as users run it: the whole ansible-playbook process (its start-up included),
    with the index (built by measure()) and include_snapshots false or true, and without the index."""
    cases = [("use_index, include_snapshots=false", {"include_snapshots": False}),
             ("use_index, every record returned", {}),
             ("use_index=false, every record returned", {"use_index": False})]
    walls = {label: [] for label, dummy in cases}
    with tempfile.TemporaryDirectory(prefix="segura-bench-play-") as private:
        os.chmod(private, 0o700)
        variables = os.path.join(private, "target.json")  # the share's password: a 0600 file, never argv
        with open(os.open(variables, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
            json.dump({"bench_target": options}, handle)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, ".build", "collections"),
                   PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ["PATH"],
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_LOCAL_TEMP=os.path.join(private, "tmp"))
        for dummy in range(3):  # interleaved
            for label, extra in cases:
                play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "vars_files": [variables],
                         "tasks": [{"segura.backup.backup_info": dict({"target": "{{ bench_target }}"}, **extra),
                                    "register": "listed", "no_log": True},
                                   {"ansible.builtin.assert": {"that": [
                                       "listed.appliances | map(attribute='snapshots') | sum == %d" % expected]}}]}]
                path = os.path.join(private, "play.json")
                with open(path, "w", encoding="utf-8") as handle:
                    json.dump(play, handle)
                started = time.perf_counter()
                subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "-i", "localhost,", path],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=True)
                walls[label].append(time.perf_counter() - started)
    return [("smb (encrypted)", "backup_info task via ansible-playbook (whole process), %s" % label, expected,
             statistics.median(walls[label]), 0 if "use_index," in label else expected) for label, dummy in cases]


def smbclient_listing(lab, subdir):
    """By hand: smbclient's recursive ls of the same folder (names and sizes; it reads no file)."""
    with tempfile.TemporaryDirectory(prefix="segura-bench-auth-") as private:
        auth = os.path.join(private, "auth")
        with open(os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
            handle.write("username = %s\npassword = %s\n" % (lab["smb_username"], lab["smb_password"]))
        command = ["smbclient", "//%s/%s" % (lab["smb_server"], lab["smb_share_encrypted"]), "-p", str(lab["smb_port"]),
                   "-A", auth, "--client-protection=encrypt", "-c", "cd %s; recurse ON; ls" % subdir]

        def run():
            out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, check=True).stdout
            return out.count(b".json")

        return median_seconds(run)


def _give_to_share_owner(folder, share_dir):
    owner = os.stat(share_dir)
    for root, dirs, files in os.walk(folder):
        for name in [root] + [os.path.join(root, entry) for entry in dirs + files]:
            os.chown(name, owner.st_uid, owner.st_gid)


def lab_env():
    """The running lab's endpoints; exits (status 2) with the reason when Samba is not up."""
    status = subprocess.run([sys.executable, "-m", "tests.lab", "status", "--service", "samba"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False)
    if status.returncode != 0:
        sys.stderr.write("catalog_bench: the lab's Samba is not running, so the SMB half cannot be measured; start "
                         "it (.venv/bin/python -m tests.lab up --service samba) or run benchmarks/run.py --only "
                         "catalog, which starts it.\n%s\n" % status.stdout.strip()[-1000:])
        sys.exit(2)
    try:
        out = subprocess.run([sys.executable, "-m", "tests.lab", "env"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, timeout=60, check=True).stdout
        return json.loads(out)
    except (subprocess.SubprocessError, ValueError) as error:
        sys.stderr.write("catalog_bench: could not read the lab's endpoints (python -m tests.lab env): %s\n" % error)
        sys.exit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appliances", type=int, default=20)
    parser.add_argument("--per-appliance", type=int, default=500)
    args = parser.parse_args()
    expected = args.appliances * args.per_appliance
    rows = []
    lab = lab_env()  # a lab that is down fails here, before any work: SMB is never left out

    local = tempfile.mkdtemp(prefix="segura-bench-")
    try:
        started = time.perf_counter()
        with PathTarget(local) as target:
            populate(target, args.appliances, args.per_appliance)
        print("path: created %d snapshots in %.1f s" % (expected, time.perf_counter() - started), file=sys.stderr)
        rows += measure("path", lambda: PathTarget(local), expected)
    finally:
        shutil.rmtree(local, ignore_errors=True)

    subdir = "bench-%s" % uuid.uuid4().hex[:12]
    behind = os.path.join(lab["smb_dir_encrypted"], subdir)
    os.makedirs(behind)
    try:
        started = time.perf_counter()
        with PathTarget(behind, file_mode=0o644, dir_mode=0o755) as target:  # smbd's account must read them
            populate(target, args.appliances, args.per_appliance)
        print("smb: created %d snapshots in %.1f s" % (expected, time.perf_counter() - started), file=sys.stderr)
        _give_to_share_owner(behind, lab["smb_dir_encrypted"])  # smbd's account writes the catalog index there
        options = {"type": "smb", "server": lab["smb_server"], "port": int(lab["smb_port"]),
                   "share": lab["smb_share_encrypted"], "path": subdir, "username": lab["smb_username"],
                   "password": lab["smb_password"], "encrypt": True, "timeout": 30}
        rows += measure("smb (encrypted)", lambda: open_target(options), expected)
        rows += playbook_rows(options, expected)
        by_hand, sidecars = smbclient_listing(lab, subdir)
        assert sidecars >= expected, sidecars
        rows.append(("smb (encrypted)", "by hand: smbclient recursive ls of the same folders (no file read)", expected,
                     by_hand, 0))
    finally:
        shutil.rmtree(behind, ignore_errors=True)

    print("| target | operation | snapshots | median of 3 (s) | sidecars read |")
    print("|---|---|---:|---:|---:|")
    for label, operation, count, seconds, reads in rows:
        print("| %s | %s | %d | %.2f | %d |" % (label, operation, count, seconds, reads))


if __name__ == "__main__":
    main()
