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
