"""The pytest gate of make test (scripts/pytest_gate.py) fails on a vanished suite and on skips."""

import os
import subprocess
import sys

from tests.conftest import ROOT

GATE = os.path.join(ROOT, "scripts", "pytest_gate.py")


def _gate(tmp_path, test_source):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_sample.py").write_text(test_source)
    junit = tmp_path / "junit.xml"
    return subprocess.run([sys.executable, GATE, "--junit", str(junit), "-q", str(suite)], cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120, check=False)


def test_passing_suite_passes(tmp_path):
    result = _gate(tmp_path, "def test_one():\n    assert 1 + 1 == 2\n")
    assert result.returncode == 0, result.stdout.decode()


def test_no_test_collected_fails(tmp_path):
    result = _gate(tmp_path, "import pytest\npytest.importorskip('a_module_that_does_not_exist')\n"
                             "def test_one():\n    pass\n")
    assert result.returncode == 1
    assert b"collected no test (exit 5)" in result.stdout


def test_a_skip_fails_and_is_named(tmp_path):
    result = _gate(tmp_path, "import pytest\ndef test_ran():\n    pass\n"
                             "def test_hidden():\n    pytest.skip('lab piece missing')\n")
    assert result.returncode == 1
    assert b"skipped, not on the allow-list: suite/test_sample.py::test_hidden (lab piece missing)" in result.stdout


def test_a_failure_keeps_pytest_status(tmp_path):
    result = _gate(tmp_path, "def test_one():\n    assert False\n")
    assert result.returncode == 1 and b"1 failed" in result.stdout


def test_allow_listed_skip_passes_and_is_printed(tmp_path):
    sys.path.insert(0, os.path.dirname(GATE))
    try:
        import pytest_gate
    finally:
        sys.path.pop(0)
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="tests.integration.test_vm" name="test_boot">'
                     '<skipped message="no kvm"/></testcase></testsuite></testsuites>')
    status, lines = pytest_gate.judge(0, str(junit), {r"test_vm\.py::test_boot$": "no virtualisable CPU"})
    assert status == 0 and lines == ["skipped, allowed (no virtualisable CPU): tests/integration/test_vm.py::test_boot"]
    status, lines = pytest_gate.judge(0, str(junit), {})
    assert status == 1 and "not on the allow-list: tests/integration/test_vm.py::test_boot (no kvm)" in lines[0]
