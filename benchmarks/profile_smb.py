"""Where the SMB writer's time goes: cProfile of one push per share.

    .venv/bin/python benchmarks/profile_smb.py [--mib 256]

Pushes a file of incompressible bytes to the lab's signed and encrypted shares through
SmbTarget.open_write (benchmarks/worker.py under cProfile), as the code runs today (no switch, no
monkeypatch), and writes the top functions by own time to benchmarks/results/<date>-smb-profile.txt.
The writer before its fast path is timed by benchmarks/run.py --only smb_push, from that commit's code.
The lab must be up (python -m tests.lab up).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    env = json.loads(subprocess.run([sys.executable, "-m", "tests.lab", "env"], cwd=REPO, stdout=subprocess.PIPE,
                                    check=True, timeout=60).stdout)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    report = ["SMB writer profile, %s, %d MiB, load average before %.2f %.2f %.2f"
              % (stamp, args.mib, *os.getloadavg())]
    with tempfile.TemporaryDirectory(prefix="segura-smb-profile-") as workdir:
        source = os.path.join(workdir, "payload.bin")
        with open(source, "wb") as handle:
            for _block in range(args.mib):
                handle.write(os.urandom(1024 * 1024))
        for share in ("signed", "encrypted"):
            for label in ("SmbTarget.open_write",):
                name = "profile-%s" % uuid.uuid4().hex[:8]
                profile = os.path.join(workdir, name + ".prof")
                job = {"op": "push", "file": source, "name": name, "profile": profile,
                       "target": {"type": "smb", "server": env["smb_server"], "port": int(env["smb_port"]),
                                  "share": env["smb_share_" + share], "username": env["smb_username"],
                                  "password": env["smb_password"], "encrypt": share == "encrypted"}}
                started = time.perf_counter()
                subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "worker.py")], cwd=REPO,
                               input=json.dumps(job).encode(), stdout=subprocess.DEVNULL, check=True, timeout=600)
                wall = time.perf_counter() - started
                os.remove(os.path.join(env["smb_dir_" + share], name))
                with open(profile + ".txt") as handle:
                    text = handle.read()
                report += ["", "=" * 100, "%s share, %s: %.2f s wall, %.0f MB/s (profiler overhead included)"
                           % (share, label, wall, args.mib * 1.048576 / wall), "=" * 100,
                           text.replace(workdir, "<tmp>")]
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "%s-smb-profile.txt" % stamp)
    with open(path, "w") as handle:
        handle.write("\n".join(report) + "\n")
    print(path)


if __name__ == "__main__":
    main()
