"""Hostile objects on the share (#15 item 6) and honest check modes (item 7), through the real modules.

An object on the share may be crafted by whoever can write there: it must not cost unbounded memory
(300,000 empty members), nor make scrypt spend GiBs; check mode must refuse the options a run refuses.
Every refusal is one clear message, and nothing is written.
"""

import json
import os
import subprocess
import textwrap

from tests.faults.conftest import run_tasks
from tests.integration.playbook import PYTHON, REPO
from tests.unit.test_bounds_and_checks import APPLIANCE, PASSPHRASE, publish_crafted, tar_member

MEMBERS = 300000

_MEASURE = textwrap.dedent("""
    import io, json, resource, sys, tarfile
    sys.path.insert(0, sys.argv[1])
    import zstandard
    from ansible_collections.segura.backup.plugins.module_utils._engine.archive.encryption import Decryption, Encryption
    from ansible_collections.segura.backup.plugins.module_utils._engine.archive.reader import verify

    count, limit = int(sys.argv[2]), int(sys.argv[3]) or None
    raw = io.BytesIO()
    compressor = zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False)
    with tarfile.open(fileobj=compressor, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        header = json.dumps({"format": "segura.backup/1", "id": "badc0de9", "appliance": "box"}).encode()
        info = tarfile.TarInfo("snapshot.json"); info.size = len(header)
        tar.addfile(info, io.BytesIO(header))
        for index in range(count):
            tar.addfile(tarfile.TarInfo("files/etc/senhasegura/m%07d" % index), io.BytesIO(b""))
    compressor.close()
    sealed = io.BytesIO()
    encryptor = Encryption.passphrase("pw", work_factor=4).open_encryptor(sealed)
    encryptor.write(raw.getvalue())
    encryptor.close()
    blob = sealed.getvalue()
    del raw, sealed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = verify(io.BytesIO(blob), Decryption.passphrase("pw"), max_members=limit)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "peak_kib": peak, "ok": report.ok, "problems": report.problems[:1],
                      "members": report.members}))
""")


def _measure(count, limit=0):
    """Peak RSS of a deep verification of an object of ``count`` empty members, in a fresh process."""
    done = subprocess.run([PYTHON, "-c", _MEASURE, os.path.join(REPO, ".build", "collections"), str(count), str(limit)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=500, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_300000_empty_members_cost_little_memory_and_a_lying_count_stops_early():
    measured = _measure(MEMBERS)
    grown = (measured["peak_kib"] - measured["before_kib"]) / 1024.0
    print("300,000 empty members: RSS %.1f MiB before the read, %.1f MiB peak (+%.1f MiB)"
          % (measured["before_kib"] / 1024.0, measured["peak_kib"] / 1024.0, grown))
    assert not measured["ok"] and "manifest.json is missing" in measured["problems"][0], measured
    assert measured["members"] == MEMBERS + 1
    assert grown < 100, "%.1f MiB for %d members (was ~300 MiB)" % (grown, MEMBERS)
    # The sidecar counted 3 members: the fourth ends the read.
    capped = _measure(MEMBERS, limit=3)
    assert "more than 3 members" in capped["problems"][0], capped
    assert (capped["peak_kib"] - capped["before_kib"]) / 1024.0 < 10


def _unsigned():
    return {"allow_unsigned": True}


def test_modules_refuse_hostile_objects_and_bad_options_in_check_mode(tmp_path):
    target_dir = tmp_path / "target"
    root = tmp_path / "root"
    (root / "etc/senhasegura").mkdir(parents=True)
    data = b"x = 1\n"
    heavy = publish_crafted(target_dir, [(tar_member("files/etc/senhasegura/a.conf", data), data)],
                            snap_id="badc0de3", work_factor=12)
    target = {"type": "path", "path": str(target_dir)}
    decryption = {"passphrase": PASSPHRASE, "max_scrypt_work_factor": 11}
    snapshot = {"target": target, "encryption": {"passphrase": "pw"}, "components": ["config"],
                "appliance": {"name": APPLIANCE, "root": str(root), "config_paths": ["etc/senhasegura"]}}
    verify = {"target": target, "appliance": APPLIANCE, "mode": "deep", "select": "ids", "ids": [heavy],
              "decryption": decryption, "trust": _unsigned()}
    restore = {"target": target, "appliance": {"name": APPLIANCE, "root": str(root)}, "components": ["config"],
               "decryption": decryption, "trust": _unsigned()}
    tasks = [
        {"name": "verify", "segura.backup.verify": verify},
        {"name": "restore", "segura.backup.restore": dict(restore, snapshot=heavy)},
        {"name": "snapshot level", "segura.backup.snapshot": dict(snapshot, compression={"level": 30})},
        {"name": "backup_job threads", "segura.backup.backup_job": dict(snapshot, compression={"threads": 9999})},
        {"name": "restore timeout", "segura.backup.restore": dict(restore, command_timeout=0)},
    ]
    before = sorted(os.listdir(str(target_dir / APPLIANCE / "snapshots")))
    results, completed = run_tasks(tasks, check=True)
    assert len(results) == len(tasks), completed.stdout[-3000:] + completed.stderr[-3000:]
    words = {"verify": "scrypt work factor 12 exceeds the allowed maximum 11",
             "restore": "scrypt work factor 12 exceeds the allowed maximum 11",
             "snapshot level": "compression.level must be an integer from -7 to 22",
             "backup_job threads": "compression.threads must be",
             "restore timeout": "command_timeout must be a positive number"}
    for task, result in zip(tasks, results):
        text = json.dumps(result)
        assert result.get("failed"), (task["name"], text[:1000])
        assert "Traceback" not in text and "MODULE FAILURE" not in text, text[:2000]
        assert words[task["name"]] in text, (task["name"], text[:1500])
    assert sorted(os.listdir(str(target_dir / APPLIANCE / "snapshots"))) == before
    assert os.listdir(str(root / "etc/senhasegura")) == []
