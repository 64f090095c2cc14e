# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Pre and post commands of a restore (argv lists, no shell, bounded time)."""

from __future__ import annotations

import subprocess
import time
from typing import Any, Dict, List, Sequence

from ansible_collections.segura.backup.plugins.module_utils._engine.appliance.mariadb import stderr_excerpt
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ApplianceError

COMMAND_OUTPUT_LIMIT = 4096


def excerpt(data: bytes, limit: int = COMMAND_OUTPUT_LIMIT) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "... (%d more characters)" % (len(text) - limit)


def run_commands(commands: Sequence[Sequence[str]], phase: str, timeout: float) -> List[Dict[str, Any]]:
    """Run argv lists without a shell, in order; the first failure raises ApplianceError."""
    results = []
    for argv in commands:
        started = time.monotonic()
        try:
            done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=timeout, close_fds=True, check=False)
        except FileNotFoundError:
            raise ApplianceError("%s command %s: program not found" % (phase, argv[0])) from None
        except subprocess.TimeoutExpired:
            raise ApplianceError("%s command %s did not finish within %d s" % (phase, " ".join(argv), timeout)) from None
        except OSError as exc:
            raise ApplianceError("%s command %s could not run: %s" % (phase, argv[0], exc.strerror)) from None
        result = {"argv": list(argv), "rc": done.returncode, "stdout": excerpt(done.stdout),
                  "stderr": excerpt(done.stderr), "seconds": round(time.monotonic() - started, 3)}
        results.append(result)
        if done.returncode != 0:
            error = ApplianceError("%s command %s failed (exit code %d): %s"
                                   % (phase, " ".join(argv), done.returncode,
                                      stderr_excerpt(done.stderr or done.stdout)))
            error.results = results  # type: ignore[attr-defined]
            raise error
    return results
