"""The execution environment (execution-environment.yml) builds what it says, short of pulling the base image.

ansible-builder create makes the build context; the builder's own introspection (the script the build runs
in its builder stage) reads the collection's EE dependencies from the tarball in that context; bindep says
which EL 9 packages they are; pip resolves every Python package the EE installs for Python 3.11 with binary
wheels only, from the package index (as the build would).
"""

import os
import shutil
import subprocess
import sys
import tarfile
from unittest import mock

import pytest
import yaml
from bindep import depends
from packaging.requirements import Requirement

from tests.conftest import ROOT

BIN = os.path.dirname(sys.executable)
EE_FILE = "execution-environment.yml"
# What the EE needs from the distribution (meta/ee-bindep.txt): GNU tar for the controller-side packing in
# setup.yml. Adding a package here is a decision; a MariaDB client or age in the EE is not needed (see the file).
EL9_PACKAGES = {"tar"}
# In requirements.txt for the tests only (never on an appliance's or the EE's path).
TEST_ONLY = {"pyrage"}


def _run(argv, cwd, timeout=300):
    result = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                            check=False, universal_newlines=True)
    assert result.returncode == 0, "%s failed (exit %d):\n%s" % (" ".join(argv), result.returncode, result.stdout)
    return result.stdout


def _version():
    with open(os.path.join(ROOT, "galaxy.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["version"]


def _requirements(path):
    """name -> Requirement of a pip requirements file (comments and trailing comments left out)."""
    found = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                requirement = Requirement(line)
                found[requirement.name.lower().replace("_", "-")] = requirement
    return found


@pytest.fixture(scope="module")
def ee(tmp_path_factory):
    """The EE file in a scratch folder with the tarball it names built there, and its create context."""
    tmp = tmp_path_factory.mktemp("ee")
    source = tmp / "source"
    source.mkdir()
    shutil.copy(os.path.join(ROOT, EE_FILE), str(source))
    with open(os.path.join(ROOT, EE_FILE), encoding="utf-8") as handle:
        definition = yaml.safe_load(handle)
    for key in ("python", "system", "galaxy"):  # dependency files the EE file names, by relative path
        named = definition["dependencies"].get(key)
        if isinstance(named, str) and os.path.isfile(os.path.join(ROOT, named)):
            os.makedirs(str(source / os.path.dirname(named)), exist_ok=True)
            shutil.copy(os.path.join(ROOT, named), str(source / named))
    tarballs = [entry["src"] for entry in definition.get("additional_build_files", []) if entry["src"].endswith(".tar.gz")]
    assert tarballs == [".build/dist/segura-backup-%s.tar.gz" % _version()], "the EE must copy this version's tarball"
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--force", "--output-path",
          str(source / os.path.dirname(tarballs[0])), ROOT], cwd=ROOT)
    context = tmp / "context"
    _run([os.path.join(BIN, "ansible-builder"), "create", "-f", EE_FILE, "-c", str(context),
          "--output-filename", "Containerfile"], cwd=str(source))
    return {"tmp": tmp, "context": context, "definition": definition}


def _containerfile_args(context):
    args = {}
    with open(str(context / "Containerfile"), encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("ARG ") and "=" in line:
                name, value = line[4:].strip().split("=", 1)
                args[name] = value.strip('"')
    return args


def test_containerfile_installs_everything_into_python_311(ee):
    args = _containerfile_args(ee["context"])
    assert args["PYCMD"] == "/usr/bin/python3.11"
    assert args["PYPKG"] == "python3.11"
    assert args["PKGMGR"] == "/usr/bin/dnf"
    assert sorted(args["ANSIBLE_INSTALL_REFS"].split()) == ["ansible-core==2.19.14", "ansible-runner==2.4.3"]
    text = (ee["context"] / "Containerfile").read_text()
    assert "/usr/bin/python3\"" not in text and "/usr/bin/python3 " not in text


def test_context_carries_the_collection_tarball_with_its_ee_dependencies(ee):
    name = "segura-backup-%s.tar.gz" % _version()
    tarball = ee["context"] / "_build" / "collection" / name
    assert tarball.is_file()
    wanted = yaml.safe_load((ee["context"] / "_build" / "requirements.yml").read_text())
    assert wanted["collections"] == [{"name": "/build/collection/" + name, "type": "file"}]
    with tarfile.open(str(tarball)) as archive:
        members = set(archive.getnames())
    assert {"meta/execution-environment.yml", "meta/ee-requirements.txt", "meta/ee-bindep.txt"} <= members


@pytest.fixture(scope="module")
def introspected(ee):
    """What the builder stage's introspect.py writes for the collection installed from the context."""
    context, tmp = ee["context"], ee["tmp"]
    collections = tmp / "collections"
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "--force", "-p", str(collections),
          str(next((context / "_build" / "collection").glob("*.tar.gz")))], cwd=str(tmp))
    argv = [sys.executable, str(context / "_build" / "scripts" / "introspect.py"), "introspect",
            "--write-pip", str(tmp / "src" / "requirements.txt"), "--write-bindep", str(tmp / "src" / "bindep.txt")]
    for option, name in (("--user-pip", "requirements.txt"), ("--user-bindep", "bindep.txt")):
        if (context / "_build" / name).exists():  # the Containerfile passes them when the EE file has them
            argv += [option, str(context / "_build" / name)]
    _run(argv + [str(collections)], cwd=str(tmp))
    return tmp / "src"


