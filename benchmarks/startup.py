"""What a module costs before it moves a byte (#14 item 3), side by side with ansible.builtin.ping.

    .venv/bin/python benchmarks/startup.py [--tasks 20] [--repeat 5] [--label before]

For each of the collection's modules a run takes on every appliance (backup_job, snapshot,
backup_info, verify, prune) it prints:
- the AnsiballZ payload Ansible sends for one task (bytes; ping's for reference; built and kept before the
  module checks its arguments, so it is called without any);
- the import time of the module on the target's Python (``python -X importtime``, its cumulative line,
  median of ``--repeat``; the interpreter's own start-up left out), and its largest direct imports;
- the wall of one ansible-playbook play of ``--tasks`` tasks of ``segura.backup.backup_info`` on an
  empty path target against the same play of ``ansible.builtin.ping``, interleaved, medians: the
  difference divided by the tasks is what one call costs users over ping's.
Nothing here needs the lab: the modules run on localhost (connection local) with the venv's Python.
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
COLLECTIONS = os.path.join(REPO, ".build", "collections")
MODULES = ("backup_job", "snapshot", "backup_info", "verify", "prune")


def env(workdir, **extra):
    values = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, HOME=workdir, ANSIBLE_LOCAL_TEMP=os.path.join(workdir, "local"),
                  ANSIBLE_REMOTE_TEMP=os.path.join(workdir, "remote"), PATH=VENV_BIN + os.pathsep + os.environ["PATH"],
                  ANSIBLE_PYTHON_INTERPRETER=PYTHON, ANSIBLE_NOCOLOR="1")
    values.update(extra)
    return values


def payload_bytes(workdir, module, args):
    """Size of the AnsiballZ file Ansible writes for one task (kept with ANSIBLE_KEEP_REMOTE_FILES)."""
    keep = os.path.join(workdir, "keep-" + module.replace(".", "-"))
    argv = [os.path.join(VENV_BIN, "ansible"), "localhost", "-c", "local", "-m", module] + (["-a", json.dumps(args)] if args else [])
    subprocess.run(argv,
                   env=env(workdir, ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TEMP=keep), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=300, check=False)
    found = glob.glob(os.path.join(keep, "*", "AnsiballZ_*.py"))
    if len(found) != 1:
        raise SystemExit("startup: no AnsiballZ payload kept for %s: %s" % (module, found))
    return os.path.getsize(found[0])


def import_profile(module, repeat):
    """(median microseconds to import the module, [(microseconds, name)] of its largest imports)."""
    totals, last = [], []
    name = "ansible_collections.segura.backup.plugins.modules." + module
    for dummy in range(repeat):
        out = subprocess.run([PYTHON, "-X", "importtime", "-c", "import sys; sys.path.insert(0, %r); import %s"
                              % (COLLECTIONS, name)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                             timeout=120, check=True).stderr
        rows = []
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                rows.append((int(parts[1]), parts[2].rstrip()))
        totals.append(sum(micro for micro, imported in rows if imported.strip() == name))
        last = rows
    # -X importtime indents a nested import by two more spaces: " name" is the module, "   name" its imports
    top = sorted(((micro, imported.strip()) for micro, imported in last if imported.startswith("   ")
                  and not imported.startswith("     ")), reverse=True)[:4]
    return statistics.median(totals), top


def play_wall(workdir, module, args, tasks):
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "tasks": [{"name": "call %d" % number, module: args} for number in range(tasks)]}]
    path = os.path.join(workdir, "play-%s.yml" % module.replace(".", "-"))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(play, handle)
    started = time.perf_counter()
    done = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", path], env=env(workdir),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0 or ("ok=%d" % tasks) not in done.stdout:
        raise SystemExit("startup: the play of %s failed:\n%s" % (module, done.stdout[-3000:]))
    return wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--label", default="")
    options = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="segura-startup-")
    try:
        empty = os.path.join(workdir, "empty-target")
        os.makedirs(empty)
        info_args = {"target": {"type": "path", "path": empty}}
        label = " (%s)" % options.label if options.label else ""
        stamp = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
        print("# Module start-up%s, %s, %d cores\n" % (label, stamp, os.cpu_count()))
        print("| module | AnsiballZ payload (bytes) | import (ms, median of %d) | largest imports (ms) |" % options.repeat)
        print("|---|---:|---:|---|")
        ping_bytes = payload_bytes(workdir, "ansible.builtin.ping", {})
        print("| ansible.builtin.ping | %d | - | - |" % ping_bytes)
        for module in MODULES:
            size = payload_bytes(workdir, "segura.backup." + module, {})  # kept even when the arguments are refused
            micro, top = import_profile(module, options.repeat)
            print("| %s | %d | %.0f | %s |" % (module, size, micro / 1000,
                                               ", ".join("%s %.0f" % (name.rsplit(".", 1)[-1], us / 1000) for us, name in top)))
        walls = {"ping": [], "backup_info": []}
        for dummy in range(options.repeat):  # interleaved
            walls["ping"].append(play_wall(workdir, "ansible.builtin.ping", {}, options.tasks))
            walls["backup_info"].append(play_wall(workdir, "segura.backup.backup_info", info_args, options.tasks))
        ping, info = statistics.median(walls["ping"]), statistics.median(walls["backup_info"])
        print("\nOne play of %d tasks on localhost, medians of %d interleaved runs: ansible.builtin.ping %.2f s, "
              "segura.backup.backup_info (empty path target) %.2f s; per call over ping's: %.3f s."
              % (options.tasks, options.repeat, ping, info, (info - ping) / options.tasks))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
