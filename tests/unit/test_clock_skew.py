"""Future-dated snapshots (issue 15 item 3) in the engine, against a real directory target: the tolerance,
the listing's flag and the appliance summary, retention and prune keeping them aside, verify's "latest"
and the refusal to pass a verification that found nothing."""

from datetime import datetime, timedelta, timezone

import pytest

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, retention
from ansible_collections.segura.backup.plugins.module_utils._engine.clock_skew import parse_future_tolerance
from ansible_collections.segura.backup.plugins.module_utils._engine.errors import ConfigError, IntegrityError
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import plan_appliance
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget
from ansible_collections.segura.backup.plugins.module_utils._engine.verification import (
    require_something_to_verify,
    select_snapshots,
)
from tests.unit.test_catalog import put_snapshot

UTC = timezone.utc
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def target(tmp_path):
    with PathTarget(str(tmp_path)) as opened:
        yield opened


@pytest.fixture
def history(target):
    """Three real daily snapshots of pam1 and one planted ten years ahead."""
    real = [put_snapshot(target, NOW - timedelta(days=days))[1].id for days in (0, 1, 2)]
    planted = put_snapshot(target, NOW + timedelta(days=3653))[1].id
    return {"real": real, "planted": planted}


@pytest.mark.parametrize("text, expected", [
    (None, HOUR), ("", HOUR), ("1h", HOUR), ("2d", timedelta(days=2)), ("900", timedelta(seconds=900)),
    (900, timedelta(seconds=900)), ("0", timedelta(0)),
])
def test_future_tolerance_is_a_duration_or_seconds(text, expected):
    assert parse_future_tolerance(text) == expected


@pytest.mark.parametrize("text", ["soon", "-5", "1h30", True])
def test_a_bad_future_tolerance_names_the_option(text):
    with pytest.raises(ConfigError, match="future_tolerance"):
        parse_future_tolerance(text)


def test_listing_flags_future_dated_and_the_summary_passes_over_them(target, history):
    listing = catalog.list_snapshots(target, "pam1")
    flagged = listing.flag_future_dated(NOW, HOUR)
    assert [r.id for r in flagged] == [history["planted"]]
    assert {r.id: r.to_dict(NOW)["future_dated"] for r in listing.snapshots}[history["planted"]] is True
    summary = catalog.appliance_summaries(listing, NOW)[0]
    assert summary["latest_complete"]["id"] == summary["latest"]["id"] == history["real"][0]
    assert summary["future_dated"] == 1


def test_within_the_tolerance_a_snapshot_ahead_is_an_ordinary_one():
    """An appliance clock ten minutes ahead: its newest snapshot is the newest, and keep_last 1 keeps only it."""
    refs = [retention.SnapshotRef("%08x" % n, NOW - timedelta(days=n)) for n in (1, 2)]
    refs.append(retention.SnapshotRef("0000000a", NOW + timedelta(minutes=10)))
    decisions = {d.id: d for d in retention.plan(refs, retention.Policy(keep_last=1), NOW, future_tolerance=HOUR)}
    assert decisions["0000000a"].reasons == ["newest complete", "last snapshot"]
    assert not decisions["00000001"].keep and not decisions["00000002"].keep


def test_prune_keeps_a_future_dated_snapshot_aside_and_says_so(target, history):
    plan = plan_appliance(target, "pam1", retention.Policy(keep_last=1), NOW, future_tolerance=HOUR)
    kept = {k["id"]: k["reasons"] for k in plan.kept}
    assert kept == {history["planted"]: ["in the future: not subject to retention (clock skew?)"],
                    history["real"][0]: ["newest complete", "last snapshot"]}
    assert sorted(r.id for r in plan.remove) == sorted(history["real"][1:])
    assert len(plan.warnings) == 1 and history["planted"] in plan.warnings[0] and "ahead of now" in plan.warnings[0]


def test_verify_latest_passes_over_a_future_dated_snapshot(target, history):
    listing = catalog.list_snapshots(target, "pam1")
    listing.flag_future_dated(NOW, HOUR)
    chosen, missing = select_snapshots(listing, "latest")
    assert [r.id for r in chosen] == [history["real"][0]] and missing == []
    chosen, _missing = select_snapshots(listing, "ids", ids=[history["planted"]])
    assert [r.id for r in chosen] == [history["planted"]]  # by id it is verified all the same


def test_a_verification_that_found_nothing_fails(target, history):
    listing = catalog.list_snapshots(target, "pam1.example.com")
    chosen, missing = select_snapshots(listing, "latest")
    with pytest.raises(IntegrityError, match=r"no snapshot of appliance 'pam1.example.com' to verify in .*target "
                                             r"holds pam1"):
        require_something_to_verify(listing, chosen, missing, "pam1.example.com", "the target",
                                    on_target=catalog.list_appliances(target)[0])


def test_only_future_dated_snapshots_is_nothing_to_verify(target):
    planted = put_snapshot(target, NOW + timedelta(days=3653))[1].id
    listing = catalog.list_snapshots(target, "pam1")
    listing.flag_future_dated(NOW, HOUR)
    chosen, missing = select_snapshots(listing, "latest")
    with pytest.raises(IntegrityError, match="only future-dated snapshot.*pam1/%s" % planted):
        require_something_to_verify(listing, chosen, missing, "pam1", "the target")
