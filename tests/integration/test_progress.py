"""Progress for people (progress.py): the scheduled job's bar on a terminal, its lines in the journal.

The job (``python -m ...cli``, as the timer's wrapper runs it) backs up the reference appliance (its
databases in a real MariaDB, its files and recordings) to the lab's signed SMB share, encrypted with a
passphrase. On a real pseudo-terminal (os.openpty) it must draw the bar: every phase by name, byte
counts that grow, the previous snapshot's size as the total with a percentage and an ETA, and a last line
naming the snapshot. With stderr a pipe and JOURNAL_STREAM set (what systemd gives a unit), it must write
whole lines at a bounded pace. The module's output (JSON on stdout) must not change. No password or
passphrase may appear anywhere.
"""

import json
import os
import re
import select
import struct
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import COLLECTIONS, ROOT

from ansible_collections.segura.backup.plugins.module_utils._engine.text import describe_bytes

SECRET = "progress-Pa$$ phrase \\ & ! 'q' 42"
ORDER = ["prepare", "sessions", "databases", "config", "secrets", "publish", "verify", "prune"]
CLI = "ansible_collections.segura.backup.plugins.module_utils._engine.cli"
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4}
FRAME = re.compile(r"^\[(\w+)\]  (?:\[[#-]{16}\] +(\d+)%  )?(?:([\d.]+) (B|KiB|MiB|GiB|TiB)(?: / ~([\d.]+ \w+))?)?")


