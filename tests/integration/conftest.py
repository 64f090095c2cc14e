"""Integration fixtures: the lab of real servers (see tests/lab)."""

import json
import os
import subprocess
import sys

import pytest

from tests.lab import core


def lab_cli(*args, state_dir=None, env=None, check=True):
    """Run `python -m tests.lab ARGS` from the repository root and return the CompletedProcess."""
    argv = [sys.executable, "-m", "tests.lab"] + list(args)
    if state_dir:
        argv += ["--state", state_dir]
    result = subprocess.run(argv, cwd=core.REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=300)
    if check and result.returncode != 0:
        pytest.fail("lab %s failed (exit %d): %s" % (args[0], result.returncode, result.stderr))
    return result


@pytest.fixture(scope="session")
def lab():
    """The lab's endpoints (`python -m tests.lab env`), starting the lab if needed.

    A lab that was already up is left running. A lab this session started is stopped at the end,
    unless another test session still uses it or a person pinned it with `up`.
    """
    state_dir = core.resolve_state_dir()
    was_up = lab_cli("status", state_dir=state_dir, check=False).returncode == 0
    lease = core.take_lease(state_dir)
    try:
        lab_cli("up", "--no-pin", state_dir=state_dir)
        yield json.loads(lab_cli("env", state_dir=state_dir).stdout)
    finally:
        remaining = core.release_lease(state_dir, lease)
        if not was_up and remaining == 0 and not os.environ.get("SEGURA_LAB_KEEP"):
            lab_cli("down", state_dir=state_dir, check=False)
