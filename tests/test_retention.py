"""The retention policy and drift trend, as pure functions: every anchor survives any policy, the
policy keeps exactly what it says, and drift is reported with its figures and trend."""

from __future__ import annotations

import itertools

import pytest

from ipex_fleet.domain import Generation, ProfileState
from ipex_fleet.fleet.drift import assess, slope
from ipex_fleet.fleet.retention import DAY, Anchors, RetentionPolicy, choose

NOW = 1_800_000_000.0


def state(ages_days: dict[int, float], current: int) -> ProfileState:
    return ProfileState(tuple(Generation(n, f"/nix/store/{n}-system", int(NOW - d * DAY))
                              for n, d in sorted(ages_days.items())), current)


def test_policy_alone_keeps_the_last_n_and_the_young_ones():
    s = state({1: 40, 2: 30, 3: 20, 4: 10, 5: 3, 6: 1, 7: 0.5, 8: 0}, 8)
    plan = choose(s, RetentionPolicy(keep_last=2, keep_days=7), Anchors(current=8), NOW)
    assert sorted(plan.keep) == [5, 6, 7, 8] and plan.delete == (1, 2, 3, 4)
    assert plan.keep[7] == ("last 2", "younger than 7 days")
    assert plan.keep[8] == ("last 2", "younger than 7 days", "current")


def test_every_anchor_survives_a_policy_that_keeps_nothing_else():
    s = state({n: 100 for n in range(1, 9)}, 8)
    anchors = Anchors(current=8, running_path="/nix/store/6-system", booted_path="/nix/store/1-system",
                      intent=(3,), intent_paths=("/nix/store/4-system",), rollback_target=7, counted=(5,))
    plan = choose(s, RetentionPolicy(keep_last=1, keep_days=0), anchors, NOW)
    assert plan.delete == (2,)
    assert {n: plan.keep[n][-1] for n in plan.keep} == {
        1: "booted", 3: "named by an open intent", 4: "named by an open intent", 5: "boot entry being counted",
        6: "running", 7: "the last deploy's rollback target", 8: "current"}


@pytest.mark.parametrize("keep_last,keep_days", list(itertools.product([1, 2, 5, 20], [0, 1, 15])))
def test_no_policy_deletes_an_anchor_and_deletion_is_exactly_the_rest(keep_last, keep_days):
    s = state({n: 2 * (12 - n) for n in range(1, 12)}, 9)  # 11 generations, 20 days to 0 old
    anchors = Anchors(current=9, booted_path="/nix/store/2-system", rollback_target=4, counted=(6,), intent=(11,))
    plan = choose(s, RetentionPolicy(keep_last, keep_days), anchors, NOW)
    assert {2, 4, 6, 9, 11} <= set(plan.keep)
    assert set(plan.keep) | set(plan.delete) == set(range(1, 12)) and not set(plan.keep) & set(plan.delete)
    newest = set(range(11, max(11 - keep_last, 0), -1))
    young = {n for n in range(1, 12) if 2 * (12 - n) < keep_days}
    assert set(plan.keep) == newest | young | {2, 4, 6, 9, 11}


def test_an_anchor_that_is_not_a_generation_any_more_is_ignored():
    s = state({1: 9, 2: 0}, 2)
    plan = choose(s, RetentionPolicy(1, 0), Anchors(current=2, rollback_target=99, booted_path="/nix/store/gone"), NOW)
    assert sorted(plan.keep) == [2] and plan.delete == (1,)


def test_drift_reports_figures_and_a_trend_against_history():
    document = {"quick": True, "results": [{"name": "matmul", "value": 60.0, "unit": "GFLOP/s", "cv": 0.01},
                                           {"name": "copy", "value": 10.0, "unit": "GB/s", "cv": 0.01}],
                "gate": {"result": "fail", "baseline_recorded": False, "tolerance": 0.15, "comparisons": [
                    {"name": "matmul", "verdict": "fail", "ratio": 0.6, "baseline": 100.0,
                     "message": "60 GFLOP/s is 60% of baseline 100"},
                    {"name": "copy", "verdict": "pass", "ratio": 1.0, "baseline": 10.0, "message": "ok"}]}}
    history = [{"quick": True, "results": {"matmul": v, "copy": 10.0}} for v in (100.0, 95.0, 80.0, 60.0)]
    history.insert(1, {"quick": False, "results": {"matmul": 1.0}})  # a full run: another kind, not in the trend
    history.insert(2, {"verdict": "rebaselined", "previous_baseline": {}})
    found = assess(document, history)
    matmul = next(c for c in found.report["cases"] if c["name"] == "matmul")
    assert matmul["trend"] == [1.0, 0.95, 0.8, 0.6] and matmul["ratio"] == 0.6
    assert matmul["slope_per_run"] == pytest.approx(-0.135)
    assert found.warnings == ("benchmark drift: matmul: 60 GFLOP/s is 60% of baseline 100; trend over 4 run(s): "
                              "100% 95% 80% 60% (-13.5% per run)",)
    assert found.summary["result"] == "fail" and found.report["result"] == "fail"


def test_slope_needs_two_points():
    assert slope([1.0]) is None and slope([1.0, 1.0]) == 0 and slope([1.0, 0.9, 0.8]) == pytest.approx(-0.1)
