"""Run pytest, and fail on what pytest itself lets pass: no test collected, or a test skipped.

pytest exits 5 when it collected nothing (a broken conftest or a module-level importorskip can make a
whole suite vanish) and 0 when tests were skipped. Here both fail, except the skips on ALLOWED_SKIPS.

    python scripts/pytest_gate.py [--junit FILE] [pytest arguments...]
"""

import argparse
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

# Lab pieces that cannot exist on some machines, by test id (a regular expression) -> why. Keep it short:
# every entry is a test CI does not run. CI machines (Debian 12, root, the packages of bindep.txt) have
# everything the suite needs today, so the list is empty.
ALLOWED_SKIPS = {
    # r"^tests/integration/test_kernel_mount_vm\.py::": "a machine without a virtualisable CPU cannot boot the VM",
}


def skipped_tests(junit_file):
    """(test id, reason) of every skipped test case in a JUnit XML report."""
    found = []
    for case in ET.parse(junit_file).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None and skipped.get("type") != "pytest.xfail":  # an xfail is a result, not a skip
            path = case.get("classname", "").replace(".", "/") + ".py"
            test_id = "%s::%s" % (path, case.get("name", ""))
            found.append((test_id, skipped.get("message", "")))
    return found


def judge(rc, junit_file, allowed=None):
    """The gate's exit status and the lines it prints, for pytest's exit status and report."""
    allowed = ALLOWED_SKIPS if allowed is None else allowed
    if rc == 5:
        return 1, ["pytest collected no test (exit 5): a suite that vanished is a failure"]
    if rc != 0:
        return rc, []
    lines, refused = [], []
    for test_id, reason in skipped_tests(junit_file):
        why = next((why for pattern, why in allowed.items() if re.search(pattern, test_id)), None)
        if why is None:
            refused.append("skipped, not on the allow-list: %s (%s)" % (test_id, reason))
        else:
            lines.append("skipped, allowed (%s): %s" % (why, test_id))
    if refused:
        return 1, lines + refused + ["a skipped test is a failure here (scripts/pytest_gate.py ALLOWED_SKIPS)"]
    return 0, lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--junit", default=".build/junit.xml")
    args, pytest_args = parser.parse_known_args(argv)
    rc = subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit2",
                          "--junitxml=" + args.junit] + pytest_args)
    status, lines = judge(rc, args.junit)
    for line in lines:
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
