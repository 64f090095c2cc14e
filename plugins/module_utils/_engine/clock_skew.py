# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# PRIVATE to the segura.backup collection (see _engine/__init__.py): may change in any release.
"""Snapshots dated ahead of now: an appliance clock that ran ahead, or a snapshot planted on the share.

A snapshot created more than ``future_tolerance`` after now is *future-dated*. Taken at its word it
would stay "the latest" for as long as its date says (years, for a forged one), hide every real
snapshot from restore's and verify's "latest" and from monitoring, and pin retention. So, everywhere:

- backup_info flags it (``future_dated``, with a warning); an appliance's ``latest`` and
  ``latest_complete`` are the newest snapshots that are not future-dated.
- restore's and verify's ``latest`` pass it over; asked for by id it is restored or verified, with
  a warning that names it.
- retention keeps it aside (retention.plan): never removed by the policy, never "the newest
  complete", counted by no rule, until now catches up with its date; prune warns about it. Chosen
  over judging it by when its files arrived: a listed modification time is the target's word, not
  the snapshot's, and a removal cannot be undone, so a person decides (remove it by hand, or fix
  the clock and let it age into the rules).

The tolerance (one hour by default) absorbs ordinary skew between an appliance's clock and the
machine that reads the catalog.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, List

from ansible_collections.segura.backup.plugins.module_utils._engine import constants
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError
from ansible_collections.segura.backup.plugins.module_utils._engine.retention import parse_duration

DEFAULT_FUTURE_TOLERANCE = constants.DEFAULT_FUTURE_TOLERANCE


def parse_future_tolerance(value: Any) -> timedelta:
    """``future_tolerance`` as a timedelta: a duration ('1h', '2d') or whole seconds (900, '900')."""
    if value is None or value == "":
        value = DEFAULT_FUTURE_TOLERANCE
    if isinstance(value, bool):
        raise ConfigError("future_tolerance must be a duration such as '1h' or whole seconds, not %r" % (value,))
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        seconds = int(value)
        if seconds < 0:
            raise ConfigError("future_tolerance must not be negative")
        return timedelta(seconds=seconds)
    return parse_duration(value, "future_tolerance")


def is_future_dated(created: datetime, now: datetime, tolerance: timedelta) -> bool:
    """Created more than ``tolerance`` after ``now``."""
    return created > now + tolerance


def flag_future_dated(records: Iterable[Any], now: datetime, tolerance: timedelta) -> List[Any]:
    """Set ``future_dated`` on each catalog record; returns the future-dated ones."""
    flagged = []
    for record in records:
        record.future_dated = is_future_dated(record.created, now, tolerance)
        if record.future_dated:
            flagged.append(record)
    return flagged


def describe_future_dated(record: Any, now: datetime) -> str:
    """One line naming a future-dated snapshot and what that means."""
    ahead = record.created - now.astimezone(timezone.utc)
    days, seconds = ahead.days, ahead.seconds
    span = "%d day(s)" % days if days else "%d minute(s)" % max(seconds // 60, 1)
    return ("snapshot %s/%s is dated %s, %s ahead of now (an appliance clock that ran ahead, or a snapshot "
            "planted on the target?): it is not taken as the latest, and retention keeps it aside"
            % (record.appliance, record.id, record.created.strftime("%Y-%m-%dT%H:%M:%SZ"), span))
