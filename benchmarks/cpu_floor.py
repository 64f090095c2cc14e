"""Where the floor of a physical snapshot's wall time is on this machine: CPU-seconds, not waiting.

    .venv/bin/python benchmarks/cpu_floor.py [--size 1.25GB] [--repeat 3]

The lab's Samba runs on the same cores as the client, so a side's real cost is its own process tree's
CPU plus what smbd spent receiving it. Both sides are run interleaved (the by-hand `mariadb-backup |
zstd -T0 -3 | age | smbclient put` of benchmarks/run.py, and segura.backup's worker), and for each run
this prints: wall, the client tree's CPU (wait4), smbd's CPU (its own and its reaped children's, from
/proc), their sum, and the sum divided by the cores - the wall no scheduling can beat. It also times
what only our side does on purpose: the sha256 of every database chunk and of the whole stream (two
passes over the data, the manifest's integrity record), measured alone on the same number of bytes.
"""

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (benchmarks/run.py: the lab, the data, the by-hand pipeline)

TICK = os.sysconf("SC_CLK_TCK")


def smbd_cpu(conf):
    """CPU-seconds of the lab's smbd master and its reaped children (connection processes)."""
    total = 0.0
    for pid in bench.lab_core.pids_with_argument(conf):
        try:
            with open("/proc/%d/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if os.path.basename((bench.lab_core.pid_cmdline(pid) or [""])[0]) == "smbd":
            total += sum(int(value) for value in fields[11:15]) / TICK  # utime stime cutime cstime
    return total


def hashing_seconds(size):
    """The CPU of sha256 over ``size`` bytes twice (each chunk, and the whole stream), in 16 MiB chunks."""
    chunk = os.urandom(16 * 1024 * 1024)
    whole = hashlib.sha256()
    started = time.process_time()
    for _round in range(max(1, size // len(chunk))):
        whole.update(chunk)
        hashlib.sha256(chunk).digest()
    return time.process_time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1.25GB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="segura-cpu-floor-", dir="/var/tmp")
    bench.signing_files(workdir)
    cores = os.cpu_count() or 1
    rows = {"by hand": [], "segura.backup": []}
    try:
        with bench.Lab(workdir) as lab:
            appliance = bench.Data(lab).appliance("dbmethods", args.size)
            _key, recipient = bench.age_key(lab.workdir)
            conf = lab.env["smb_conf"]
            env = {"SMBCLIENT": lab.smbclient_args("encrypted"), "DEFAULTS": appliance["defaults_file"],
                   "RECIPIENT": recipient, "DATADIR": appliance["service"].datadir}
            db_bytes = bench.tree_bytes(appliance["service"].datadir)

            def by_hand(folder):
                return bench.shell(bench.BY_HAND_PHYSICAL_DB, dict(env, DIR=folder))

            def ours(folder):
                return bench.worker({"op": "snapshot", "target": lab.smb("encrypted", folder),
                                     "appliance": bench.APPLIANCE, "root": appliance["root"],
                                     "defaults_file": appliance["defaults_file"], "recipient": recipient,
                                     "components": ["database"], "db_method": "physical"})

            for index in range(args.repeat):
                order = [("by hand", by_hand), ("segura.backup", ours)]
                for label, side in (order if index % 2 == 0 else order[::-1]):
                    folder = "cpu-floor-%s" % uuid.uuid4().hex[:8]
                    before = smbd_cpu(conf)
                    done = side(folder)
                    server = smbd_cpu(conf) - before
                    shutil.rmtree(lab.behind_share("encrypted", folder), ignore_errors=True)
                    rows[label].append((done["wall"], done["cpu"], server))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("physical snapshot of %s (%.0f MB datadir), encrypted SMB share, %d cores, medians of %d"
          % (args.size, db_bytes / 1e6, cores, args.repeat))
    print("| side | wall (s) | client CPU (s) | smbd CPU (s) | machine CPU (s) | floor = machine CPU / cores (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {}
    for label, found in rows.items():
        wall, cpu, server = (statistics.median(values) for values in zip(*found))
        medians[label] = (wall, (cpu + server) / cores)
        print("| %s | %.2f | %.2f | %.2f | %.2f | %.2f |" % (label, wall, cpu, server, cpu + server, (cpu + server) / cores))
    print("wall ratio %.2f; floor ratio %.2f (ours' floor / by-hand's wall %.2f)"
          % (medians["segura.backup"][0] / medians["by hand"][0], medians["segura.backup"][1] / medians["by hand"][1],
             medians["segura.backup"][1] / medians["by hand"][0]))
    print("sha256 of every chunk and of the whole stream (the manifest's record), alone: %.2f CPU-s for %.0f MB"
          % (hashing_seconds(db_bytes), db_bytes / 1e6))


if __name__ == "__main__":
    main()