@pytest.fixture
def job_config(request, reference_appliance, lab_target_factory, lab, tmp_path):
    """The job's config file (database method logical, or the test's indirect parameter)."""
    target = lab_target_factory("smb_signed")
    config = {"target": target.options,
              "encryption": {"mode": "passphrase", "passphrase": SECRET},
              "appliance": {"name": reference_appliance["name"], "root": reference_appliance["root"]},
              "database": {"defaults_file": reference_appliance["defaults_file"],
                           "method": getattr(request, "param", "logical")},
              "components": ["database", "config", "secrets", "sessions"],
              "prune": {"keep_last": 5}}
    path = str(tmp_path / "job.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    return {"path": path, "secrets": [SECRET, lab["smb_password"]]}


def _env(**extra):
    env = {key: value for key, value in os.environ.items() if key not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env.update(PYTHONPATH=os.pathsep.join([COLLECTIONS, ROOT]), **extra)
    return env


def _argv(config, *extra):
    return [sys.executable, "-m", CLI, "--config", config, "--no-syslog"] + list(extra)


def _on_terminal(argv, tmp_path, columns=200):
    """Run with stderr on a pseudo-terminal (stdout to a file); (exit status, JSON, terminal text, seconds)."""
    import fcntl
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    out_path = str(tmp_path / ("stdout-%d" % time.monotonic_ns()))
    started = time.monotonic()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=slave, env=_env(), cwd=ROOT)
    os.close(slave)
    received = bytearray()
    deadline = started + 300
    try:
        while time.monotonic() < deadline:
            ready, _w, _x = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the job closed its end
                break
            if not data:
                break
            received += data
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    seconds = time.monotonic() - started
    with open(out_path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 1, lines  # stdout: the result line only, the bar never lands there
    return code, json.loads(lines[0]), received.decode("utf-8"), seconds


def _pieces(text):
    """The bar's frames and the lines phases left, in order (a pty turns \\n into \\r\\n)."""
    return [piece for piece in re.split(r"[\r\n]+", text.replace("\x1b[K", "")) if piece.strip()]


def _bytes(number, unit):
    return float(number) * UNITS[unit]


def _frames(pieces):
    """(phase, percent or None, bytes or None, total text or None) of each bar frame."""
    frames = []
    for piece in pieces:
        match = FRAME.match(piece)
        if match:
            phase, percent, number, unit, total = match.groups()
            frames.append((phase, int(percent) if percent else None, _bytes(number, unit) if number else None, total))
    return frames


def _phase_order(names):
    seen = []
    for name in names:
        if not seen or seen[-1] != name:
            seen.append(name)
    return seen


def test_the_bar_on_a_terminal(job_config, tmp_path):
    # First run, the default pace: no snapshot before it, so no total and no ETA yet.
    code, first, text, seconds = _on_terminal(_argv(job_config["path"]), tmp_path)
    assert code == 0 and first["status"] == "ok", (first, text)
    pieces = _pieces(text)
    frames = _frames(pieces)
    assert frames, text
    # At most 4 frames a second (one tick each 0.25 s; phase ends are lines of their own, not frames).
    assert len(frames) <= seconds / 0.25 + 2, (len(frames), seconds)
    ended = [piece.split(" took ")[0] for piece in pieces if " took " in piece]
    assert ended == ORDER, pieces  # each phase leaves one line, in the job's order
    assert pieces[-1] == "ok: snapshot %s, %s, verified (quick), 0 pruned" % (
        first["snapshot"]["id"], describe_bytes(first["snapshot"]["size"])), pieces[-1]
    # No snapshot before: the database's size (information_schema) is the total of the dump, the object has none.
    assert all(frame[3] for frame in frames if frame[0] == "databases"), frames
    assert not any(frame[3] for frame in frames if frame[0] in ("config", "secrets")), frames

    # Second run, a fast pace: the first snapshot's size is the total of the object's phases.
    code, second, text, _seconds = _on_terminal(_argv(job_config["path"], "--progress-interval", "0.02"), tmp_path)
    assert code == 0 and second["status"] == "ok", (second, text)
    pieces = _pieces(text)
    frames = _frames(pieces)
    assert set(ORDER) <= {frame[0] for frame in frames} | {p.split(" took ")[0] for p in pieces if " took " in p}
    assert [name for name in _phase_order(frame[0] for frame in frames) if name in ORDER] == \
        [name for name in ORDER if name in {frame[0] for frame in frames}]
    # The dump counts what the server sent, against the first snapshot's dump; the object what reached
    # the share, against the first snapshot's size.
    dumped = [frame for frame in frames if frame[0] == "databases" and frame[2] is not None]
    assert dumped and {frame[3] for frame in dumped} == {describe_bytes(first["snapshot"]["counts"]["db_bytes"])}
    counts = [frame[2] for frame in dumped]
    assert counts == sorted(counts) and counts[-1] > counts[0], counts  # the bytes move, never back
    assert any(frame[1] is not None and 0 < frame[1] < 100 for frame in dumped), dumped
    written = [frame for frame in frames if frame[0] in ("config", "secrets") and frame[2] is not None]
    assert {frame[3] for frame in written} <= {describe_bytes(first["snapshot"]["size"])}, written
    verify = [frame for frame in frames if frame[0] == "verify" and frame[2] is not None]
    assert not verify or {frame[3] for frame in verify} == {describe_bytes(second["snapshot"]["size"])}, verify
    assert re.search(r"ETA \d+:\d\d:\d\d", text), text
    assert re.search(r"\d+ uploaded", text)  # the sessions phase counts recordings
    assert pieces[-1].startswith("ok: snapshot %s, " % second["snapshot"]["id"]), pieces[-1]
    for secret in job_config["secrets"]:
        assert secret not in text


def _lines_with_times(proc):
    """Each stderr line with the moment it arrived."""
    got = []

    def read():
        for raw in proc.stderr:
            got.append((time.monotonic(), raw.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return got, reader


def _journal_run(config_path, extra, tmp_path):
    """The job with stderr to a pipe and JOURNAL_STREAM set: (its lines with their times, stdout, seconds)."""
    started = time.monotonic()
    with open(str(tmp_path / "stdout"), "w+", encoding="utf-8") as out:
        proc = subprocess.Popen(_argv(config_path, *extra), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.PIPE, text=True, env=_env(JOURNAL_STREAM="8:424242"), cwd=ROOT)
        got, reader = _lines_with_times(proc)
        try:
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(timeout=30)
        seconds = time.monotonic() - started
        out.seek(0)
        stdout = out.read()
    assert proc.returncode == 0, (stdout, got)
    return got, stdout, seconds


@pytest.mark.parametrize("interval", [0.3, None])
def test_journal_lines_are_whole_and_bounded(job_config, interval, tmp_path):
    extra = ["--progress-interval", str(interval)] if interval else []
    got, stdout, seconds = _journal_run(job_config["path"], extra, tmp_path)
    result = json.loads(stdout)
    lines = [line for _when, line in got]
    assert lines and all(line.startswith("progress: ") for line in lines), lines
    begins = [line.split()[1] for line in lines if " begins" in line]
    assert begins == ORDER, lines  # one line per phase change
    ticks = [(when, line) for when, line in got if " begins" not in line and line != lines[-1]]
    pace = interval or 30.0
    assert len(ticks) <= seconds / pace + 1, (len(ticks), seconds, lines)
    everything = [when for when, _line in got]
    for when, _line in ticks:  # a line between phase changes only once the interval passed since the last
        before = [moment for moment in everything if moment < when]
        assert not before or when - before[-1] >= pace * 0.8, (when - before[-1], lines)
    if interval:
        assert seconds > 4 * pace and len(ticks) >= 2, (seconds, lines)  # a long phase is not silent
        assert any(re.search(r": [\d.]+ \w+ (written|checked|read|read back)", line) for _when, line in ticks), lines
    else:
        assert not ticks, lines  # a run shorter than 30 s: the phase lines only
    assert result["snapshot"]["id"] in lines[-1] and lines[-1].startswith("progress: prune took "), lines[-1]
    # The databases phase counted exactly the dump's bytes (what the sidecar records as db bytes).
    ended = [line for line in lines if "; databases took " in line]
    assert len(ended) == 1 and "(%s)" % describe_bytes(result["snapshot"]["counts"]["db_bytes"]) in ended[0], lines
    for secret in job_config["secrets"]:
        assert secret not in "\n".join(lines) + stdout


def test_no_progress_without_a_terminal_or_journal(job_config):
    """A pipe, no systemd: nothing but the result line (scripts that read stderr see no change)."""
    result = subprocess.run(_argv(job_config["path"]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["status"] == "ok"
    assert "progress" not in result.stderr and "\r" not in result.stderr, result.stderr


def test_the_module_prints_only_its_json_under_systemd(job_config, tmp_path):
    """backup_job run as Ansible runs a module, with systemd's variables set: stdout is its JSON alone."""
    with open(job_config["path"], encoding="utf-8") as handle:
        args = json.load(handle)
    args_path = str(tmp_path / "args.json")
    fd = os.open(args_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    argv = [sys.executable, "-m", "ansible_collections.segura.backup.plugins.modules.backup_job", args_path]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(JOURNAL_STREAM="8:424242", INVOCATION_ID="0" * 32), cwd=ROOT,
                            timeout=300, check=False)
    document = json.loads(result.stdout)  # one JSON document, nothing around it
    assert result.returncode == 0 and not document.get("failed"), document
    assert document["job"]["snapshot"]["id"] and document["changed"] is True
    assert "progress" not in result.stderr and "progress:" not in result.stdout, result.stderr
    assert not any(key.startswith("progress") for key in document)
    for secret in job_config["secrets"]:
        assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize("job_config", ["physical"], indirect=True)
def test_the_physical_stream_is_counted_too(job_config, tmp_path):
    """mariadb-backup's stream, not the dump: the databases phase counts it, whole, against the server's size."""
    got, stdout, _seconds = _journal_run(job_config["path"], ["--progress-interval", "0.2"], tmp_path)
    result = json.loads(stdout)
    assert result["snapshot"]["database"]["method"] == "physical", result["snapshot"]["database"]
    lines = [line for _when, line in got]
    ended = [line for line in lines if "; databases took " in line]
    assert len(ended) == 1 and "(%s)" % describe_bytes(result["snapshot"]["counts"]["db_bytes"]) in ended[0], lines


def test_the_backup_role_says_what_its_long_task_does(reference_appliance, lab_target_factory, lab):
    """playbooks/backup.yml: before the job (one long module call) each appliance's line names its components
    and where they go, without credentials; the long task's name says that it waits for the whole job."""
    from tests.integration.playbook import PYTHON, REPO, run_playbook

    target = lab_target_factory("smb_signed")
    host = {"ansible_connection": "local", "ansible_python_interpreter": PYTHON,
            "backup_appliance": {"name": reference_appliance["name"], "root": reference_appliance["root"]},
            "backup_database": {"defaults_file": reference_appliance["defaults_file"], "method": "logical"},
            "backup_encryption": {"mode": "passphrase", "passphrase": SECRET},
            "backup_components": ["database", "config", "secrets", "sessions"],
            "backup_target": target.options}
    run = run_playbook(os.path.join(REPO, "playbooks", "backup.yml"), {"segura_appliances": {"hosts": {"lab": host}}})
    assert run.rc == 0, run.output
    where = "//%s/%s/%s" % (target.options["server"], target.options["share"], target.options["path"])
    assert ("%s: snapshot of database, config, secrets, sessions to %s, then verify (quick) and no prune."
            % (reference_appliance["name"], where)) in run.stdout.replace("\n", " "), run.stdout
    assert ("TASK [segura.backup.backup : Snapshot, verify and prune in one job, waiting until it ends - "
            "database, config, secrets, sessions to the smb target]") in run.stdout, run.stdout
    for secret in (SECRET, lab["smb_password"]):
        assert secret not in run.output
