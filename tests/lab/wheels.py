# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Binary wheels for another CPython than this one (Debian 11's 3.9.2), made on this host with `pip download`.

Containers and VMs do not trust the host's pip CA, so their packages come from a folder of wheels (as on an
air-gapped appliance). `pip download --python-version` picks wheels for the target but evaluates environment
markers for its own interpreter: a requirement line for "python_version >= '3.11'" only would be fetched, and a
dependency needed only below 3.11 (typing-extensions for cryptography on 3.9) would be missed. So the lines
are chosen here, and then every wheel's Requires-Dist is read and what holds for the target and is missing is
fetched too, until nothing is missing (a few rounds at most).
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import zipfile
from typing import Dict, Iterable, List, Optional

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.lab import core

PLATFORM = "manylinux2014_x86_64"
ROUNDS = 6


def environment(python: str) -> Dict[str, str]:
    """The marker environment of CPython ``python`` (X.Y.Z) on x86_64 Linux."""
    return {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python,
            "implementation_name": "cpython", "implementation_version": python,
            "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
            "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}


def applies(requirement: Requirement, env: Dict[str, str]) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(env)


def requirement_lines(path: str) -> List[str]:
    """The requirement lines of a requirements or constraints file (no options, no comments)."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.split("#", 1)[0].strip() for line in handle]
    return [line for line in lines if line and not line.startswith("-")]


def _requires(wheel: str) -> List[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(member for member in archive.namelist() if member.endswith(".dist-info/METADATA"))
        metadata = email.parser.BytesParser().parsebytes(archive.read(name), headersonly=True)
    return metadata.get_all("Requires-Dist") or []


def _have(folder: str) -> Dict[str, str]:
    return {canonicalize_name(parse_wheel_filename(name)[0]): name for name in os.listdir(folder) if name.endswith(".whl")}


def download(lines: Iterable[str], python: str, folder: str, constraints: Optional[str] = None) -> List[str]:
    """Wheels for ``lines`` (requirement strings) and their dependencies on CPython ``python`` into ``folder``.

    ``constraints``: a constraints file (its lines whose markers hold for the target are applied).
    Returns the wheel file names in ``folder``.
    """
    env = environment(python)
    core.ensure_dir(folder)
    pins = []
    if constraints:
        pins = [line for line in requirement_lines(constraints) if applies(Requirement(line), env)]
    wanted = [line for line in lines if applies(Requirement(line), env)]
    for _round in range(ROUNDS):
        if wanted:
            pinned = os.path.join(folder, ".constraints-py%s.txt" % python)
            with open(pinned, "w", encoding="utf-8") as handle:
                handle.write("".join(str(Requirement(line)).split(";", maxsplit=1)[0] + "\n" for line in pins))
            argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
                    "--python-version", python, "--implementation", "cp", "--platform", PLATFORM, "-d", folder,
                    "-c", pinned] + wanted
            result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600, check=False)
            if result.returncode != 0:
                raise core.LabError("pip download for Python %s failed: %s" % (python, result.stderr.decode()[-2000:]))
        have = _have(folder)
        missing = set()
        for name in have.values():
            for line in _requires(os.path.join(folder, name)):
                requirement = Requirement(line)
                if applies(requirement, env) and canonicalize_name(requirement.name) not in have:
                    missing.add("%s%s" % (requirement.name, requirement.specifier))
        if not missing:
            return sorted(have.values())
        wanted = sorted(missing)
    raise core.LabError("wheels for Python %s still miss %s after %d rounds" % (python, ", ".join(wanted), ROUNDS))
