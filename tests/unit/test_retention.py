"""Retention policy: parsing, restic's documented examples, and properties over random histories."""

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.segura.backup.plugins.module_utils._engine.catalog import SnapshotRecord
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, IntegrityError
from ansible_collections.segura.backup.plugins.module_utils._engine.retention import (
    Policy,
    SnapshotRef,
    parse_duration,
    plan,
    stale_partials,
    unreferenced_sessions,
)

UTC = timezone.utc
SAO_PAULO = timezone(timedelta(hours=-3))


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def refs(times, complete=True):
    return [SnapshotRef("%08x" % index, moment, complete) for index, moment in enumerate(times)]


def kept_ids(decisions):
    return {d.id for d in decisions if d.keep}


def by_id(decisions):
    return {d.id: d for d in decisions}


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("36h", timedelta(hours=36)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1m", timedelta(days=31)),
        ("1y", timedelta(days=366)),
        ("1y6m", timedelta(days=366 + 6 * 31)),
        ("3d12h", timedelta(days=3, hours=12)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "-1d", "7x", "1.5d", "7 days", "d7", "1h-", 7, None, "9999999d"])
def test_parse_duration_refuses_nonsense(text):
    with pytest.raises(ConfigError, match="keep_within"):
        parse_duration(text)


def test_policy_from_options():
    policy = Policy.from_options({"keep_daily": 7, "keep_weekly": "4", "keep_within": "36h", "keep_last": None})
    assert (policy.keep_daily, policy.keep_weekly, policy.keep_last) == (7, 4, 0)
    assert policy.keep_within == timedelta(hours=36)
    assert Policy.from_options({"keep_yearly": "unlimited"}).keep_yearly == -1
    assert "7 daily" in policy.describe() and "within 1d12h" in policy.describe()


@pytest.mark.parametrize(
    "options",
    [{}, {"keep_last": 0}, {"keep_within": "0d"}, {"keep_within": ""}, {"keep_daily": 0, "keep_within": None}],
)
def test_policy_that_keeps_nothing_is_refused(options):
    with pytest.raises(ConfigError, match="keeps nothing"):
        Policy.from_options(options)


@pytest.mark.parametrize(
    "options",
    [{"keep_last": -2}, {"keep_daily": "seven"}, {"keep_daily": True}, {"keep_daily": 1.5}, {"keep_within": "forever"}],
)
def test_policy_refuses_bad_values(options):
    with pytest.raises(ConfigError):
        Policy.from_options(options)


def test_plan_refuses_naive_times():
    with pytest.raises(ConfigError, match="timezone"):
        plan([SnapshotRef("a", datetime(2020, 1, 1))], Policy(keep_last=1), utc(2021, 1, 1))


# -- restic's documented examples ----------------------------------------------------------------


def test_restic_doc_example_twelve_sundays_keep_daily_4():
    """restic docs, 'Removing snapshots according to a policy': one backup every Sunday for 12 weeks."""
    sundays = [utc(2019, 9, 1, 11) + timedelta(weeks=n) for n in range(12)]
    decisions = plan(refs(sundays), Policy(keep_daily=4), now=utc(2019, 11, 18))
    assert kept_ids(decisions) == {"%08x" % n for n in (8, 9, 10, 11)}  # 10-27, 11-03, 11-10, 11-17
    assert all("daily snapshot" in by_id(decisions)["%08x" % n].reasons for n in (8, 9, 10, 11))
    assert len([d for d in decisions if not d.keep]) == 8


