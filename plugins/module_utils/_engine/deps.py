# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Third-party Python packages the engine needs where modules run (see requirements.txt).

Engine files import these lazily or inside try/except, so a missing package is reported by the
module as one clear message (which package, how to install it) instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Iterable, List

# import name -> pip distribution name
PACKAGES = {
    "zstandard": "zstandard",
    "cryptography": "cryptography",
    "smbclient": "smbprotocol",
    "nfs_rs": "nfs-rs",
    "jmespath": "jmespath",
}

#: what every module that reads or writes archives on any target needs
CORE = ("zstandard", "cryptography")

#: nfs-rs (the userspace NFS client) has builds for Python 3.11 and later only (requirements.txt)
NFS_RS_PYTHON = (3, 11)
NFS_ALTERNATIVE = ("mount the export with the segura.backup.mount role (the kernel's NFS client) and use a "
                   "'path' target on the mount point")


def nfs_unavailable() -> str:
    """Why an NFS target cannot be used here, naming the alternative (kernel mount + path target)."""
    running = (sys.version_info[0], sys.version_info[1])
    if running < NFS_RS_PYTHON:
        return "NFS targets through nfs-rs need Python %d.%d or later and this is Python %d.%d (Debian 11); %s" % (
            NFS_RS_PYTHON[0], NFS_RS_PYTHON[1], running[0], running[1], NFS_ALTERNATIVE)
    return "the Python library 'nfs-rs' is required for NFS targets (or %s)" % NFS_ALTERNATIVE


def missing(modules: Iterable[str]) -> List[str]:
    """pip names of the packages among ``modules`` that cannot be imported."""
    absent = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            absent.append("nfs-rs: %s" % nfs_unavailable() if name == "nfs_rs" else PACKAGES.get(name, name))
    return absent


def for_target(kind: str) -> List[str]:
    """Import names a target type needs on top of CORE."""
    return {"smb": ["smbclient"], "nfs": ["nfs_rs"]}.get(kind, [])
