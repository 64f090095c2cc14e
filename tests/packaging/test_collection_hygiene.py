"""The collection tarball carries the licence it declares and the changelog, no files git does not know (caches),
and galaxy.yml links to no placeholder host."""

import os
import re
import subprocess
import sys
import tarfile
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import ROOT

LINK_FIELDS = ("repository", "documentation", "homepage", "issues")
PLACEHOLDER_HOSTS = ("example.com", "example.org", "example.net", "localhost")
PLACEHOLDER_SUFFIXES = (".invalid", ".example", ".test", ".localhost", ".example.com", ".example.org", ".example.net")


def _galaxy():
    with open(os.path.join(ROOT, "galaxy.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-galaxy"), "collection", "build", "--force",
                    "--output-path", str(out), ROOT], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                   timeout=300, check=True)
    built = sorted(out.glob("segura-backup-*.tar.gz"))
    assert len(built) == 1, built
    with tarfile.open(str(built[0])) as archive:
        return {member.name: (archive.extractfile(member).read() if member.isfile() else None) for member in archive}


def _read(name):
    with open(os.path.join(ROOT, name), "rb") as handle:
        return handle.read()


def test_the_declared_licence_is_shipped_in_full(tarball):
    assert _galaxy()["license"] == ["GPL-3.0-or-later"]
    text = _read("LICENSE")
    assert text.lstrip().startswith(b"GNU GENERAL PUBLIC LICENSE\n                       Version 3, 29 June 2007")
    assert b"END OF TERMS AND CONDITIONS" in text and b"How to Apply These Terms to Your New Programs" in text
    assert tarball["LICENSE"] == text


def test_the_changelog_is_shipped(tarball):
    assert tarball["CHANGELOG.rst"] == _read("CHANGELOG.rst")
    assert tarball["changelogs/changelog.yaml"] == _read(os.path.join("changelogs", "changelog.yaml"))


def test_the_tarball_holds_only_files_git_knows(tarball):
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, stdout=subprocess.PIPE,
                            timeout=60, check=True).stdout.decode("utf-8").split("\0")
    known = set(listed) | {"MANIFEST.json", "FILES.json"}
    stray = {name for name, data in tarball.items() if data is not None and name not in known}
    assert stray == set(), "files in the tarball that are no source of the collection (caches?): %s" % sorted(stray)


def test_galaxy_links_point_at_no_placeholder_host():
    galaxy = _galaxy()
    for field in LINK_FIELDS:
        if galaxy.get(field) is None:
            continue
        host = (urlparse(galaxy[field]).hostname or "").lower()
        assert host and host not in PLACEHOLDER_HOSTS and not host.endswith(PLACEHOLDER_SUFFIXES), (field, galaxy[field])


def test_no_link_in_the_tarball_points_at_a_placeholder_host(tarball):
    """What users install (roles' templates, module docs, playbooks) links to no made-up host either; the
    schedule role's unit once carried Documentation=https://example.invalid/..."""
    found = []
    for name, data in tarball.items():
        if data is None or name.startswith(("tests/", "docs/examples/")):
            continue
        for url in re.findall(r"https?://[^\s\"'<>)\]]+", data.decode("utf-8", "replace")):
            host = (urlparse(url).hostname or "").lower()
            if host in PLACEHOLDER_HOSTS or host.endswith(PLACEHOLDER_SUFFIXES):
                found.append((name, url))
    assert found == [], found
