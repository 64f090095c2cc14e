"""CHANGELOG.rst, made by antsibull-changelog without consuming the changelog fragments.

While galaxy.yml's version is not released (not in changelogs/changelog.yaml), CHANGELOG.rst shows that version
as `antsibull-changelog release` would make it from the fragments there are now. The release runs on a scratch
copy (galaxy.yml, changelogs/, meta/, plugins/ - modules are found there), so changelog.yaml and the fragments
stay as they are: fragments added later go into the same unreleased version, and the real release consumes them.
Once the version is in changelog.yaml it is plain `antsibull-changelog generate`.

    .venv/bin/python scripts/changelog.py           rewrite CHANGELOG.rst
    .venv/bin/python scripts/changelog.py --check   exit 1, with a diff, when CHANGELOG.rst is not what generation gives
"""

import argparse
import difflib
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("galaxy.yml", "changelogs", "meta", "plugins")
FIX = ".venv/bin/python scripts/changelog.py"


def _load(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def generate(root=ROOT):
    """(CHANGELOG.rst text, the changelog.yaml data it came from) for the tree at ``root``."""
    version = str(_load(os.path.join(root, "galaxy.yml"))["version"])
    config = _load(os.path.join(root, "changelogs", "config.yaml"))
    released = (_load(os.path.join(root, "changelogs", "changelog.yaml")) or {}).get("releases") or {}
    with tempfile.TemporaryDirectory(prefix="segura-changelog-") as scratch:
        copy = os.path.join(scratch, "collection")
        os.makedirs(os.path.join(scratch, "no-collections"))
        for name in COPIED:
            source = os.path.join(root, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(copy, name), ignore=shutil.ignore_patterns("__pycache__", ".plugin-cache.yaml"))
            else:
                os.makedirs(copy, exist_ok=True)
                shutil.copy(source, copy)
        tool = os.path.join(os.path.dirname(sys.executable), "antsibull-changelog")
        argv = [tool, "generate"] if version in released else [tool, "release", "--version", version]
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                   ANSIBLE_COLLECTIONS_PATH=os.path.join(scratch, "no-collections"))
        result = subprocess.run(argv, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, timeout=300, check=False)
        if result.returncode != 0:
            raise RuntimeError("%s failed (exit %d):\n%s" % (" ".join(argv[1:]), result.returncode, result.stdout))
        output = os.path.normpath(os.path.join(copy, "changelogs", config["changelog_filename_template"]))
        with open(output, encoding="utf-8") as handle:
            text = handle.read()
        return text, _load(os.path.join(copy, "changelogs", "changelog.yaml"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text, _data = generate()
    path = os.path.join(ROOT, "CHANGELOG.rst")
    current = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            current = handle.read()
    if not args.check:
        if current != text:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        print("CHANGELOG.rst %s" % ("written" if current != text else "unchanged"))
        return 0
    if current == text:
        print("CHANGELOG.rst is what antsibull-changelog generates")
        return 0
    sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                               "CHANGELOG.rst", "generated", n=1))
    print("CHANGELOG.rst is not what antsibull-changelog generates from changelogs/: run %s" % FIX)
    return 1


if __name__ == "__main__":
    sys.exit(main())
