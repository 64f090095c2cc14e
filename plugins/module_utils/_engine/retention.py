# -*- coding: utf-8 -*-
# Copyright: segura.backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention policy: which snapshots to keep, which to remove, and why.

Pure functions, no I/O. The semantics follow restic's ``forget`` (ApplyPolicy):

- Snapshots are taken newest first. For each bucket rule (last, hourly, daily, weekly, monthly,
  yearly) with a count N, the newest snapshot of each bucket is kept, for the N most recent buckets
  that hold a snapshot. Buckets are calendar hours / days / ISO weeks / months / years in ``tz``
  (UTC by default). ``keep_last`` puts every snapshot in its own bucket.
- A count of -1 means "every bucket" (restic's ``unlimited``).
- If a rule still has counts left after the oldest snapshot, the oldest snapshot is kept as well
  (restic >= 0.17: keeps the longest history while the policy is not yet saturated).
- ``keep_within`` keeps every snapshot created within that duration of a reference time; see
  :func:`plan` for which reference.

Differences from restic, on purpose:
- Only complete snapshots count toward rules. Incomplete ones (partial uploads, orphaned sidecars,
  damaged ones) are never removed by :func:`plan`: partial uploads are cleaned by
  :func:`stale_partials`, the rest are left for a person to look at.
- The newest complete snapshot (not in the future) is always kept ("newest complete").
- A snapshot dated more than ``future_tolerance`` ahead of now is kept aside: never removed, never
  "newest complete", counted by no rule (restic ignores it too); see clock_skew.py for why.
- An empty policy is refused instead of meaning "keep everything".
- ``keep_within`` is a fixed duration; months count as 31 days and years as 366 days, the longest
  calendar lengths, so we never keep less than restic's calendar arithmetic would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, IntegrityError

UNLIMITED = -1

# Bucket rules in restic's order; each maps a time to the key of its bucket.
_BUCKET_RULES = (
    ("keep_last", "last", None),
    ("keep_hourly", "hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("keep_daily", "daily", lambda t: (t.year, t.month, t.day)),
    ("keep_weekly", "weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("keep_monthly", "monthly", lambda t: (t.year, t.month)),
    ("keep_yearly", "yearly", lambda t: (t.year,)),
)
COUNT_OPTIONS = tuple(rule[0] for rule in _BUCKET_RULES)

_DURATION_UNITS = {
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "m": timedelta(days=31),
    "y": timedelta(days=366),
}
_DURATION_PART = re.compile(r"(\d+)([hdwmy])")


def time_zone(name: str) -> tzinfo:
    """The IANA time zone the daily/weekly/... buckets are counted in; UTC needs no tz database."""
    if name in ("UTC", "utc", "Z"):
        return timezone.utc
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(name)
    except (ImportError, ValueError, KeyError, OSError, TypeError) as exc:
        raise ConfigError("timezone %r is not a known IANA time zone (%s)" % (name, exc)) from None


def parse_duration(text: Any, option: str = "keep_within") -> timedelta:
    """Parse '36h', '7d', '2w', '1m' (month), '1y' or combinations such as '1y6m' or '3d12h'.

    Months count as 31 days and years as 366 days (see the module docstring).
    """
    if isinstance(text, timedelta):
        if text < timedelta(0):
            raise ConfigError("%s must not be negative" % option)
        return text
    if not isinstance(text, str):
        raise ConfigError("%s must be a duration such as '36h', '7d', '2w', '1m' or '1y', not %r" % (option, text))
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION_PART.sub("", compact) != "":
        raise ConfigError("%s must be a duration such as '36h', '7d', '2w', '1m' or '1y', not %r" % (option, text))
    total = timedelta(0)
    for number, unit in _DURATION_PART.findall(compact):
        if len(number) > 6:
            raise ConfigError("%s %r is too long" % (option, text))
        total += int(number) * _DURATION_UNITS[unit]
    return total


def _parse_count(value: Any, option: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("unlimited", "all"):
            return UNLIMITED
        if not re.fullmatch(r"-?\d+", text):
            raise ConfigError("%s must be a whole number or 'unlimited', not %r" % (option, value))
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("%s must be a whole number or 'unlimited', not %r" % (option, value))
    if value < UNLIMITED:
        raise ConfigError("%s must be 0 or more (or -1 / 'unlimited'), not %d" % (option, value))
    return value


@dataclass(frozen=True)
class Policy:
    """A retention policy. Counts are >= 0, or -1 for every bucket. A policy that keeps nothing is refused."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta = timedelta(0)

    def __post_init__(self):
        for option in COUNT_OPTIONS:
            object.__setattr__(self, option, _parse_count(getattr(self, option), option))
        within = self.keep_within if self.keep_within is not None else timedelta(0)
        object.__setattr__(self, "keep_within", parse_duration(within))
        if not any(getattr(self, option) for option in COUNT_OPTIONS) and not self.keep_within:
            raise ConfigError(
                "the retention policy keeps nothing: set at least one of %s or keep_within"
                % ", ".join(COUNT_OPTIONS)
            )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "Policy":
        """Build from module options (missing or None options mean 0; keep_within as '7d' etc.)."""
        values: Dict[str, Any] = {option: options.get(option) for option in COUNT_OPTIONS}  # checked by __post_init__
        within = options.get("keep_within")
        values["keep_within"] = parse_duration(within) if within not in (None, "") else timedelta(0)
        return cls(**values)

    def describe(self) -> str:
        parts = []
        for option in COUNT_OPTIONS:
            count = getattr(self, option)
            name = option[len("keep_"):]
            if count == UNLIMITED:
                parts.append("all %s" % name)
            elif count:
                parts.append("%d %s" % (count, name))
        if self.keep_within:
            parts.append("everything within %s of the newest complete snapshot" % _format_timedelta(self.keep_within))
        return "keep " + ", ".join(parts)


def _format_timedelta(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    days, hours = divmod(hours, 24)
    return ("%dd" % days if days else "") + ("%dh" % hours if hours or not days else "")


@dataclass(frozen=True)
class SnapshotRef:
    """What retention needs to know about one snapshot of one appliance."""

    id: str
    created: datetime
    complete: bool = True


@dataclass
class Decision:
    id: str
    keep: bool
    reasons: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "keep": self.keep, "reasons": list(self.reasons)}


def _aware_utc(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigError("%s must be a timezone-aware datetime" % what)
    return moment.astimezone(timezone.utc)


def plan(
    snapshots: Sequence[SnapshotRef], policy: Policy, now: datetime, tz: tzinfo = timezone.utc,
    future_tolerance: timedelta = timedelta(0),
) -> List[Decision]:
    """Decide, for the snapshots of ONE appliance, which to keep and why. Newest first.

    ``keep_within`` is measured back from the newest complete snapshot (not from ``now``), like
    restic: when backups stop, keep_within does not silently expire the history that remains. A
    snapshot is within when it was created strictly after ``newest - keep_within``.

    Like restic, snapshots dated after ``now`` (a clock that ran ahead, or a snapshot planted on the
    target) are kept and ignored by every rule; "newest complete" is then the newest complete
    snapshot not in the future. ``future_tolerance`` lets a snapshot up to that far ahead (ordinary
    clock skew between the appliance and the machine that prunes) count as an ordinary one.

    ``tz`` sets where calendar buckets (hour, day, ISO week, month, year) begin.
    """
    now = _aware_utc(now, "now")
    if future_tolerance < timedelta(0):
        raise ConfigError("future_tolerance must not be negative")
    for snap in snapshots:
        _aware_utc(snap.created, "creation time of snapshot %s" % snap.id)
    ordered = sorted(snapshots, key=lambda s: (s.created, s.id), reverse=True)
    reasons: List[List[str]] = [[] for dummy in ordered]  # parallel to ``ordered``
    eligible: List[int] = []  # complete and not in the future: the snapshots the rules apply to
    for index, snap in enumerate(ordered):
        if not snap.complete:
            reasons[index].append("incomplete: not subject to retention")
        elif snap.created > now + future_tolerance:
            reasons[index].append("in the future: not subject to retention (clock skew?)")
        else:
            eligible.append(index)

    if eligible:
        reasons[eligible[0]].append("newest complete")

        if policy.keep_within:
            cutoff = ordered[eligible[0]].created - policy.keep_within
            label = "within %s" % _format_timedelta(policy.keep_within)
            for index in eligible:
                if ordered[index].created <= cutoff:
                    break  # newest first: everything after is older still
                reasons[index].append(label)

        local_times = [ordered[index].created.astimezone(tz) for index in eligible]
        oldest = len(eligible) - 1
        for option, label, bucket_of in _BUCKET_RULES:
            remaining = getattr(policy, option)
            if not remaining:
                continue
            last_key: Any = object()
            for position, index in enumerate(eligible):
                key = position if bucket_of is None else bucket_of(local_times[position])
                if key != last_key:
                    reasons[index].append("%s snapshot" % label)
                elif position == oldest:
                    reasons[index].append("oldest snapshot (%s not yet reached)" % option)
                else:
                    continue
                last_key = key
                if remaining > 0:
                    remaining -= 1
                    if remaining == 0:
                        break

    return [Decision(snap.id, bool(why), why) for snap, why in zip(ordered, reasons)]


def stale_partials(listing: Any, grace: timedelta, now: datetime) -> List[Any]:
    """Partial uploads (status 'partial') whose last write is older than ``grace`` before ``now``.

    ``listing`` is a catalog Listing (or any iterable of records with ``status`` and ``mtime``).
    Age is judged by the newest modification time of the snapshot's files, not its creation time,
    so a long upload that is still writing is never taken for stale.
    """
    if grace < timedelta(0):
        raise ConfigError("the grace period for partial uploads must not be negative")
    cutoff = _aware_utc(now, "now").timestamp() - grace.total_seconds()
    records = getattr(listing, "snapshots", listing)
    return [r for r in records if r.status == "partial" and r.mtime is not None and r.mtime < cutoff]


def _session_path(item: Any) -> str:
    from ansible_collections.segura.backup.plugins.module_utils._engine.targets.base import clean_relpath

    path: Any = item.get("path") if isinstance(item, Mapping) else item  # clean_relpath checks it
    return clean_relpath(path)


def unreferenced_sessions(
    all_session_paths: Iterable[Any], kept_manifests_sessions: Iterable[Optional[Iterable[Any]]]
) -> List[str]:
    """Session files that no kept snapshot references, sorted.

    ``kept_manifests_sessions`` holds, per kept snapshot, the ``sessions`` list of its manifest
    (paths, or the manifest's {"path", ...} entries). A None entry means a kept snapshot's list
    could not be read: then nothing is safe to remove and IntegrityError is raised.
    """
    referenced: Set[str] = set()
    for sessions in kept_manifests_sessions:
        if sessions is None:
            raise IntegrityError(
                "the session list of a kept snapshot could not be read; refusing to prune session recordings"
            )
        referenced.update(_session_path(item) for item in sessions)
    return sorted({_session_path(p) for p in all_session_paths} - referenced)
