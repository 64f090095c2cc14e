"""The runtime's version ranges (requirements.txt): floors and lock agree with them, and the engine works
on the floor versions.

* constraints/runtime-floors.txt pins exactly the floor of every range, constraints/runtime-lock.txt (the
  CI pins) lies inside every range, with the same environment markers.
* A fresh virtualenv gets the floor versions and runs the engine's SMB tests against the lab's real Samba
  (the write paths: fast and generic, test_smb_fences.py), and on this Python (3.11) the unit tests too, once
  on this Python and once on Python 3.9, Debian 11's release. The 3.9 interpreter is $SEGURA_PYTHON39, else
  python3.9 on PATH, else pyenv's; without one that case is skipped. The unit tests on 3.9 run in
  test_runtime_bullseye.py, on Debian 11's own Python 3.9.2 in a container, at the floors too.
  The modules get ansible.module_utils from the controller inside their payload; the virtualenv gets the
  controller's `ansible` package through a .pth file the same way, and nothing else of it.
Needs the package index (pip, as `make setup` does). Run: .venv/bin/pytest -q tests/integration/test_runtime_floors.py
"""

import glob
import os
import shutil
import subprocess
import sys

import ansible
import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIREMENTS = os.path.join(ROOT, "requirements.txt")
FLOORS = os.path.join(ROOT, "constraints", "runtime-floors.txt")
LOCK = os.path.join(ROOT, "constraints", "runtime-lock.txt")

# Repository tooling (ansible-doc, ansible-playbook, CI files) is the controller's business, not the runtime's.
UNIT_TESTS_LEFT_OUT = ("tests/unit/test_house.py", "tests/unit/test_ci_gates.py", "tests/unit/test_docs.py")
SMB_TESTS = ("tests/integration/test_smb_fences.py", "tests/integration/test_smb_put_files.py")
# Test tools only, at versions pip picks for the interpreter (pytest 9 needs 3.10).
TEST_TOOLS = ("pytest>=8,<10", "hypothesis>=6,<7", "pyyaml>=6,<7", "pyrage>=1.2,<2")


def read_requirements(path):
    with open(path, encoding="utf-8") as handle:
        lines = [line.split("#", 1)[0].strip() for line in handle]
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def by_name(requirements):
    return {requirement.name.lower(): requirement for requirement in requirements}


def test_floors_pin_the_floor_of_every_range_and_the_lock_lies_inside():
    ranges, floors, lock = (by_name(read_requirements(path)) for path in (REQUIREMENTS, FLOORS, LOCK))
    assert set(ranges) == set(floors) == set(lock)
    assert "pyrage" not in ranges  # a test tool (requirements-dev.txt), not the appliance's
    for name, wanted in ranges.items():
        lower = [spec.version for spec in wanted.specifier if spec.operator == ">="]
        upper = [spec for spec in wanted.specifier if spec.operator == "<"]
        assert len(lower) == 1 and len(upper) == 1, "%s: a range is floor and ceiling: %s" % (name, wanted)
        for pinned in (floors[name], lock[name]):
            (spec,) = list(pinned.specifier)
            assert spec.operator == "=="
            assert wanted.specifier.contains(spec.version), "%s %s is outside %s" % (name, spec.version, wanted)
            assert str(pinned.marker) == str(wanted.marker), name
        assert list(floors[name].specifier)[0].version == lower[0], "%s: the floor file must pin %s" % (name, lower[0])


def python39():
    """A working Python 3.9 (a pyenv shim on PATH may exist and still fail, so each one is asked)."""
    candidates = [os.environ.get("SEGURA_PYTHON39")]
    # pyenv's versions: below $PYENV_ROOT, ~/.pyenv, or beside the pyenv command on PATH (CI runs with another HOME)
    pyenv = shutil.which("pyenv")
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv"),
             os.path.dirname(os.path.dirname(os.path.realpath(pyenv))) if pyenv else None]
    for root in dict.fromkeys(root for root in roots if root):
        candidates += sorted(glob.glob(os.path.join(root, "versions", "3.9*", "bin", "python3.9")), reverse=True)
    candidates.append(shutil.which("python3.9"))
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=60, check=False)
        if probe.stdout.strip() == "True":
            return candidate
    return None


def this_python():
    return getattr(sys, "_base_executable", None) or sys.executable


def make_floor_venv(python, folder):
    """A virtualenv of ``python`` with the floors (and the test tools); returns its interpreter."""
    subprocess.run([python, "-m", "venv", folder], check=True, timeout=120)
    venv_python = os.path.join(folder, "bin", "python")
    installed = subprocess.run(
        [venv_python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary=:all:",
         "-c", FLOORS, "-r", REQUIREMENTS] + list(TEST_TOOLS),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stdout[-3000:]
    # ansible.module_utils as the modules' payload carries it: only the controller's `ansible` package.
    carrier = os.path.join(folder, "controller-ansible")
    os.makedirs(carrier)
    os.symlink(os.path.dirname(ansible.__file__), os.path.join(carrier, "ansible"))
    site = subprocess.run([venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          stdout=subprocess.PIPE, text=True, check=True, timeout=60).stdout.strip()
    with open(os.path.join(site, "controller-ansible.pth"), "w", encoding="utf-8") as handle:
        handle.write(carrier + "\n")
    return venv_python


def installed_versions(venv_python, names):
    script = ("import importlib.metadata as m, sys\n"
              "for name in sys.argv[1:]:\n"
              "    try:\n        print(name, m.version(name))\n"
              "    except m.PackageNotFoundError:\n        print(name, '-')\n")
    out = subprocess.run([venv_python, "-c", script] + list(names), stdout=subprocess.PIPE, text=True,
                         check=True, timeout=60).stdout
    return dict(line.split() for line in out.splitlines())


@pytest.mark.slow
@pytest.mark.parametrize("which", ["python3.11", "python3.9"])
def test_engine_tests_pass_on_the_floor_versions(which, lab, tmp_path):
    python = this_python() if which == "python3.11" else python39()
    if python is None:
        pytest.skip("no Python 3.9 here (set SEGURA_PYTHON39); test_runtime_bullseye.py covers Debian 11's")
    venv_python = make_floor_venv(python, str(tmp_path / "venv"))
    version = subprocess.run([venv_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             stdout=subprocess.PIPE, text=True, check=True, timeout=60).stdout.strip()
    assert version == which[len("python"):]

    floors = by_name(read_requirements(FLOORS))
    environment = {"python_version": version}
    wanted = {name: list(req.specifier)[0].version if req.marker is None or req.marker.evaluate(environment) else "-"
              for name, req in floors.items()}
    assert installed_versions(venv_python, wanted) == wanted

    argv = [venv_python, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + list(SMB_TESTS)
    if which == "python3.11":  # on 3.9 test_runtime_bullseye.py runs the unit tests, on Debian 11's own 3.9.2
        argv += ["tests/unit"] + ["--ignore=%s" % path for path in UNIT_TESTS_LEFT_OUT]
    env = dict(os.environ, PATH=os.path.dirname(venv_python) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTHONPATH", None)
    result = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=1200, check=False)
    tail = result.stdout[-4000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail
