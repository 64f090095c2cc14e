"""prune() itself, not only the retention planner, as a property: whatever the history (complete snapshots,
objects without a sidecar, sidecars without an object, damaged sidecars, snapshots in the future), the policy
and the clock, a prune on a real directory target never removes the newest complete snapshot, never removes a
snapshot it reports as kept, and removes every one it reports as removed."""

import os
import tempfile
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.segura.backup.plugins.module_utils._engine import catalog, retention
from ansible_collections.segura.backup.plugins.module_utils._engine.pruning import FUTURE_TOLERANCE, prune
from ansible_collections.segura.backup.plugins.module_utils._engine.targets.path import PathTarget
from tests.unit.test_pruning import NOW, put

KINDS = ["complete", "complete", "complete", "no sidecar", "no object", "damaged sidecar"]
histories = st.lists(st.tuples(st.integers(-2 * 24 * 60, 120 * 24 * 60), st.sampled_from(KINDS)),
                     min_size=1, max_size=10, unique_by=lambda entry: entry[0])
policies = st.fixed_dictionaries({"keep_last": st.integers(0, 3), "keep_daily": st.integers(0, 4),
                                  "keep_weekly": st.integers(0, 2), "keep_monthly": st.integers(0, 2)})


def _plant(target, minutes_ago, kind):
    """One snapshot of the history, ``minutes_ago`` before NOW (negative: in the future)."""
    snap_id = put(target, NOW - timedelta(minutes=minutes_ago))
    record = [r for r in catalog.list_snapshots(target, "pam1").snapshots if r.id == snap_id][0]
    stored = catalog.object_path("pam1", record.object)
    sidecar = "%s/%s" % (catalog.snapshots_dir("pam1"), catalog.sidecar_name(record.object))
    if kind == "no sidecar":
        target.remove(sidecar)
    elif kind == "no object":
        target.remove(stored)
    elif kind == "damaged sidecar":
        target.write_bytes(sidecar, b'{"not": "a sidecar"}')
    return snap_id, minutes_ago


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories, policies, st.integers(0, 30 * 24 * 60))
def test_prune_never_removes_the_newest_complete_snapshot(history, policy_values, later_minutes):
    if not any(policy_values.values()):
        policy_values["keep_daily"] = 1
    now = NOW + timedelta(minutes=later_minutes)
    with tempfile.TemporaryDirectory() as folder, PathTarget(folder) as target:
        planted = [(_plant(target, minutes, kind), kind) for minutes, kind in history]
        before = {r.id: r for r in catalog.list_snapshots(target, "pam1").snapshots}
        # A snapshot dated up to the future tolerance ahead counts as now (clock skew); beyond it, it is
        # future-dated: kept, and ignored by every rule (clock_skew.py).
        eligible = [(-minutes, snap_id) for (snap_id, minutes), kind in planted
                    if kind == "complete" and NOW - timedelta(minutes=minutes) <= now + FUTURE_TOLERANCE]
        (outcome,) = prune(target, retention.Policy(**policy_values), appliance="pam1", now=now,
                           prune_sessions=False)
        assert outcome.error is None, outcome.error
        after = {r.id: r for r in catalog.list_snapshots(target, "pam1").snapshots}
        files = set(os.listdir(os.path.join(folder, "pam1", "snapshots")))
        if eligible:
            newest = max(eligible)[1]
            assert newest in after and after[newest].status == catalog.STATUS_COMPLETE
            assert before[newest].object in files
        report = outcome.to_dict()
        removed = {entry["id"] for entry in report.get("removed", [])}
        kept = {entry["id"] for entry in report.get("kept", [])}
        assert not removed & kept
        assert not removed & set(after), "reported removed, still listed"
        assert kept <= set(after), "reported kept, but gone"
