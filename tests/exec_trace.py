"""Every command line a run starts, from the kernel's side: `strace -f -e trace=execve` around the run.

Sampling `ps` misses a process that lives less than the sampling interval (a `mariadb-dump`, an `ssh-keygen`, a
module's Python that fails at once); tracing execve sees every one, with its whole argv. strace's `-xx` prints
every byte of every string as `\\xNN`, so an argument is read back exactly, quotes and backslashes included.
`--seccomp-bpf` stops the traced processes only at execve, so the run is not slowed by the tracing.
"""

import os
import re
import shutil
from typing import List

STRACE = shutil.which("strace") or "/usr/bin/strace"
_STRING = re.compile(rb'"((?:\\x[0-9a-f]{2})*)"')
_EXECVE = re.compile(rb"^\d+ +(?:<\.\.\. )?execve\(")


def traced(argv: List[str], trace_file: str) -> List[str]:
    """``argv`` run under strace, which appends every execve of it and its descendants to ``trace_file``."""
    return [STRACE, "-f", "--seccomp-bpf", "-qq", "-xx", "-s", "1048576", "-e", "trace=execve",
            "-A", "-o", trace_file, "--"] + list(argv)


def command_lines(trace_file: str) -> List[List[str]]:
    """The argv (file name first, then the arguments) of every execve in ``trace_file``, failed ones too."""
    if not os.path.exists(trace_file):
        return []
    lines = []
    with open(trace_file, "rb") as handle:
        for line in handle:
            if not _EXECVE.match(line):
                continue
            strings = [bytes.fromhex(raw.replace(b"\\x", b"").decode("ascii")) for raw in _STRING.findall(line)]
            if strings:
                lines.append([text.decode("utf-8", "replace") for text in strings])
    return lines