def test_restic_doc_example_daily_backups_for_100_years():
    """restic docs: daily backups for 100 years with keep daily 7, weekly 5, monthly 12, yearly 75 keep
    7 dailies, 4 more weeklies (the dailies include one), then monthlies and yearlies minus overlaps."""
    newest = utc(2120, 6, 16, 23, 30)  # a Sunday: the 7 dailies fill exactly one ISO week
    days = [newest - timedelta(days=n) for n in range(100 * 365)]
    policy = Policy(keep_daily=7, keep_weekly=5, keep_monthly=12, keep_yearly=75)
    decisions = plan(refs(days), policy, now=newest + timedelta(hours=1))
    kept = [d for d in decisions if d.keep]
    count = {label: sum(("%s snapshot" % label) in d.reasons for d in kept) for label in ("daily", "weekly", "monthly", "yearly")}
    assert count == {"daily": 7, "weekly": 5, "monthly": 12, "yearly": 75}
    weekly_not_daily = [d for d in kept if "weekly snapshot" in d.reasons and "daily snapshot" not in d.reasons]
    assert len(weekly_not_daily) == 4
    # Overlaps here: the newest is also this month's and this year's; Dec 31 of last year is both a
    # monthly and a yearly. So 7 daily + 4 weekly + 11 monthly + 73 yearly.
    assert len(kept) == 7 + 4 + 11 + 73
    # every kept daily is one of the 7 newest days, every yearly the newest of its year (Dec 31)
    yearly = [d for d in kept if "yearly snapshot" in d.reasons]
    assert all(d.id == "%08x" % 0 or days[int(d.id, 16)].strftime("%m-%d") == "12-31" for d in yearly)


def test_keep_last_and_newest_per_hour():
    times = [utc(2024, 5, 1, 10, minute) for minute in (0, 20, 40)] + [utc(2024, 5, 1, 11, 5)]
    decisions = by_id(plan(refs(times), Policy(keep_hourly=2), now=utc(2024, 5, 2)))
    assert decisions["%08x" % 3].keep and decisions["%08x" % 2].keep  # 11:05 and 10:40
    assert not decisions["%08x" % 1].keep and not decisions["%08x" % 0].keep
    decisions = by_id(plan(refs(times), Policy(keep_last=3), now=utc(2024, 5, 2)))
    assert [decisions["%08x" % n].keep for n in range(4)] == [False, True, True, True]


def test_iso_weeks_span_new_year():
    # Thu 2020-12-31 and Sun 2021-01-03 are both in ISO week 2020-W53; Mon 2021-01-04 starts 2021-W01.
    times = [utc(2020, 12, 16, 12), utc(2020, 12, 31, 12), utc(2021, 1, 3, 12), utc(2021, 1, 4, 12)]
    decisions = by_id(plan(refs(times), Policy(keep_weekly=3), now=utc(2021, 2, 1)))
    assert [decisions["%08x" % n].keep for n in range(4)] == [True, False, True, True]


def test_oldest_snapshot_kept_while_counts_are_left():
    """restic >= 0.17: with fewer buckets than asked for, the oldest snapshot is kept as well."""
    times = [utc(2024, 3, 1, 1), utc(2024, 3, 1, 2), utc(2024, 3, 2, 1)]
    decisions = by_id(plan(refs(times), Policy(keep_yearly=3), now=utc(2024, 4, 1)))
    assert decisions["%08x" % 2].reasons[-1] == "yearly snapshot"
    assert decisions["%08x" % 0].keep and "oldest" in decisions["%08x" % 0].reasons[0]
    assert not decisions["%08x" % 1].keep


def test_keep_within_is_relative_to_newest_complete_snapshot_not_now():
    times = [utc(2024, 1, 1) + timedelta(hours=12 * n) for n in range(10)]  # newest: Jan 5 12:00
    decisions = by_id(plan(refs(times), Policy(keep_within=timedelta(days=2)), now=utc(2025, 1, 1)))
    assert {i for i in decisions if decisions[i].keep} == {"%08x" % n for n in (6, 7, 8, 9)}
    assert "within 2d" in decisions["%08x" % 6].reasons


def test_keep_within_boundary_is_exclusive():
    times = [utc(2024, 1, 1), utc(2024, 1, 2)]
    decisions = by_id(plan(refs(times), Policy(keep_within=timedelta(days=1)), now=utc(2024, 1, 3)))
    assert not decisions["%08x" % 0].keep  # exactly 1 day older than the newest: not strictly within


def test_incomplete_snapshots_do_not_count_and_are_not_removed():
    complete = refs([utc(2024, 1, 1), utc(2024, 1, 2)])
    broken = [SnapshotRef("bad00001", utc(2024, 1, 3), False), SnapshotRef("bad00000", utc(2023, 1, 1), False)]
    decisions = by_id(plan(complete + broken, Policy(keep_last=1), now=utc(2024, 2, 1)))
    assert decisions["%08x" % 1].keep and "newest complete" in decisions["%08x" % 1].reasons
    assert not decisions["%08x" % 0].keep  # the incomplete newer one did not use up keep_last
    assert decisions["bad00001"].keep and decisions["bad00001"].reasons == ["incomplete: not subject to retention"]
    assert decisions["bad00000"].keep


