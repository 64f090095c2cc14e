# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Third-party Python packages the engine needs where modules run (see requirements.txt).

Engine files import these lazily or inside try/except, so a missing package is reported by the
module as one clear message (which package, how to install it) instead of a traceback.
"""

from __future__ import annotations

import importlib
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


def missing(modules: Iterable[str]) -> List[str]:
    """pip names of the packages among ``modules`` that cannot be imported."""
    absent = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            absent.append(PACKAGES.get(name, name))
    return absent


def for_target(kind: str) -> List[str]:
    """Import names a target type needs on top of CORE."""
    return {"smb": ["smbclient"], "nfs": ["nfs_rs"]}.get(kind, [])
