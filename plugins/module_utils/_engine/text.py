# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small wording helpers for messages people read."""

from __future__ import annotations


def describe_bytes(count: int) -> str:
    """'512 B', '3.2 MiB', '1.5 TiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return "%d B" % count if unit == "B" else "%.1f %s" % (value, unit)
        value /= 1024.0
    return "%d B" % count  # pragma: no cover
