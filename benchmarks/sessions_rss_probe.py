"""Peak RSS of one sessions-only snapshot of a large recordings tree over the lab's encrypted SMB share.

    .venv/bin/python benchmarks/sessions_rss_probe.py ROOT SUBPATH RECIPIENT   # twice: first sync, then incremental

ROOT is an appliance root whose var/senhasegura/arz holds the recordings (e.g. 100 folders of 1,000
files of 4 KiB); SUBPATH a fresh folder on the share (remove it afterwards). The lab must be up. Prints
seconds, counts and ru_maxrss of this process. The sessions benchmark in run.py measures the same at
--size full (100,000 recordings in 10 folders: Samba's per-name lookups make that run ~15 minutes).
"""

import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, ".build", "collections"), REPO]

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.layout import ApplianceLayout  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Encryption  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.snapshot import SnapshotRequest, take_snapshot  # noqa: E402
from ansible_collections.segura.backup.plugins.module_utils._engine.targets import open_target  # noqa: E402


def main(root, subpath, recipient):
    env = json.loads(subprocess.run([sys.executable, "-m", "tests.lab", "env"], cwd=REPO, stdout=subprocess.PIPE,
                                    check=True, timeout=60).stdout)
    options = {"type": "smb", "server": env["smb_server"], "port": int(env["smb_port"]),
               "share": env["smb_share_encrypted"], "path": subpath, "username": env["smb_username"],
               "password": env["smb_password"], "encrypt": True}
    request = SnapshotRequest(appliance="scale", layout=ApplianceLayout(root=root),
                              encryption=Encryption.recipients_of([recipient]), components=["sessions"])
    started = time.monotonic()
    with open_target(options) as target:
        done = take_snapshot(target, request)
    print(json.dumps({"seconds": round(time.monotonic() - started, 1), "uploaded": done["counts"]["sessions_uploaded"],
                      "referenced": done["counts"]["sessions_referenced"],
                      "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
