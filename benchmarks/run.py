"""Benchmarks of segura.backup side by side with what an admin would do by hand, on the lab.

    .venv/bin/python benchmarks/run.py [--size small|full] [--only NAME ...] [--repeat N]

Benchmarks (NAME): e2e, smb_push, nfs_push, scaling, incremental, catalog, restore, dbmethods, sessions.
Each is run as a baseline (shell tools: mariadb-dump | zstd | age | smbclient, nfs-cp) and as the
collection (plugins/module_utils, in a child process: benchmarks/worker.py), N times, interleaved
(the side that goes first alternates) so both share the machine's noise. Every side is one child
process tree timed with os.wait4: wall time, CPU time (user+sys of the tree), max RSS of the
largest process (ru_maxrss) and the peak summed RSS of the tree (sampled every 0.1 s).
Medians are reported. Results: benchmarks/results/<date>-<size>-<machine>.{json,md}.
Outside the timed part every side's result is checked: pushed files have the source's size, the
incremental sides hold every recording, and both restored sides (files and databases, fingerprinted
with tests/lab/reference.py) equal the source; a difference fails the run (non-zero exit). The SMB
writer "before the fast path" is the code of the commit before it (git archive), not a switch.

The lab (Samba, nfs-ganesha) is started if it is not running and stopped again at the end if
nobody else uses it. Reference appliances get private MariaDB servers on free ports (the lab's
own server is shared with other engineers' tests). Secrets: the SMB password is read from the lab
and handed over in a 0600 smbclient authentication file or on the worker's stdin, never on a
command line.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, ".build", "collections"), REPO]
# Links the collection under .build/ so ansible_collections.segura.backup imports.
import tests.conftest  # noqa: E402,F401  pylint: disable=unused-import

from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target  # noqa: E402
from tests.lab import core as lab_core  # noqa: E402
from tests.lab import reference  # noqa: E402
from tests.lab.mariadb import PORT_ENV, MariaDBService  # noqa: E402

PYTHON = sys.executable
WORKER = os.path.join(REPO, "benchmarks", "worker.py")
RESULTS = os.path.join(REPO, "benchmarks", "results")
APPLIANCE = "bench-appliance"
VERSION = "3.32.0.12"
ALL_COMPONENTS = ["database", "config", "secrets", "sessions"]
MiB = 1024 * 1024
RUN_TIMEOUT = 3600  # seconds one side of one repetition may take
FULL_RUN_MAX_LOAD = 3.0
PROFILE = {"dir": None}  # --profile: where e2e writes a cProfile report of one extra snapshot

SIZES = {
    "small": {"e2e": "100MB", "push_mib": 256, "scaling": ("50MB", "200MB"), "recordings": 1000,
              "recording_bytes": 64 * 1024, "catalog": (20, 100), "dbmethods": ("250MB",), "sessions_scale": 10000},
    # dbmethods: a seed holds ~40 % databases, so 1.25GB and 5GB give ~500 MB and ~2 GB of data in MariaDB.
    "full": {"e2e": "2GB", "push_mib": 1024, "scaling": ("500MB", "2GB"), "recordings": 10000,
             "recording_bytes": 64 * 1024, "catalog": (20, 500), "dbmethods": ("1.25GB", "5GB"),
             "sessions_scale": 100000},
}
BENCHMARKS = ("e2e", "smb_push", "nfs_push", "scaling", "incremental", "catalog", "restore", "dbmethods", "sessions")


def log(message):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), message), file=sys.stderr, flush=True)


# ------------------------------------------------------------------ measuring one process tree
def _descendants_rss_kib(root_pid):
    """Summed RSS (KiB) of root_pid and all its descendants, read from /proc."""
    parents = {}
    rss = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(rss.get(pid, 0) for pid in tree)


def measured(argv, stdin=b"", env=None):
    """Run argv as its own process group; return wall/CPU/memory figures and its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env,
                                start_new_session=True, cwd=REPO)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.wait(0.1):
                peak[0] = max(peak[0], _descendants_rss_kib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
            deadline = time.monotonic() + RUN_TIMEOUT
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.02)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group only
            os.wait4(proc.pid, 0)
            raise
        finally:
            done.set()
            sampler.join()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError("%s failed (exit %d): %s" % (argv[:3], proc.returncode, stderr.strip()[-2000:]))
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_mib": usage.ru_maxrss / 1024.0,
            "tree_rss_mib": peak[0] / 1024.0, "stdout": stdout}


SIGNING = {}  # the run's OpenSSH ed25519 key and an allowed-signers file pinning it for APPLIANCE