def _el9_packages(bindep_text, profile):
    """Packages bindep lists for CentOS Stream 9 (awx-ee's base) and one user profile."""
    with mock.patch.object(depends.platform, "system", return_value="Linux"), \
            mock.patch.object(depends.distro, "id", return_value="centos"), \
            mock.patch.object(depends.distro, "codename", return_value=""), \
            mock.patch.object(depends.distro, "version", return_value="9"):
        rules = depends.Depends(bindep_text)
        platform = rules.platform_profiles()
    assert "platform:rpm" in platform
    return {rule[0] for rule in rules.active_rules(platform + [profile])}


def test_the_ee_installs_the_right_el9_packages_and_nothing_more(introspected):
    text = (introspected / "bindep.txt").read_text()
    assert _el9_packages(text, "default") == EL9_PACKAGES
    assert _el9_packages(text, "epel") == EL9_PACKAGES  # nothing from EPEL
    assert _el9_packages(text, "compile") == EL9_PACKAGES  # no compiler: binary wheels only
    names = {line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")}
    assert not names & {"mariadb-client", "age", "mariadb"}, names


def test_the_ee_python_packages_are_the_runtime_ones_without_test_tools(introspected):
    ee_reqs = _requirements(str(introspected / "requirements.txt"))
    runtime = _requirements(os.path.join(ROOT, "requirements.txt"))
    needed = {name for name, requirement in runtime.items()
              if name not in TEST_ONLY and (requirement.marker is None or requirement.marker.evaluate(
                  {"python_version": "3.11", "python_full_version": "3.11.2"}))}
    assert set(ee_reqs) == needed
    for name, requirement in ee_reqs.items():
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        assert len(pins) == 1, "%s: the EE pins one version (a reproducible image)" % requirement
        assert runtime[name].specifier.contains(pins[0], prereleases=True), \
            "%s is outside requirements.txt's %s" % (requirement, runtime[name])


def test_the_ee_pins_are_the_versions_ci_runs_on_python_311():
    ee_reqs = _requirements(os.path.join(ROOT, "meta", "ee-requirements.txt"))
    lock = {name: requirement for name, requirement in _requirements(os.path.join(ROOT, "constraints", "runtime-lock.txt")).items()
            if requirement.marker is None or requirement.marker.evaluate({"python_version": "3.11", "python_full_version": "3.11.2"})}
    assert {name: str(req.specifier) for name, req in ee_reqs.items()} == {name: str(req.specifier) for name, req in lock.items()}


def _pip():
    """A pip to resolve with: this interpreter's, or the system Python's (a venv may have none)."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, timeout=60, check=False).returncode == 0:
        return [sys.executable, "-m", "pip"]
    return ["/usr/bin/python3", "-m", "pip"]


def test_the_ee_python_packages_resolve_for_python_311_as_wheels(ee, introspected):
    refs = _containerfile_args(ee["context"])["ANSIBLE_INSTALL_REFS"].split()
    wheels = ee["tmp"] / "wheels"
    argv = _pip() + ["download", "--disable-pip-version-check", "--only-binary=:all:", "--python-version", "3.11",
                     "--platform", "manylinux2014_x86_64", "--implementation", "cp", "-d", str(wheels),
                     "-r", str(introspected / "requirements.txt")] + refs
    _run(argv, cwd=str(ee["tmp"]), timeout=540)
    files = os.listdir(str(wheels))
    assert files and all(name.endswith(".whl") for name in files), files
    got = {name.split("-")[0].lower().replace("_", "-") for name in files}
    wanted = set(_requirements(str(introspected / "requirements.txt"))) | {Requirement(ref).name for ref in refs}
    assert wanted <= got, wanted - got
