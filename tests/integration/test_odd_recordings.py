"""A recordings tree that holds more than recordings: links (inside, escaping, dangling), a hard link,
a FIFO, an unreadable file and a recording that grows while the run reads it. Whatever it holds, the
snapshot is published: partial, with every problem named (issue 13).

The module runs through ansible-playbook on every lab target; the scheduled job (the CLI) runs as
root without the DAC override capabilities, as an unprivileged backup user would, so that the
unreadable file really is unreadable, and its exit codes 0/1/2 are checked.

Run: .venv/bin/pytest tests/integration/test_odd_recordings.py
"""

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from tests.integration.conftest import snapshot_args, trust_args
from tests.integration.playbook import REPO, run_task
from tests.lab import reference

ARZ = "var/senhasegura/arz"
COMPONENTS = ("config", "secrets", "sessions")


class Growing(threading.Thread):
    """Appends to a (large, hence streamed) recording every few ms until stopped: a live session."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.stopped = threading.Event()
        with open(path, "wb") as handle:
            handle.write(os.urandom(8 * 1024 * 1024))

    def run(self):
        with open(self.path, "ab") as handle:
            for _tick in range(60000):  # bounded: 60000 x 2 ms at most
                if self.stopped.wait(0.002):
                    return
                handle.write(b"x" * 512)
                handle.flush()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.join(10)


def _expected_problems(root, planted, growing_relpath, unreadable):
    problems = {os.path.join(root, ARZ, relpath): reason for relpath, (kind, reason) in planted.items()
                if kind == "problem" or (kind == "unreadable" and unreadable)}
    problems[os.path.join(root, ARZ, growing_relpath)] = "changed while being read"
    return problems


def _check_references(sessions_list, planted, appliance):
    """Links are referenced with their text; the hard link points at its first name."""
    by_path = {item["path"]: item for item in sessions_list}
    prefix = "%s/sessions/" % appliance
    for relpath, (kind, text) in planted.items():
        item = by_path.get(prefix + relpath)
        if kind == "symlink":
            assert item and item["type"] == "symlink" and item["target"] == text, item
        elif kind == "hardlink":
            assert item and item["type"] == "hardlink" and item["link"] == prefix + "2025/0101/" + text, item
        elif kind == "problem":
            assert item is None


def test_odd_entries_make_a_partial_snapshot_that_verifies_and_restores(lab_target, appliance_copy, age_identity):
    root = appliance_copy["root"]
    planted = reference.plant_odd_recordings(root)
    growing_relpath = "2025/0103/live-session.arz"
    args = snapshot_args(appliance_copy, lab_target, {"recipients": [age_identity["recipient"]]}, components=COMPONENTS)
    with Growing(os.path.join(root, ARZ, growing_relpath)):
        run = run_task("segura.backup.snapshot", args)
    assert run.rc == 0, run.output
    snap = run.result["snapshot"]
    sessions = snap["sessions"]
    assert sessions["status"] == "partial"
    # as root the mode-000 file is read: only the FIFO and the growing recording are problems
    expected = _expected_problems(root, planted, growing_relpath, unreadable=False)
    assert {p["path"]: p["reason"] for p in sessions["problems"]} == expected
    assert sessions["problem_count"] == len(expected)
    assert any("session recordings partial: 2 entries of the recordings tree" in w for w in run.result["warnings"])
    assert snap["counts"]["sessions_symlinks"] == 4 and snap["counts"]["sessions_hardlinks"] == 1
    assert snap["counts"]["sessions_referenced"] == 49 + 1 + 4 + 1  # recordings, the mode-000 one, links
    # the sidecar and backup_info say the same
    sidecar = json.loads(open(os.path.join(lab_target.appliance_dir(), "snapshots", os.path.basename(snap["sidecar"]))).read())
    assert sidecar["sessions"]["status"] == "partial" and sidecar["sessions"]["problem_count"] == 2
    info = run_task("segura.backup.backup_info", {"target": lab_target.options})
    assert info.rc == 0, info.output
    assert info.result["snapshots"][0]["sessions"]["status"] == "partial"
    with open(os.path.join(lab_target.appliance_dir(), "snapshots",
                           os.path.basename(snap["object"]).replace(".tar.zst.age", ".sessions.json"))) as handle:
        _check_references(json.load(handle)["sessions"], planted, appliance_copy["name"])
    # nothing was uploaded for a link, and no partial is left
    on_server = os.path.join(lab_target.appliance_dir(), "sessions", "2025/0101")
    assert not {"link-inside.arz", "link-escaping.arz", "link-dangling.arz", "hardlink.arz", "pipe.arz"} & set(os.listdir(on_server))
    assert not [name for _d, _s, files in os.walk(lab_target.appliance_dir()) for name in files if name.endswith(".partial")]

    deep = run_task("segura.backup.verify", {"target": lab_target.options, "mode": "deep", "check_session_hashes": True,
                                             "decryption": {"identity_file": age_identity["identity_file"]},
                                             "trust": trust_args(appliance_copy)})
    assert deep.rc == 0, deep.output
    checked = deep.result["snapshots"][0]
    assert checked["ok"], checked["problems"]
    assert checked["checks"]["sessions"]["symlinks"] == 4 and checked["checks"]["sessions"]["hardlinks"] == 1

    # The recordings tree is lost; the restore brings back files, links and the hard link.
    before = {relpath: os.lstat(os.path.join(root, ARZ, relpath)) for relpath in planted}
    shutil.rmtree(os.path.join(root, ARZ))
    os.mkdir(os.path.join(root, ARZ))
    restore = run_task("segura.backup.restore", {
        "target": lab_target.options, "appliance": {"name": appliance_copy["name"], "root": root},
        "database": {"defaults_file": appliance_copy["defaults_file"]}, "components": ["config", "secrets"],
        "restore_sessions": True, "decryption": {"identity_file": age_identity["identity_file"]}})
    assert restore.rc == 0, restore.output
    done = restore.result["restore"]
    assert done["verification"]["ok"], done["verification"]
    refused = {item["path"]: item["reason"] for item in done["sessions"]["refused"]}
    assert set(refused) == {"/" + ARZ + "/2025/0101/link-escaping.arz", "/" + ARZ + "/2025/0101/link-absolute.arz"}
    assert all(reason.startswith("symbolic link not restored") for reason in refused.values())
    assert any("link-escaping.arz: symbolic link not restored" in w for w in restore.result["warnings"])
    day = os.path.join(root, ARZ, "2025/0101")
    assert os.readlink(os.path.join(day, "link-inside.arz")) == planted["2025/0101/link-inside.arz"][1]
    assert os.readlink(os.path.join(day, "link-dangling.arz")) == "recorded-elsewhere.arz"
    assert not os.path.lexists(os.path.join(day, "link-escaping.arz"))
    first = os.path.join(day, planted["2025/0101/hardlink.arz"][1])
    assert os.stat(os.path.join(day, "hardlink.arz")).st_ino == os.stat(first).st_ino  # a hard link again
    assert before["2025/0101/hardlink.arz"].st_size == os.stat(first).st_size
    assert not os.path.lexists(os.path.join(day, "pipe.arz"))


CLI_RUN = r"""
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.segura.backup.plugins.module_utils._engine import cli
raise SystemExit(cli.main(["--config", sys.argv[2], "--no-syslog"]))
"""


def _scheduled_job(config, tmp_path, unprivileged=True):
    """The timer's command (cli.main) with the given config; (exit code, the JSON line)."""
    path = str(tmp_path / ("job-%d.json" % len(os.listdir(tmp_path))))
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        json.dump(config, handle)
    argv = [sys.executable, "-c", CLI_RUN, os.path.join(REPO, ".build", "collections"), path]
    if unprivileged:
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search",
                "--"] + argv
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300, check=False)
    lines = result.stdout.decode().strip().splitlines()
    assert lines, result.stderr.decode()
    return result.returncode, json.loads(lines[-1])


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed")
def test_scheduled_job_exits_0_complete_1_published_with_warnings_2_failed(
        lab_target_factory, appliance_copy, age_identity, tmp_path):
    target = lab_target_factory("smb_encrypted")
    root = appliance_copy["root"]
    config = {"target": target.options, "encryption": {"recipients": [age_identity["recipient"]]},
              "appliance": {"name": appliance_copy["name"], "root": root}, "components": list(COMPONENTS),
              "verify": {"mode": "quick"}}
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    code, line = _scheduled_job(config, jobs)
    assert (code, line["status"]) == (0, "ok"), line
    assert line["snapshot"]["sessions"]["status"] == "complete"

    planted = reference.plant_odd_recordings(root)
    code, line = _scheduled_job(config, jobs)
    assert (code, line["status"]) == (1, "warning"), line
    sessions = line["snapshot"]["sessions"]
    reasons = {p["path"]: p["reason"] for p in sessions["problems"]}
    assert reasons == {os.path.join(root, ARZ, relpath): reason for relpath, (kind, reason) in planted.items()
                       if kind in ("problem", "unreadable")}  # without DAC override, mode 000 is unreadable
    assert line["verify"]["ok"] is True

    code, line = _scheduled_job(dict(config, sessions={"on_problem": "fail"}), jobs)
    assert (code, line["status"]) == (2, "failed"), line
    assert "sessions.on_problem is fail; nothing was published" in line["message"]
    assert "pipe.arz: is a FIFO" in line["message"]
    published = [name for name in target.snapshot_files() if name.endswith(".tar.zst.age")]
    assert len(published) == 2  # the failed run left nothing behind