def signing_files(workdir):
    """Snapshots are signed and restores trust only the pinned key, as in a deployment."""
    key = os.path.join(workdir, "signing-key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)
    with open(key + ".pub") as handle:
        public = " ".join(handle.read().split()[:2])
    signers = os.path.join(workdir, "allowed-signers")
    with open(signers, "w") as handle:
        handle.write("%s %s\n" % (APPLIANCE, public))
    SIGNING.update(key=key, signers=signers)


def worker(job):
    if job["op"] == "snapshot":
        job = dict(job, signing_key=SIGNING.get("key"))
    elif job["op"] == "restore":
        job = dict(job, signers_file=SIGNING.get("signers"))
    result = measured([PYTHON, WORKER], stdin=json.dumps(job).encode())
    result["result"] = json.loads(result.pop("stdout"))
    return result


def shell(script, env_extra):
    """A bash script with pipefail, variables passed in the environment (no secrets among them)."""
    env = dict(os.environ, **{key: str(value) for key, value in env_extra.items()})
    result = measured(["bash", "-c", "set -euo pipefail\n" + script], env=env)
    result.pop("stdout")
    return result


def median_of(runs, key):
    return statistics.median(run[key] for run in runs)


# ------------------------------------------------------------------ the lab and the data
class Lab:
    """Endpoints of the running lab, an smbclient auth file, and private MariaDB servers."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.state_dir = lab_core.resolve_state_dir()
        self.started_lab = False
        self.lease = None
        self.databases = []
        self.env = None

    def __enter__(self):
        # Only Samba and ganesha are used (databases are private): start and later stop only those, and
        # only when they were not running already.
        status = subprocess.run([PYTHON, "-m", "tests.lab", "status", "--service", "samba", "--service", "ganesha"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60, check=False)
        self.lease = lab_core.take_lease(self.state_dir)
        if status.returncode != 0:
            log("starting the lab (samba, ganesha)")
            subprocess.run([PYTHON, "-m", "tests.lab", "up", "--no-pin", "--service", "samba", "--service",
                            "ganesha"], cwd=REPO, check=True, stdout=subprocess.DEVNULL, timeout=300)
            self.started_lab = True
        self.env = json.loads(subprocess.run([PYTHON, "-m", "tests.lab", "env"], cwd=REPO, stdout=subprocess.PIPE,
                                             check=True, timeout=60).stdout)
        self.auth_file = os.path.join(self.workdir, "smb-auth")
        lab_core.write_private_file(self.auth_file, "username = %s\npassword = %s\n"
                                    % (self.env["smb_username"], self.env["smb_password"]))
        return self

    def __exit__(self, *exc):
        for service in self.databases:
            try:
                service.down()
            except Exception as error:  # noqa: BLE001 - keep stopping the others
                log("could not stop MariaDB %s: %s" % (service.base, error))
        remaining = lab_core.release_lease(self.state_dir, self.lease) if self.lease else 1
        if self.started_lab and remaining == 0:
            log("stopping the lab we started")
            subprocess.run([PYTHON, "-m", "tests.lab", "down", "--service", "samba", "--service", "ganesha"],
                           cwd=REPO, stdout=subprocess.DEVNULL, timeout=300, check=False)
        return False

    def mariadb(self, label):
        old = os.environ.get(PORT_ENV)
        os.environ[PORT_ENV] = str(free_tcp_port())
        try:
            service = MariaDBService(os.path.join(self.workdir, "mariadb-" + label))
        finally:
            if old is None:
                os.environ.pop(PORT_ENV, None)
            else:
                os.environ[PORT_ENV] = old
        self.databases.append(service)
        service.up()
        return service

    def smb(self, share, path):
        encrypted = share == "encrypted"
        return {"type": "smb", "server": self.env["smb_server"], "port": int(self.env["smb_port"]),
                "share": self.env["smb_share_" + share], "path": path, "username": self.env["smb_username"],
                "password": self.env["smb_password"], "encrypt": encrypted}

    def behind_share(self, share, path):
        return os.path.join(self.env["smb_dir_" + share], path)

    def smbclient_args(self, share):
        protection = "encrypt" if share == "encrypted" else "sign"
        return "smbclient //%s/%s -p %s -A %s --client-protection=%s" % (
            self.env["smb_server"], self.env["smb_share_" + share], self.env["smb_port"], self.auth_file, protection)

    def nfs(self, path, version):
        return {"type": "nfs", "server": self.env["nfs_server"], "export": self.env["nfs_export"], "path": path,
                "version": version}


def free_tcp_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_bytes(path):
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(folder, name)).st_size
    return total


def seeded_appliance(lab, label, size_text):
    """A reference appliance (files + a private MariaDB holding mt4 and senhasegura)."""
    service = lab.mariadb(label)
    root = os.path.join(lab.workdir, "appliance-" + label)
    os.makedirs(root)
    started = time.monotonic()
    seeded = reference.seed(root, reference.parse_size(size_text), 1, {"defaults_file": service.defaults_file})
    write_version(root)
    log("seeded %s appliance %s in %.0f s" % (size_text, label, time.monotonic() - started))
    return {"root": root, "defaults_file": service.defaults_file, "service": service, "size": size_text,
            "total_bytes": seeded.get("total_bytes")}


def write_version(root):
    os.makedirs(os.path.join(root, "etc/senhasegura"), exist_ok=True)
    with open(os.path.join(root, "etc/senhasegura/version"), "w") as handle:
        handle.write(VERSION + "\n")


def age_key(workdir):
    key = os.path.join(workdir, "age-key.txt")
    if not os.path.exists(key):
        subprocess.run(["age-keygen", "-o", key], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recipient = subprocess.run(["age-keygen", "-y", key], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    return key, recipient


def interleaved(repeat, sides):
    """Run each side `repeat` times; the side that goes first rotates. sides: {label: callable}."""
    runs = {label: [] for label in sides}
    labels = list(sides)
    for index in range(repeat):
        order = labels[index % len(labels):] + labels[:index % len(labels)]
        for label in order:
            runs[label].append(sides[label](index))
            log("  %s #%d: %.2f s" % (label, index + 1, runs[label][-1]["wall"]))
    return runs


def summary(runs):
    return {"wall_s": median_of(runs, "wall"), "cpu_s": median_of(runs, "cpu"),
            "maxrss_mib": max(run["maxrss_mib"] for run in runs), "tree_rss_mib": max(run["tree_rss_mib"] for run in runs),
            "runs": [{k: v for k, v in run.items() if k != "result"} for run in runs]}


# ------------------------------------------------------------------ a. end to end
BASELINE_SNAPSHOT = r"""
S="$SMBCLIENT"
$S -c "mkdir $DIR" >/dev/null
mariadb-dump --defaults-file="$DEFAULTS" --single-transaction --quick --routines --triggers --events --hex-blob \
    --databases mt4 senhasegura | zstd -q -T0 -3 | age -r "$RECIPIENT" | $S -c "put - $DIR/db.sql.zst.age" >/dev/null
tar -C "$ROOT" -cf - etc/mysql/conf.d/galera.cnf etc/senhasegura var/senhasegura/orbinibkp.conf srv/cache/coba \
    | zstd -q -T0 -3 | age -r "$RECIPIENT" | $S -c "put - $DIR/files.tar.zst.age" >/dev/null
$S -c "prompt OFF; recurse ON; lcd $ROOT/var/senhasegura/arz; mkdir $DIR/sessions; cd $DIR/sessions; mput *" >/dev/null
"""


def baseline_snapshot(lab, appliance, recipient, folder):
    return shell(BASELINE_SNAPSHOT, {"SMBCLIENT": lab.smbclient_args("encrypted"), "DIR": folder,
                                     "DEFAULTS": appliance["defaults_file"], "RECIPIENT": recipient,
                                     "ROOT": appliance["root"]})


def our_snapshot(lab, appliance, recipient, folder, components=tuple(ALL_COMPONENTS), with_db=True, db_method=None):
    return worker({"op": "snapshot", "target": lab.smb("encrypted", folder), "appliance": APPLIANCE,
                   "root": appliance["root"], "defaults_file": appliance["defaults_file"] if with_db else None,
                   "recipient": recipient, "components": components, "db_method": db_method})


def bench_e2e(lab, cfg, repeat, data):
    appliance = data.appliance("e2e", cfg["e2e"])
    _key, recipient = age_key(lab.workdir)

    def side(run):
        def once(index):
            folder = "bench-e2e-%s-%s" % (run.__name__, uuid.uuid4().hex[:8])
            try:
                result = run(lab, appliance, recipient, folder)
                result["share_bytes"] = tree_bytes(lab.behind_share("encrypted", folder))
            finally:
                shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
            return result
        return once

    runs = interleaved(repeat, {"baseline": side(baseline_snapshot), "segura.backup": side(our_snapshot)})
    base, ours = summary(runs["baseline"]), summary(runs["segura.backup"])
    if PROFILE["dir"]:
        # One more run of ours under cProfile (not timed): where the snapshot's time goes.
        folder = "bench-e2e-profile-%s" % uuid.uuid4().hex[:8]
        profile = os.path.join(PROFILE["dir"], "snapshot-%s.prof" % cfg["e2e"])
        try:
            worker({"op": "snapshot", "target": lab.smb("encrypted", folder), "appliance": APPLIANCE,
                    "root": appliance["root"], "defaults_file": appliance["defaults_file"], "recipient": recipient,
                    "components": ALL_COMPONENTS, "profile": profile})
        finally:
            shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
    base["share_bytes"] = median_of(runs["baseline"], "share_bytes")
    ours["share_bytes"] = median_of(runs["segura.backup"], "share_bytes")
    # Time until the last session recording was synced (connect, lock, facts, then the recordings).
    ours["sessions_phase_s"] = statistics.median(run["result"]["sessions_seconds"] or 0 for run in runs["segura.backup"])
    return {"title": "a. end to end snapshot, %s reference appliance, SMB encrypted share" % cfg["e2e"],
            "baseline_label": "mariadb-dump | zstd -T0 | age | smbclient put; tar | zstd | age | put; smbclient mput",
            "ours_label": "snapshot.take_snapshot (database, config, secrets, sessions)",
            "appliance_bytes": appliance["total_bytes"], "baseline": base, "ours": ours,
            "ratios": {"wall (ours/baseline)": ours["wall_s"] / base["wall_s"],
                       "ours: seconds until the sessions were synced (not a ratio)": ours["sessions_phase_s"],
                       "cpu (ours/baseline)": ours["cpu_s"] / base["cpu_s"],
                       "max RSS (ours/baseline)": ours["maxrss_mib"] / base["maxrss_mib"],
                       "tree RSS (ours/baseline)": ours["tree_rss_mib"] / base["tree_rss_mib"],
                       "bytes on share (ours/baseline)": ours["share_bytes"] / base["share_bytes"]}}


# ------------------------------------------------------------------ b. raw SMB push / c. NFS push
def payload(lab, mib):
    path = os.path.join(lab.workdir, "payload-%d.bin" % mib)
    if not os.path.exists(path):
        with open(path, "wb") as handle:
            for _block in range(mib):
                handle.write(os.urandom(MiB))  # incompressible, like an encrypted snapshot
    return path


# The SMB writer as it was before the fast path (4f56efb added _FastWrites): its parent commit's code,
# unpacked from git into a private folder and imported from there (no switch in today's code, no monkeypatch).
BEFORE_FAST_PATH = "4f56efb^"
OLD_PUSH_SCRIPT = r"""
import json, sys, time
job = json.loads(sys.stdin.read())
sys.path.insert(0, job["collections"])
from ansible_collections.segura.backup.plugins.module_utils.targets import open_target
with open_target(job["target"]) as target, open(job["file"], "rb") as source:
    started = time.perf_counter()
    with target.open_write(job["name"]) as sink:
        while True:
            block = source.read(1024 * 1024)
            if not block:
                break
            sink.write(block)
print(json.dumps({"seconds": time.perf_counter() - started, "code": job["commit"]}))
"""


def old_collection(lab, commit):
    """<workdir>/old-<sha>/ansible_collections/segura/backup holding plugins/ of ``commit`` (git archive)."""
    sha = subprocess.run(["git", "rev-parse", "--verify", commit + "^{commit}"], cwd=REPO, stdout=subprocess.PIPE,
                         check=True, text=True, timeout=60).stdout.strip()
    top = os.path.join(lab.workdir, "old-" + sha[:12])
    home = os.path.join(top, "ansible_collections", "segura", "backup")
    if not os.path.isdir(home):
        os.makedirs(home)
        archive = subprocess.run(["git", "archive", sha, "plugins"], cwd=REPO, stdout=subprocess.PIPE, check=True,
                                 timeout=120).stdout
        subprocess.run(["tar", "-x", "-C", home], input=archive, check=True, timeout=120)
    return top, sha


def bench_smb_push(lab, cfg, repeat, data):
    """Every side is one whole child process (wall and wait4 rusage): smbclient, a small Python process
    pushing through today's SmbTarget (benchmarks/worker.py), and one pushing through the SmbTarget of the
    commit before the fast path. Each process starts, connects, pushes and disconnects."""
    source = payload(lab, cfg["push_mib"])
    size = os.path.getsize(source)
    old_top, old_sha = old_collection(lab, BEFORE_FAST_PATH)
    results = []
    for share in ("signed", "encrypted"):
        folder = "bench-push-%s" % uuid.uuid4().hex[:8]
        os.makedirs(lab.behind_share(share, folder))
        shutil.chown(lab.behind_share(share, folder), "backup", "backup")

        def baseline(index, share=share, folder=folder):
            name = "smbclient-%d" % index
            done = shell('$SMBCLIENT -c "put $SOURCE $DIR/$NAME" >/dev/null',
                         {"SMBCLIENT": lab.smbclient_args(share), "SOURCE": source, "DIR": folder, "NAME": name})
            check_pushed(lab, share, folder, name, size)
            return done

        def ours(index, share=share, folder=folder):
            name = "ours-%d" % index
            done = worker({"op": "push", "target": lab.smb(share, folder), "file": source, "name": name})
            check_pushed(lab, share, folder, name, size)
            return done

        def before(index, share=share, folder=folder):
            name = "before-%d" % index
            job = {"target": lab.smb(share, folder), "file": source, "name": name, "collections": old_top,
                   "commit": old_sha}
            done = measured([PYTHON, "-c", OLD_PUSH_SCRIPT], stdin=json.dumps(job).encode())
            done["result"] = json.loads(done.pop("stdout"))
            check_pushed(lab, share, folder, name, size)
            return done

        try:
            runs = interleaved(repeat, {"smbclient put": baseline, "SmbTarget": ours, "SmbTarget before": before})
        finally:
            shutil.rmtree(lab.behind_share(share, folder), ignore_errors=True)
        results.append(push_result("b. raw SMB push of %d MiB, %s share" % (cfg["push_mib"], share),
                                   "smbclient put (%s), whole process" % ("-e" if share == "encrypted" else "signed"),
                                   "SmbTarget.open_write, 1 MiB writes, whole Python process (benchmarks/worker.py)",
                                   runs["smbclient put"], runs["SmbTarget"], size))
        results.append(push_result("b. (before the fast path) raw SMB push of %d MiB, %s share" % (cfg["push_mib"], share),
                                   "smbclient put, whole process",
                                   "SmbTarget.open_write of commit %s (%s, the parent of the fast path's commit, "
                                   "from git archive), whole Python process" % (old_sha[:10], BEFORE_FAST_PATH),
                                   runs["smbclient put"], runs["SmbTarget before"], size))
    return results


def check_pushed(lab, share, folder, name, size):
    """Outside the timed part: the pushed file is on the share, whole."""
    found = os.path.getsize(lab.behind_share(share, folder + "/" + name))
    if found != size:
        raise RuntimeError("push check: %s/%s holds %d bytes, expected %d" % (folder, name, found, size))


def push_result(title, baseline_label, ours_label, base_runs, our_runs, size):
    # Both sides are whole processes (start, connect, transfer, exit): wall time and wait4 rusage on each
    # side. No "transfer only" figure: smbclient has no in-process clock to compare an in-process one with.
    base, ours = summary(base_runs), summary(our_runs)
    base["mb_s"] = size / 1e6 / base["wall_s"]
    ours["mb_s"] = size / 1e6 / ours["wall_s"]
    return {"title": title, "baseline_label": baseline_label, "ours_label": ours_label, "baseline": base, "ours": ours,
            "checked": "after every push (not timed): the file on the share has the source's size; both sides are "
                       "whole processes (wall and wait4 rusage of the child), so no in-process 'transfer only' figure",
            "ratios": {"throughput, whole process (ours/baseline)": ours["mb_s"] / base["mb_s"],
                       "cpu, whole process (ours/baseline)": ours["cpu_s"] / base["cpu_s"]}}


def bench_nfs_push(lab, cfg, repeat, data):
    source = payload(lab, cfg["push_mib"])
    size = os.path.getsize(source)
    folder = "bench-nfs-%s" % uuid.uuid4().hex[:8]
    url = "nfs://%s%s/%s" % (lab.env["nfs_server"], lab.env["nfs_export"], folder)
    with open_target(lab.nfs("", "3")) as target:
        target.makedirs(folder)

    def nfs_cp(index):
        return shell('nfs-cp "$SOURCE" "$URL/nfs-cp-$INDEX?version=3"', {"SOURCE": source, "URL": url, "INDEX": index})

    def ours(version):
        def once(index):
            return worker({"op": "push", "target": lab.nfs(folder, version), "file": source,
                           "name": "ours-v%s-%d" % (version, index)})
        return once

    try:
        runs = interleaved(repeat, {"nfs-cp v3": nfs_cp, "NfsTarget v3": ours("3"), "NfsTarget v4.1": ours("4.1")})
    finally:
        with open_target(lab.nfs("", "3")) as target:  # through a client: ganesha dislikes changes behind it
            for entry in target.listdir(folder):
                target.remove(folder + "/" + entry.name)
            target.rmdir(folder)
    return [push_result("c. NFS v3 push of %d MiB" % cfg["push_mib"], "nfs-cp (libnfs) v3", "NfsTarget (nfs-rs) v3",
                        runs["nfs-cp v3"], runs["NfsTarget v3"], size),
            push_result("c. NFS v4.1 push of %d MiB (reference: nfs-cp over v3; libnfs v4 writes are broken)"
                        % cfg["push_mib"], "nfs-cp (libnfs) v3", "NfsTarget (nfs-rs) v4.1",
                        runs["nfs-cp v3"], runs["NfsTarget v4.1"], size)]


# ------------------------------------------------------------------ d. scaling
def bench_scaling(lab, cfg, repeat, data):
    small_size, big_size = cfg["scaling"]
    one = data.appliance("scale1", small_size)
    four = data.appliance("scale4", big_size)
    _key, recipient = age_key(lab.workdir)

    def side(appliance):
        def once(index):
            folder = "bench-scale-%s" % uuid.uuid4().hex[:8]
            try:
                return our_snapshot(lab, appliance, recipient, folder)
            finally:
                shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
        return once

    runs = interleaved(repeat, {"1x " + small_size: side(one), "4x " + big_size: side(four)})
    first, second = summary(runs["1x " + small_size]), summary(runs["4x " + big_size])
    return {"title": "d. scaling: snapshot of a %s vs a %s appliance (SMB encrypted)" % (small_size, big_size),
            "baseline_label": "segura.backup at 1x (%s)" % small_size, "ours_label": "segura.backup at 4x (%s)" % big_size,
            "baseline": first, "ours": second,
            "ratios": {"time 4x/1x (4 = linear)": second["wall_s"] / first["wall_s"],
                       "max RSS 4x/1x (1 = flat)": second["maxrss_mib"] / first["maxrss_mib"],
                       "tree RSS 4x/1x (1 = flat)": second["tree_rss_mib"] / first["tree_rss_mib"],
                       "appliance bytes 4x/1x": (four["total_bytes"] or 1) / (one["total_bytes"] or 1)}}


# ------------------------------------------------------------------ e. incremental
def make_recordings(arz, first, count, size, day):
    """`count` incompressible recordings named rec-<n>.arz under arz/2025/<MMDD>/ (10 days)."""
    for number in range(first, first + count):
        folder = os.path.join(arz, "2025", "%04d" % (day + number % 10))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "rec-%06d.arz" % number), "wb") as handle:
            handle.write(os.urandom(size))


# The admin's nightly job, incremental as one would write it with the tools of the host (no kernel CIFS
# mount here: LAB.md, kernel mounts only inside a VM; rsync needs a mounted or rsync-daemon target, which an
# SMB share is not): the configuration as one encrypted tar, and only the recordings newer than the stamp
# of the last successful run (find -newer), linked into a staging tree and sent with one smbclient mput
# (recurse makes the day folders). The first run has no stamp and sends every recording.
BASELINE_INCREMENTAL = r"""
tar -C "$ROOT" -cf - etc/mysql/conf.d/galera.cnf etc/senhasegura var/senhasegura/orbinibkp.conf srv/cache/coba \
    | zstd -q -T0 -3 | age -r "$RECIPIENT" | $SMBCLIENT -c "put - $DIR/files-$(date +%s%N).tar.zst.age" >/dev/null
touch "$STAMP.next"
rm -rf "$STAGING" && mkdir -p "$STAGING"
cd "$ROOT/var/senhasegura/arz"
if [ -e "$STAMP" ]; then NEWER=(-newer "$STAMP"); else NEWER=(); fi
find . -type f "${NEWER[@]}" -print0 | xargs -0 -r cp -l --parents -t "$STAGING"
$SMBCLIENT -c "prompt OFF; recurse ON; lcd $STAGING; cd $DIR/sessions; mput *" >/dev/null
mv "$STAMP.next" "$STAMP"
rm -rf "$STAGING"
"""


def bench_incremental(lab, cfg, repeat, data):
    count, size = cfg["recordings"], cfg["recording_bytes"]
    root = os.path.join(lab.workdir, "appliance-incremental")
    source = data.appliance("scale1", cfg["scaling"][0])["root"]
    for top in ("etc", "srv"):
        shutil.copytree(os.path.join(source, top), os.path.join(root, top), symlinks=True)
    os.makedirs(os.path.join(root, "var/senhasegura"))
    shutil.copy2(os.path.join(source, "var/senhasegura/orbinibkp.conf"), os.path.join(root, "var/senhasegura"))
    arz = os.path.join(root, "var/senhasegura/arz")
    make_recordings(arz, 0, count, size, 101)
    # Files written from here on must be newer than a stamp taken now (coarse file system clocks).
    old = time.time() - 10
    for folder, _dirs, names in os.walk(arz):
        for name in names:
            os.utime(os.path.join(folder, name), (old, old))
    new = max(1, count // 100)
    appliance = {"root": root, "defaults_file": None}
    _key, recipient = age_key(lab.workdir)
    components = ["config", "secrets", "sessions"]

    def pair(run, sessions_of):
        def once(index):
            folder = "bench-incr-%s" % uuid.uuid4().hex[:8]
            try:
                first = run(folder, index)
                make_recordings(arz, count, new, size, 201)
                try:
                    second = run(folder, index)
                finally:
                    for day in range(201, 211):
                        shutil.rmtree(os.path.join(arz, "2025", "%04d" % day), ignore_errors=True)
                # Outside the timed part: every recording, old and new, is on the share.
                found = tree_bytes(lab.behind_share("encrypted", sessions_of(folder)))
                if found != (count + new) * size:
                    raise RuntimeError("incremental check: %s holds %d bytes of recordings, expected %d"
                                       % (sessions_of(folder), found, (count + new) * size))
            finally:
                shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
            return {"wall": second["wall"], "cpu": second["cpu"], "maxrss_mib": second["maxrss_mib"],
                    "tree_rss_mib": second["tree_rss_mib"], "first_wall": first["wall"], "first_cpu": first["cpu"]}
        return once

    def ours(folder, index):
        return our_snapshot(lab, appliance, recipient, folder, components=components, with_db=False)

    def by_hand(folder, index):
        sessions = lab.behind_share("encrypted", folder + "/sessions")
        stamp = os.path.join(lab.workdir, "incremental-stamp-%s" % folder)
        if not os.path.isdir(sessions):
            os.makedirs(sessions)
            for path in (os.path.dirname(sessions), sessions):
                shutil.chown(path, "backup", "backup")
        return shell(BASELINE_INCREMENTAL, {"SMBCLIENT": lab.smbclient_args("encrypted"), "DIR": folder,
                                            "RECIPIENT": recipient, "ROOT": root, "STAMP": stamp,
                                            "STAGING": os.path.join(lab.workdir, "incremental-staging")})

    runs = interleaved(repeat, {"baseline": pair(by_hand, lambda folder: folder + "/sessions/2025"),
                                "segura.backup": pair(ours, lambda folder: folder + "/" + APPLIANCE + "/sessions/2025")})
    result = {"title": "e. incremental: second snapshot after 1 %% new recordings (%d files of %d KiB, then +%d)"
                       % (count, size // 1024, new),
              "baseline_label": "tar|zstd|age|smbclient put + smbclient mput of the recordings newer than the last "
                                "run's stamp (find -newer, linked into a staging tree)",
              "ours_label": "snapshot.take_snapshot (config, secrets, sessions)",
              "checked": "after each pair (not timed): the share holds every recording, old and new, on both sides; "
                         "no kernel CIFS mount on this host (LAB.md), so the by-hand side is smbclient with find -newer",
              "ratios": {}}
    for label, key in (("baseline", "baseline"), ("segura.backup", "ours")):
        side = summary(runs[label])
        side["first_wall_s"] = median_of(runs[label], "first_wall")
        result[key] = side
        result["ratios"]["%s: second/first" % label] = side["wall_s"] / side["first_wall_s"]
    result["ratios"]["second snapshot, ours/baseline"] = result["ours"]["wall_s"] / result["baseline"]["wall_s"]
    return result


# ------------------------------------------------------------------ f. catalog
def bench_catalog(lab, cfg, repeat, data):
    appliances, per = cfg["catalog"]
    started = time.monotonic()
    out = subprocess.run([PYTHON, "-m", "benchmarks.catalog_bench", "--appliances", str(appliances),
                          "--per-appliance", str(per)], cwd=REPO, stdout=subprocess.PIPE, check=True,
                         timeout=RUN_TIMEOUT).stdout.decode()
    return {"title": "f. catalog: listing and prune plan over %d snapshots (benchmarks/catalog_bench.py)"
                     % (appliances * per), "table": out.strip(), "seconds": time.monotonic() - started}


# ------------------------------------------------------------------ g. restore
# The by-hand restore brings the recordings' modes back (0750 folders, 0640 files on an appliance) with a
# chmod, since smbclient mget creates them 0755/0644; without it the restored tree differs from the source.
BASELINE_RESTORE = r"""
$SMBCLIENT -E -c "get $DIR/db.sql.zst.age -" | age -d -i "$KEY" | zstd -q -d | mariadb --defaults-file="$DEFAULTS"
$SMBCLIENT -E -c "get $DIR/files.tar.zst.age -" | age -d -i "$KEY" | zstd -q -d | tar -C "$ROOT" -xf -
mkdir -p "$ROOT/var/senhasegura/arz"
$SMBCLIENT -c "prompt OFF; recurse ON; lcd $ROOT/var/senhasegura/arz; cd $DIR/sessions; mget *" >/dev/null
chmod -R u=rwX,g=rX,o= "$ROOT/var/senhasegura/arz"
"""


class RestoreMismatch(RuntimeError):
    """A restored side differs from the source (the benchmark fails)."""


def restored_as_source(source, root, server, label):
    """Fingerprint a restored root and database server; raise RestoreMismatch naming what differs."""
    found = reference.fingerprint(root, {"defaults_file": server.defaults_file})
    problems = []
    for path in sorted(set(source["files"]) | set(found["files"])):
        if source["files"].get(path) != found["files"].get(path):
            problems.append("file %s: source %s, restored %s" % (path, source["files"].get(path),
                                                                 found["files"].get(path)))
    for database in sorted(set(source["databases"]) | set(found["databases"])):
        want, got = source["databases"].get(database), found["databases"].get(database)
        if want == got:
            continue
        if not want or not got:
            problems.append("database %s: source %s, restored %s" % (database, bool(want), bool(got)))
            continue
        for part in sorted(set(want) | set(got)):
            for name in sorted(set(want.get(part, {})) | set(got.get(part, {}))):
                if want.get(part, {}).get(name) != got.get(part, {}).get(name):
                    problems.append("database %s %s %s differs" % (database, part, name))
    if problems:
        raise RestoreMismatch("%s restored something else than the source (%d differences): %s"
                              % (label, len(problems), "; ".join(problems[:8])))
    log("  %s: restored files (%d) and databases match the source" % (label, len(found["files"])))


def bench_restore(lab, cfg, repeat, data):
    appliance = data.appliance("e2e", cfg["e2e"])
    key, recipient = age_key(lab.workdir)
    fresh = lab.mariadb("restore")
    ours_folder, base_folder = "bench-restore-ours-%s" % uuid.uuid4().hex[:8], "bench-restore-base-%s" % uuid.uuid4().hex[:8]
    # Logical, like the by-hand dump: both sides load SQL into the same running fresh server (the physical
    # method, the automatic choice where mariadb-backup fits, is compared in h. dbmethods).
    made_ours = our_snapshot(lab, appliance, recipient, ours_folder, db_method="logical")
    made_base = baseline_snapshot(lab, appliance, recipient, base_folder)
    log("  source snapshots: ours %.1f s, baseline %.1f s" % (made_ours["wall"], made_base["wall"]))

    def fresh_root(index, label):
        drop = b"DROP DATABASE IF EXISTS senhasegura; DROP DATABASE IF EXISTS mt4;"
        subprocess.run(["mariadb", "--defaults-file=" + fresh.defaults_file], input=drop, check=True, timeout=300)
        root = os.path.join(lab.workdir, "restored-%s-%d" % (label, index))
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        write_version(root)
        return root

    # What both sides must bring back: the source's files and databases (tests/lab/reference.py).
    source = reference.fingerprint(appliance["root"], {"defaults_file": appliance["defaults_file"]})

    def ours(index):
        root = fresh_root(index, "ours")
        try:
            done = worker({"op": "restore", "target": lab.smb("encrypted", ours_folder), "appliance": APPLIANCE,
                           "root": root, "defaults_file": fresh.defaults_file, "identity": key})
            restored_as_source(source, root, fresh, "segura.backup #%d" % (index + 1))  # not timed
            return done
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def by_hand(index):
        root = fresh_root(index, "base")
        try:
            done = shell(BASELINE_RESTORE, {"SMBCLIENT": lab.smbclient_args("encrypted"), "DIR": base_folder, "KEY": key,
                                            "DEFAULTS": fresh.defaults_file, "ROOT": root})
            restored_as_source(source, root, fresh, "baseline #%d" % (index + 1))  # not timed
            return done
        finally:
            shutil.rmtree(root, ignore_errors=True)

    try:
        runs = interleaved(repeat, {"baseline": by_hand, "segura.backup": ours})
    finally:
        for folder in (ours_folder, base_folder):
            shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
    base, mine = summary(runs["baseline"]), summary(runs["segura.backup"])
    mine["phases"] = runs["segura.backup"][-1]["result"].get("durations")
    return {"title": "g. restore of the %s appliance into a fresh MariaDB (SMB encrypted share)" % cfg["e2e"],
            "checked": "after every timed restore (not timed): files and databases fingerprinted "
                       "(tests/lab/reference.py) and equal to the source's, on both sides",
            "baseline_label": "smbclient get - | age -d | zstd -d | mariadb; tar -x; smbclient mget; chmod -R "
                              "u=rwX,g=rX,o= of the recordings (mget does not keep modes)",
            "ours_label": "restore.restore of a signed logical snapshot (signature pinned, deep verify first, "
                          "post-verify by re-dump)",
            "baseline": base, "ours": mine,
            "ratios": {"restore wall (ours/baseline)": mine["wall_s"] / base["wall_s"],
                       "restore/snapshot (ours)": mine["wall_s"] / made_ours["wall"],
                       "restore/snapshot (baseline)": base["wall_s"] / made_base["wall"]}}


# ------------------------------------------------------------------ h. the database methods
BY_HAND_LOGICAL_DB = r"""
$SMBCLIENT -c "mkdir $DIR" >/dev/null
mariadb-dump --defaults-file="$DEFAULTS" --single-transaction --quick --routines --triggers --events --hex-blob \
    --databases mt4 senhasegura | zstd -q -T0 -3 | age -r "$RECIPIENT" | $SMBCLIENT -c "put - $DIR/db.sql.zst.age" >/dev/null
"""
BY_HAND_PHYSICAL_DB = r"""
$SMBCLIENT -c "mkdir $DIR" >/dev/null
mariadb-backup --defaults-file="$DEFAULTS" --backup --stream=mbstream --datadir="$DATADIR" 2>/dev/null \
    | zstd -q -T0 -3 | age -r "$RECIPIENT" | $SMBCLIENT -c "put - $DIR/db.mbstream.zst.age" >/dev/null
"""


def bench_dbmethods(lab, cfg, repeat, data):
    """Physical snapshot against both by-hand pipelines; physical restore against the logical one."""
    key, recipient = age_key(lab.workdir)
    results = []
    for size in cfg["dbmethods"]:
        appliance = data.appliance("dbmethods", size)
        db_bytes = tree_bytes(appliance["service"].datadir)
        env = {"SMBCLIENT": lab.smbclient_args("encrypted"), "DEFAULTS": appliance["defaults_file"],
               "RECIPIENT": recipient, "DATADIR": appliance["service"].datadir}

        def side(run, label):
            def once(index):
                folder = "bench-db-%s-%s" % (label, uuid.uuid4().hex[:8])
                try:
                    return run(folder)
                finally:
                    shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
            return once

        def ours(method):
            return lambda folder: worker({"op": "snapshot", "target": lab.smb("encrypted", folder), "appliance": APPLIANCE,
                                          "root": appliance["root"], "defaults_file": appliance["defaults_file"],
                                          "recipient": recipient, "components": ["database"], "db_method": method})

        runs = interleaved(repeat, {
            "by hand, logical": side(lambda folder: shell(BY_HAND_LOGICAL_DB, dict(env, DIR=folder)), "hand-logical"),
            "by hand, physical": side(lambda folder: shell(BY_HAND_PHYSICAL_DB, dict(env, DIR=folder)), "hand-physical"),
            "segura.backup, physical": side(ours("physical"), "ours-physical"),
        })
        snap = {label: summary(found) for label, found in runs.items()}
        restore = _bench_method_restores(lab, appliance, key, recipient, repeat, ours)
        ours_wall = snap["segura.backup, physical"]["wall_s"]
        ratios = {"physical snapshot (ours) / by-hand logical": ours_wall / snap["by hand, logical"]["wall_s"],
                  "physical snapshot (ours) / by-hand physical": ours_wall / snap["by hand, physical"]["wall_s"],
                  "physical restore / logical restore (ours)": restore["physical"]["wall_s"] / restore["logical"]["wall_s"]}
        title = "h. database methods, %s appliance (%.0f MB datadir), SMB encrypted share" % (size, db_bytes / 1e6)
        rows = ["| side | wall (s) | CPU (s) | max RSS (MiB) | tree RSS (MiB) |", "|---|---:|---:|---:|---:|"]
        sides = [("snapshot: " + k, v) for k, v in snap.items()]
        sides += [("restore (database): segura.backup, " + k, v) for k, v in restore.items()]
        for label, found in sides:
            figures = (fmt(found["wall_s"]), fmt(found["cpu_s"]), fmt(found["maxrss_mib"], 0), fmt(found["tree_rss_mib"], 0))
            rows.append("| %s | %s | %s | %s | %s |" % ((label,) + figures))
        rows += ["", "| ratio | value |", "|---|---:|"] + ["| %s | %s |" % (k, fmt(v)) for k, v in ratios.items()]
        rows += ["", "Physical restore phases (last run): %s; logical: %s. The physical side includes starting the "
                 "server on the restored datadir (service none) and one query. Reads of the object: physical %s, "
                 "logical %s." % (restore["physical"]["physical"], restore["logical"]["phases"],
                                  restore["physical"]["object_reads"], restore["logical"]["object_reads"])]
        results.append({"title": title, "snapshot": snap, "restore": restore, "ratios": ratios, "table": "\n".join(rows)})
    return results


def _bench_method_restores(lab, appliance, key, recipient, repeat, ours):
    """Both methods restored from a snapshot of the same data: physical into a stopped private server
    (service none; its start and a query are timed and added), logical into a running one."""
    folders = {"physical": "bench-db-restore-physical-%s" % uuid.uuid4().hex[:8],
               "logical": "bench-db-restore-logical-%s" % uuid.uuid4().hex[:8]}
    for method, folder in folders.items():
        ours(method)(folder)
    # Two servers: a physical restore brings the source's accounts along, which a logical one then could not use.
    servers = {method: lab.mariadb("methods-restore-%s-%s" % (method, uuid.uuid4().hex[:6])) for method in folders}
    root = os.path.join(lab.workdir, "restored-methods")
    os.makedirs(root, exist_ok=True)
    write_version(root)

    def job(method, **extra):
        return dict({"op": "restore", "target": lab.smb("encrypted", folders[method]), "appliance": APPLIANCE,
                     "root": root, "defaults_file": servers[method].defaults_file, "identity": key,
                     "components": ["database"],
                     "restore_sessions": False}, **extra)

    def physical(index):
        server = servers["physical"]
        server.down()
        try:
            done = worker(job("physical", db_service="none", db_datadir=server.datadir))
        finally:
            started = time.perf_counter()
            server.up()
            subprocess.run(["mariadb", "--no-defaults", "--socket=" + server.socket, "--user=root", "-e", "SELECT 1"],
                           check=True, timeout=60, stdout=subprocess.DEVNULL)
            for entry in os.listdir(os.path.dirname(server.datadir)):
                if entry.startswith(os.path.basename(server.datadir) + "."):
                    shutil.rmtree(os.path.join(os.path.dirname(server.datadir), entry))
        done["wall"] += time.perf_counter() - started
        return done

    def logical(index):
        return worker(job("logical"))

    try:
        runs = interleaved(repeat, {"physical": physical, "logical": logical})
    finally:
        for folder in folders.values():
            shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
    found = {method: summary(method_runs) for method, method_runs in runs.items()}
    for method in found:
        found[method]["phases"] = runs[method][-1]["result"].get("durations")
        found[method]["physical"] = (runs[method][-1]["result"].get("physical") or {}).get("durations")
        found[method]["object_reads"] = runs[method][-1]["result"].get("object_reads")
    return found


# ------------------------------------------------------------------ i. first sync of session recordings
# A child process (whole-process wall, CPU and RSS, like smbclient's): SmbTarget.put_files, or the generic
# Target.put_files (open_write + stat + rename per file), over every recording of the tree, read lazily.
PUT_FILES_SCRIPT = r"""
import json, os, sys
sys.path[:0] = [os.path.join(os.getcwd(), ".build", "collections"), os.getcwd()]
import tests.conftest
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import Target, Upload
job = json.loads(sys.stdin.read())

def uploads():
    for folder, dirs, names in os.walk(job["tree"]):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                yield Upload(os.path.relpath(path, job["tree"]), handle.read())

with open_target(job["target"]) as target:
    put = Target.put_files if job["generic"] else type(target).put_files
    files = exists = 0
    for _upload, found in put(target, uploads()):  # results are not kept: they hold the data
        files += 1
        exists += found is not None
    mode = getattr(target, "_put_mode", None)
print(json.dumps({"files": files, "exists": exists, "mode": mode}))
"""
BASELINE_MPUT = '$SMBCLIENT -c "prompt OFF; recurse ON; lcd $TREE; mkdir $DIR; cd $DIR; mput *" >/dev/null'


def _sessions_root(lab, label, count, size):
    """An appliance root holding only a recordings tree of ``count`` files of ``size`` bytes (10 days)."""
    root = os.path.join(lab.workdir, "sessions-" + label)
    arz = os.path.join(root, "var/senhasegura/arz")
    if not os.path.isdir(arz):
        make_recordings(arz, 0, count, size, 101)
    return root, arz


def _our_sessions_snapshot(lab, root, recipient, folder):
    """take_snapshot with components [sessions] (lock, sync, manifest, session list, sidecar), whole process."""
    return worker({"op": "snapshot", "target": lab.smb("encrypted", folder), "appliance": APPLIANCE, "root": root,
                   "defaults_file": None, "recipient": recipient, "components": ["sessions"]})


def bench_sessions(lab, cfg, repeat, data):
    """i. first sync and ii. an incremental one (1 % new) of small recordings; iii. the same at scale."""
    _key, recipient = age_key(lab.workdir)
    results = []
    for label, count, size, sides in (("first", cfg["recordings"], cfg["recording_bytes"], ("generic",)),
                                      ("scale", cfg["sessions_scale"], 4096, ())):
        results.extend(_bench_sessions_at(lab, label, count, size, sides, recipient,
                                          repeat if label == "first" else 1))
    return results


def _bench_sessions_at(lab, label, count, size, sides, recipient, repeat):
    root, arz = _sessions_root(lab, label, count, size)
    new = max(1, count // 100)

    def ours(index):
        folder = "bench-sessions-ours-%s" % uuid.uuid4().hex[:8]
        try:
            first = _our_sessions_snapshot(lab, root, recipient, folder)
            assert first["result"]["counts"]["sessions_uploaded"] == count, first["result"]["counts"]
            make_recordings(arz, count, new, size, 201)
            try:
                second = _our_sessions_snapshot(lab, root, recipient, folder)
            finally:
                for day in range(201, 211):
                    shutil.rmtree(os.path.join(arz, "2025", "%04d" % day), ignore_errors=True)
            assert second["result"]["counts"]["sessions_uploaded"] == new, second["result"]["counts"]
            assert tree_bytes(lab.behind_share("encrypted", folder + "/" + APPLIANCE + "/sessions/2025")) == (count + new) * size
        finally:
            shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
        return dict(first, second_wall=second["wall"], second_cpu=second["cpu"], second_maxrss_mib=second["maxrss_mib"])

    def generic(index):  # the path every file took before put_files was pipelined (still the fallback)
        folder = "bench-sessions-generic-%s" % uuid.uuid4().hex[:8]
        job = {"target": lab.smb("encrypted", folder), "tree": arz, "generic": True}
        try:
            done = measured([PYTHON, "-c", PUT_FILES_SCRIPT], stdin=json.dumps(job).encode())
            done["result"] = json.loads(done.pop("stdout"))
            assert done["result"]["files"] == count and not done["result"]["exists"], done["result"]
        finally:
            shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
        return done

    def smbclient_mput(index):
        folder = "bench-sessions-mput-%s" % uuid.uuid4().hex[:8]
        try:
            done = shell(BASELINE_MPUT, {"SMBCLIENT": lab.smbclient_args("encrypted"), "TREE": arz, "DIR": folder})
            assert tree_bytes(lab.behind_share("encrypted", folder)) == count * size
        finally:
            shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
        return done

    plan = {"smbclient mput": smbclient_mput, "segura.backup": ours}
    if "generic" in sides:
        plan["generic"] = generic
    runs = interleaved(repeat, plan)
    base, side = summary(runs["smbclient mput"]), summary(runs["segura.backup"])
    side["second_wall_s"] = median_of(runs["segura.backup"], "second_wall")
    side["second_maxrss_mib"] = max(run["second_maxrss_mib"] for run in runs["segura.backup"])
    title = "%s. sessions: %d recordings of %d KiB, SMB encrypted share" % ("i" if label == "first" else "iii", count,
                                                                            size // 1024)
    result = [{"title": title + ", first sync then +1 %% (%d new)" % new,
               "baseline_label": "smbclient -e mput of the tree (whole process)",
               "ours_label": "take_snapshot, components [sessions]: lock, sync, manifest, session list, sidecar "
                             "(whole process)",
               "baseline": base, "ours": side,
               "ratios": {"first sync wall (ours/smbclient), target <= 1.5": side["wall_s"] / base["wall_s"],
                          "first sync cpu (ours/smbclient)": side["cpu_s"] / base["cpu_s"],
                          "incremental +1 % wall / first sync wall (ours), target <= 0.05":
                              side["second_wall_s"] / side["wall_s"],
                          "peak RSS MiB, first sync (target < 150)": side["maxrss_mib"],
                          "peak RSS MiB, incremental (target < 150)": side["second_maxrss_mib"]}}]
    if "generic" in sides:
        old = summary(runs["generic"])
        result.append({"title": title + ": the generic path, for the record",
                       "baseline_label": "smbclient -e mput (whole process)",
                       "ours_label": "Target.put_files (generic: open_write + stat + rename per file; the fallback)",
                       "baseline": base, "ours": old, "ratios": {"wall (generic/smbclient)": old["wall_s"] / base["wall_s"]}})
    return result


# ------------------------------------------------------------------ data shared across benchmarks
class Data:
    def __init__(self, lab):
        self.lab = lab
        self.appliances = {}

    def appliance(self, label, size_text):
        """One seeded appliance per size, shared by the benchmarks that use that size."""
        if size_text not in self.appliances:
            self.appliances[size_text] = seeded_appliance(self.lab, size_text.lower(), size_text)
        return self.appliances[size_text]


# ------------------------------------------------------------------ report
def machine():
    with open("/proc/meminfo") as handle:
        mem_kib = int(handle.readline().split()[1])

    def version(module):
        try:
            from importlib.metadata import version as dist_version
            return dist_version(module)
        except Exception:  # noqa: BLE001
            return None

    def tool(argv):
        try:
            return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=10, check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None

    return {"cores": os.cpu_count(), "memory_gib": round(mem_kib / 1024 / 1024, 1), "python": platform.python_version(),
            "kernel": platform.release(), "cpu": _cpu_model(),
            "packages": {name: version(name) for name in ("smbprotocol", "zstandard", "pyrage", "nfs-rs", "cryptography")},
            "tools": {"smbclient": tool(["smbclient", "--version"]), "zstd": tool(["zstd", "--version"]),
                      "age": tool(["age", "--version"]), "mariadb-dump": tool(["mariadb-dump", "--version"]),
                      "nfs-cp": "libnfs-utils"}}


def _cpu_model():
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def fmt(value, digits=2):
    return "-" if value is None else ("%.*f" % (digits, value))


def markdown(report):
    lines = ["# segura.backup benchmarks, size %s, %s" % (report["size"], report["date"]), "",
             "Machine: %(cores)d cores (%(cpu)s), %(memory_gib)s GiB, Python %(python)s, kernel %(kernel)s." % report["machine"],
             "Load average before: %s; after: %s. Repetitions: %d, interleaved; medians (peak memory: max)."
             % (report["load_before"], report["load_after"], report["repeat"]),
             "Packages: %s." % ", ".join("%s %s" % item for item in report["machine"]["packages"].items()),
             "Server and client share the same cores (smbd, ganesha, mariadbd run on this machine).", "",
             "| benchmark | side | what | wall (s) | CPU (s) | max RSS (MiB) | tree RSS (MiB) | MB/s | bytes on share |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    ratio_lines = ["", "| benchmark | ratio | value |", "|---|---|---:|"]
    extra = []
    for name, results in report["results"].items():
        for result in results if isinstance(results, list) else [results]:
            if "error" in result:
                extra += ["", "**%s failed**: %s" % (name, result["error"])]
                continue
            if "table" in result:
                extra += ["", "### " + result["title"], "", result["table"]]
                continue
            for key, label in (("baseline", result["baseline_label"]), ("ours", result["ours_label"])):
                side = result[key]
                wall = side["wall_s"]
                lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    result["title"], key, label, fmt(wall), fmt(side["cpu_s"]), fmt(side["maxrss_mib"], 0),
                    fmt(side["tree_rss_mib"], 0), fmt(side.get("mb_s"), 0), side.get("share_bytes", "-")))
                if "first_wall_s" in side:
                    lines[-1] = lines[-1].replace("| %s |" % label, "| %s (first snapshot %.2f s; row = second) |"
                                                  % (label, side["first_wall_s"]), 1)
            if "checked" in result:
                extra += ["", "%s: checked %s." % (result["title"], result["checked"])]
            for ratio, value in result["ratios"].items():
                ratio_lines.append("| %s | %s | %s |" % (result["title"], ratio, fmt(value)))
    if len(lines) == 8:  # only benchmarks that bring their own table: no empty side-by-side table
        lines = lines[:6]
    if len(ratio_lines) == 3:
        ratio_lines = []
    return "\n".join(lines + ratio_lines + extra) + "\n"


def load_average():
    return "%.2f %.2f %.2f" % os.getloadavg()


def wait_for_quiet_machine(limit_seconds):
    """Full runs need a quiet machine: wait (bounded) for the 1-minute load average to drop below 3."""
    deadline = time.monotonic() + limit_seconds
    while os.getloadavg()[0] > FULL_RUN_MAX_LOAD:
        if time.monotonic() > deadline:
            return False
        log("load average %s > %.0f: waiting" % (load_average(), FULL_RUN_MAX_LOAD))
        time.sleep(30)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="e2e: also profile one snapshot (cProfile) into benchmarks/results/")
    parser.add_argument("--max-wait", type=int, default=900,
                        help="full: seconds to wait for the load average to drop below %.0f" % FULL_RUN_MAX_LOAD)
    parser.add_argument("--keep-going", action="store_true", help="record a failing benchmark and go on")
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    chosen = args.only or list(BENCHMARKS)
    if args.size == "full" and not wait_for_quiet_machine(args.max_wait):
        sys.exit("load average stayed above %.0f for %d s: full run not started (%s)"
                 % (FULL_RUN_MAX_LOAD, args.max_wait, load_average()))
    report = {"size": args.size, "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
              "repeat": args.repeat, "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": machine(), "load_before": load_average(), "results": {}}
    functions = {"e2e": bench_e2e, "smb_push": bench_smb_push, "nfs_push": bench_nfs_push, "scaling": bench_scaling,
                 "incremental": bench_incremental, "catalog": bench_catalog, "restore": bench_restore,
                 "dbmethods": bench_dbmethods, "sessions": bench_sessions}
    workdir = tempfile.mkdtemp(prefix="segura-bench-")
    signing_files(workdir)
    if args.profile:
        PROFILE["dir"] = workdir
    try:
        with Lab(workdir) as lab:
            data = Data(lab)
            for name in chosen:
                log("benchmark %s (%s)" % (name, args.size))
                try:
                    report["results"][name] = functions[name](lab, cfg, args.repeat, data)
                except Exception as error:  # noqa: BLE001
                    if not args.keep_going:
                        raise
                    log("%s failed: %s" % (name, error))
                    report["results"][name] = {"error": str(error)}
        report["load_after"] = load_average()
        os.makedirs(RESULTS, exist_ok=True)
        stem = "%s-%s-%dcpu-%.0fGiB%s" % (
            report["date"][:16].replace(":", ""), args.size, report["machine"]["cores"],
            report["machine"]["memory_gib"], "-" + "-".join(args.only) if args.only else "")
        for name in sorted(os.listdir(workdir)):
            if name.endswith(".prof.txt"):
                shutil.copy(os.path.join(workdir, name), os.path.join(RESULTS, "%s-%s" % (stem, name[:-len(".prof.txt")] + "-profile.txt")))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = markdown(report)
    with open(os.path.join(RESULTS, stem + ".json"), "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    with open(os.path.join(RESULTS, stem + ".md"), "w") as handle:
        handle.write(text)
    print(text)
    log("wrote %s.{json,md}" % os.path.join(RESULTS, stem))
    failed = sorted(name for name, found in report["results"].items() if isinstance(found, dict) and "error" in found)
    if failed:
        sys.exit("benchmarks failed (--keep-going): %s" % ", ".join(failed))


if __name__ == "__main__":
    main()
