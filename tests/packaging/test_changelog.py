"""CHANGELOG.rst is what antsibull-changelog makes of changelogs/ (scripts/changelog.py), the fragments pass its
lint, and every module, role and playbook of the collection is declared in a release, as antsibull-changelog
expects: modules found in plugins/ by their version_added, roles and playbooks as objects in a fragment."""

import glob
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
try:
    import changelog
finally:
    sys.path.pop(0)

TOOL = os.path.join(os.path.dirname(sys.executable), "antsibull-changelog")


@pytest.fixture(scope="module")
def generated():
    return changelog.generate()


def _tool(*args):
    return subprocess.run([TOOL] + list(args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=120, check=False)


def test_fragments_and_changelog_yaml_pass_lint():
    lint = _tool("lint")
    assert (lint.returncode, lint.stdout) == (0, ""), lint.stdout
    strict = _tool("lint-changelog-yaml", "--strict", os.path.join("changelogs", "changelog.yaml"))
    assert (strict.returncode, strict.stdout) == (0, ""), strict.stdout


def test_fragments_write_rst_literals_not_ansible_markup():
    """antsibull-changelog copies fragments into CHANGELOG.rst as RST: C(x) would stay C(x) there."""
    markup = re.compile(r"\b(?:C|O|RV|M|V|E|I|U|L|P)\([^)]*\)")
    found = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "changelogs", "fragments", "*.y*ml"))):
        with open(path, encoding="utf-8") as handle:
            hits = markup.findall(handle.read())
        if hits:
            found[os.path.basename(path)] = hits
    assert found == {}, "write ``x`` (RST), not C(x)/O(x)/RV(x), in changelog fragments: %s" % found


def test_changelog_rst_is_what_generation_gives(generated):
    with open(os.path.join(ROOT, "CHANGELOG.rst"), encoding="utf-8") as handle:
        current = handle.read()
    assert current == generated[0], "CHANGELOG.rst is out of date with changelogs/: run %s" % changelog.FIX


def test_every_module_role_and_playbook_is_declared_in_a_release(generated):
    declared = {"module": set(), "role": set(), "playbook": set()}
    for release in generated[1]["releases"].values():
        declared["module"].update(entry["name"] for entry in release.get("modules") or [])
        for kind in ("role", "playbook"):
            declared[kind].update(entry["name"] for entry in (release.get("objects") or {}).get(kind) or [])
    present = {
        "module": {os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py"))},
        "role": {os.path.basename(path) for path in glob.glob(os.path.join(ROOT, "roles", "*")) if os.path.isdir(path)},
        "playbook": {os.path.basename(path)[:-4] for path in glob.glob(os.path.join(ROOT, "playbooks", "*.yml"))},
    }
    assert all(present.values())
    for kind, names in present.items():
        assert names - declared[kind] == set(), "%ss in no release of the changelog (a fragment's 'add object.%s')" % (kind, kind)
        assert declared[kind] - names == set(), "%ss in the changelog that the collection does not have" % kind
