# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see __init__.py): may change in any release.
"""Facts every part of the engine shares, written once."""

from __future__ import annotations

#: The format of snapshot objects, sidecars and session lists. A reader refuses any other.
FORMAT = "segura.backup/1"

#: This collection's version, as galaxy.yml says (tests/unit/test_house.py keeps the two equal):
#: the engine runs on appliances where galaxy.yml is not shipped.
TOOL_VERSION = "0.1.0"

MiB = 1024 * 1024

#: What a snapshot does when an entry of the recordings tree cannot be taken (sessions.on_problem):
#: "warn" publishes it with sessions status partial, "fail" publishes nothing.
SESSIONS_ON_PROBLEM = ("warn", "fail")

# Defaults and choices the argument specs (specs.py) share with the engine modules that use them. They live
# here, not in snapshot.py, restore/ or verification.py, so that specs.py imports none of those: every
# module imports specs.py, and a module such as backup_info would otherwise load the whole engine.
DEFAULT_COMPONENTS = ("database", "config", "secrets")
RESTORABLE_COMPONENTS = ("database", "config", "secrets")
VERIFY_MODES = ("quick", "deep")
VERIFY_SELECTIONS = ("latest", "all", "ids", "sample")
DEFAULT_FUTURE_TOLERANCE = "1h"