def test_future_snapshots_are_kept_and_ignored_by_rules():
    times = refs([utc(2024, 1, 1), utc(2024, 1, 2), utc(2030, 1, 1)])
    decisions = by_id(plan(times, Policy(keep_last=1), now=utc(2024, 2, 1)))
    assert decisions["%08x" % 2].keep and "in the future" in decisions["%08x" % 2].reasons[0]
    assert decisions["%08x" % 1].reasons == ["newest complete", "last snapshot"]
    assert not decisions["%08x" % 0].keep


def test_buckets_follow_the_given_timezone():
    # 01:00 UTC on Jan 2 is 22:00 on Jan 1 in Sao Paulo: same local day as the 12:00 UTC snapshot.
    times = [utc(2024, 1, 1, 12), utc(2024, 1, 2, 1)]
    assert len(kept_ids(plan(refs(times), Policy(keep_daily=5), now=utc(2024, 2, 1)))) == 2
    decisions = plan(refs(times), Policy(keep_daily=1), now=utc(2024, 2, 1), tz=SAO_PAULO)
    assert kept_ids(decisions) == {"%08x" % 1}


def test_empty_history():
    assert plan([], Policy(keep_last=1), now=utc(2024, 1, 1)) == []


# -- properties ----------------------------------------------------------------------------------

BASE = utc(2020, 12, 26)  # near a new year inside ISO week 2020-W53


def _independent_demands(snapshots, policy, now, tz):
    """What the rules demand, computed the simple way: group by bucket, take the newest N buckets."""
    eligible = sorted((s for s in snapshots if s.complete and s.created <= now), key=lambda s: (s.created, s.id))
    eligible.reverse()
    demanded = {s.id for s in snapshots if not s.complete or s.created > now}
    if not eligible:
        return demanded
    demanded.add(eligible[0].id)

    def local(snap):
        return snap.created.astimezone(tz)

    bucket_keys = {
        "keep_last": lambda s: (s.created, s.id),
        "keep_hourly": lambda s: local(s).strftime("%Y-%m-%d %H"),
        "keep_daily": lambda s: local(s).date(),
        "keep_weekly": lambda s: local(s).date() - timedelta(days=local(s).weekday()),  # the week's Monday
        "keep_monthly": lambda s: local(s).strftime("%Y-%m"),
        "keep_yearly": lambda s: local(s).year,
    }
    for option, key in bucket_keys.items():
        count = getattr(policy, option)
        if not count:
            continue
        newest_in_bucket = {}
        for snap in eligible:
            newest_in_bucket.setdefault(key(snap), snap)
        buckets = sorted(newest_in_bucket, reverse=True)
        chosen = buckets if count == -1 else buckets[:count]
        demanded.update(newest_in_bucket[b].id for b in chosen)
        if count == -1 or len(buckets) < count:
            demanded.add(eligible[-1].id)  # restic keeps the oldest while counts are left
    if policy.keep_within:
        demanded.update(s.id for s in eligible if s.created > eligible[0].created - policy.keep_within)
    return demanded


minutes = st.one_of(st.integers(0, 12 * 24 * 60), st.integers(0, 3 * 366 * 24 * 60))
histories = st.lists(st.tuples(minutes, st.sampled_from([True, True, True, False])), max_size=60)
counts = st.one_of(st.just(0), st.integers(1, 6), st.just(-1))
policies = st.builds(
    lambda last, hourly, daily, weekly, monthly, yearly, within: (last, hourly, daily, weekly, monthly, yearly, within),
    counts, counts, counts, counts, counts, counts,
    st.one_of(st.just(None), st.integers(1, 24 * 400).map(lambda h: timedelta(hours=h))),
)


def _make(history, policy_values):
    snapshots = [SnapshotRef("%08x" % n, BASE + timedelta(minutes=m), complete) for n, (m, complete) in enumerate(history)]
    last, hourly, daily, weekly, monthly, yearly, within = policy_values
    try:
        policy = Policy(last, hourly, daily, weekly, monthly, yearly, within or timedelta(0))
    except ConfigError:
        policy = Policy(keep_last=1)
    return snapshots, policy


PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(histories, policies, st.integers(-3 * 24 * 60, 4 * 366 * 24 * 60), st.sampled_from([UTC, SAO_PAULO]))
def test_property_kept_set_is_exactly_what_the_rules_demand(history, policy_values, now_minutes, tz):
    snapshots, policy = _make(history, policy_values)
    now = BASE + timedelta(minutes=now_minutes)
    decisions = plan(snapshots, policy, now, tz=tz)
    demanded = _independent_demands(snapshots, policy, now, tz)
    kept = kept_ids(decisions)
    assert kept >= demanded
    assert kept == demanded  # and nothing beyond it
    assert len(decisions) == len(snapshots)


@PROPERTY_SETTINGS
@given(histories, policies, st.integers(0, 4 * 366 * 24 * 60))
def test_property_newest_complete_survives_and_kept_have_reasons(history, policy_values, now_minutes):
    snapshots, policy = _make(history, policy_values)
    now = BASE + timedelta(minutes=now_minutes)
    decisions = plan(snapshots, policy, now)
    eligible = [s for s in snapshots if s.complete and s.created <= now]
    if eligible:
        newest = max(eligible, key=lambda s: (s.created, s.id))
        assert by_id(decisions)[newest.id].keep
        assert "newest complete" in by_id(decisions)[newest.id].reasons
    for decision in decisions:
        assert decision.keep == bool(decision.reasons)
    for snap in snapshots:
        if not snap.complete:
            assert by_id(decisions)[snap.id].keep


@PROPERTY_SETTINGS
@given(histories, policies, st.integers(0, 4 * 366 * 24 * 60), st.randoms(use_true_random=False))
def test_property_deterministic_and_idempotent(history, policy_values, now_minutes, rng):
    snapshots, policy = _make(history, policy_values)
    now = BASE + timedelta(minutes=now_minutes)
    first = plan(snapshots, policy, now)
    shuffled = list(snapshots)
    rng.shuffle(shuffled)
    assert [d.to_dict() for d in plan(shuffled, policy, now)] == [d.to_dict() for d in first]
    survivors = [s for s in snapshots if s.id in kept_ids(first)]
    again = plan(survivors, policy, now)
    assert all(d.keep for d in again)


# -- stale partials and sessions -----------------------------------------------------------------


def _record(snap_id, status, mtime):
    return SnapshotRecord(
        id=snap_id, appliance="pam1", created=utc(2024, 1, 1), object="20240101T000000Z-%s.tar.zst.age" % snap_id,
        encrypted=True, status=status, size=1, sha256=None, mtime=mtime,
    )


def test_stale_partials_uses_last_write_time_and_grace():
    now = utc(2024, 1, 2)
    records = [
        _record("00000001", "partial", (now - timedelta(hours=30)).timestamp()),
        _record("00000002", "partial", (now - timedelta(hours=1)).timestamp()),  # still being written?
        _record("00000003", "complete", (now - timedelta(days=30)).timestamp()),
        _record("00000004", "orphaned", (now - timedelta(days=30)).timestamp()),
    ]
    stale = stale_partials(records, timedelta(hours=24), now)
    assert [r.id for r in stale] == ["00000001"]
    assert [r.id for r in stale_partials(records, timedelta(0), now)] == ["00000001", "00000002"]
    with pytest.raises(ConfigError):
        stale_partials(records, timedelta(hours=-1), now)


def test_unreferenced_sessions():
    everything = ["pam1/sessions/2024/0101/a.arz", "pam1/sessions/2024/0101/b.arz", "pam1/sessions/2024/0102/c.arz"]
    kept = [[{"path": "pam1/sessions/2024/0101/a.arz", "size": 1, "sha256": "0" * 64}], ["pam1//sessions/2024/0102/c.arz"]]
    assert unreferenced_sessions(everything, kept) == ["pam1/sessions/2024/0101/b.arz"]
    assert unreferenced_sessions(everything, []) == sorted(everything)
    with pytest.raises(IntegrityError, match="refusing"):
        unreferenced_sessions(everything, [["pam1/sessions/2024/0101/a.arz"], None])
