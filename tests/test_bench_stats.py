"""The benchmark gate's decision (bench.stats) on synthetic samples: the false-alarm and detection
rates that its docstring and the README state, with and without noise, outliers and run-to-run
effects, for both of the bench's plans (a GPU's: mean and tail of 120 samples; a CPU's: trimmed mean
of 30). Samples are seconds per unit of work; a shift of s makes the run's samples 1/(1-s) as long,
so its speed is (1-s) of the baseline's. Every generator is seeded: the counts are exact."""

from __future__ import annotations

import math
import random

import pytest

from ipex_fleet.host.bench import stats

TOLERANCE = 0.15
GPU = {"n": 120, "trim": 0.0, "tail": stats.TAIL}
CPU = {"n": 30, "trim": 0.2, "tail": None}
# name: (plan, cv within a run, share of outliers (2-5x slower), cv of the run-to-run effect)
NOISE = {
    "gpu quiet": (GPU, 0.01, 0.0, 0.005),
    "gpu noisy": (GPU, 0.03, 0.0, 0.01),
    "cpu noisy": (CPU, 0.05, 0.0, 0.01),
    "cpu outliers": (CPU, 0.10, 0.05, 0.02),
}
TRIALS = 25  # per cell (GPU plans: 15, their samples are many and quiet; the decision is costlier)


def draw(rng: random.Random, n: int, level: float, cv: float, outliers: float = 0.0, run_cv: float = 0.0,
         effect: float | None = None) -> list[float]:
    effect = math.exp(rng.gauss(0, run_cv)) if effect is None else effect
    return [level * effect * math.exp(rng.gauss(0, cv)) * (rng.uniform(2, 5) if rng.random() < outliers else 1)
            for _ in range(n)]


def trial(rng: random.Random, shift: float, noise: str, seed: int) -> stats.Decision:
    """One gated run of one case, in a baseline of 8 cases whose run effects the gate pools."""
    plan, cv, outliers, run_cv = NOISE[noise]
    n = plan["n"]
    cases = [[draw(rng, n, 1.0, cv, outliers, run_cv) for _ in range(3)] for _ in range(8)]
    effects = [e for runs in cases for e in stats.run_effects(runs, plan["trim"])]
    now = draw(rng, n, 1.0 / (1.0 - shift), cv, outliers, run_cv)
    return stats.decide(now, cases[0], TOLERANCE, trim=plan["trim"], tail=plan["tail"], effects=effects, seed=seed)


def trials_for(noise: str) -> int:
    return 15 if NOISE[noise][0] is GPU else TRIALS


def counts(shift: float, noise: str, trials: int) -> dict[str, int]:
    rng = random.Random(f"{noise} {shift}")
    found = {stats.PASS: 0, stats.FAIL: 0, stats.INCONCLUSIVE: 0}
    for i in range(trials):
        found[trial(rng, shift, noise, i).verdict] += 1
    return found


# The least share of passes at 0 % and of fails at 20 % slower that each noise gets (stated in the README).
PASS_AT_0 = {"gpu quiet": 1.0, "gpu noisy": 1.0, "cpu noisy": 1.0, "cpu outliers": 0.6}
FAIL_AT_20 = {"gpu quiet": 1.0, "gpu noisy": 0.9, "cpu noisy": 0.7, "cpu outliers": 0.05}


@pytest.mark.parametrize("noise", list(NOISE))
@pytest.mark.parametrize("shift", [0.0, 0.05, 0.10, 0.20, 0.50])
def test_within_tolerance_never_fails_and_beyond_never_passes(shift, noise):
    trials = trials_for(noise)
    found = counts(shift, noise, trials)
    if shift <= 0.10:  # within the tolerance: no false alarm
        assert found[stats.FAIL] == 0, found
    else:  # beyond it: no miss
        assert found[stats.PASS] == 0, found
    if shift == 0.0:
        assert found[stats.PASS] >= PASS_AT_0[noise] * trials, found
    if shift == 0.20:
        assert found[stats.FAIL] >= FAIL_AT_20[noise] * trials, found
    if shift == 0.50:
        assert found[stats.FAIL] == trials, found


@pytest.mark.parametrize("noise,trials,bound", [("gpu quiet", 200, 4), ("cpu noisy", 300, 5)])
def test_at_the_edge_of_the_tolerance_false_alarms_and_misses_stay_near_alpha(noise, trials, bound):
    """Exactly 15 % slower: the hardest case. Fails (false alarms for a case that is within the
    tolerance by a hair) and passes (misses) each stay within a binomial margin of ALPHA: P(X > bound)
    < 0.5 % for X ~ Binomial(trials, ALPHA)."""
    found = counts(TOLERANCE, noise, trials)
    assert found[stats.FAIL] <= bound and found[stats.PASS] <= bound, found
    assert found[stats.INCONCLUSIVE] >= trials - 2 * bound


def neighboured(rng: random.Random, n: int, share: float = 0.25) -> list[float]:
    """What a process on the GPU 15 % of the time did to an H200's samples: a fifth to a quarter of
    them 1.3 to 2.5 times as long (benchmarks/results/bench_gate_h200.txt)."""
    return [t * (rng.uniform(1.3, 2.5) if rng.random() < share else 1.0) for t in draw(rng, n, 1.0, 0.01)]


def test_a_neighbour_on_a_quarter_of_the_samples_fails_where_the_median_does_not_move():
    rng = random.Random(7)
    first, after_retest = [], []
    for i in range(TRIALS):
        base = [draw(rng, GPU["n"], 1.0, 0.01) for _ in range(3)]
        now = neighboured(rng, GPU["n"])
        d = stats.decide(now, base, TOLERANCE, tail=GPU["tail"], seed=i)
        assert abs(stats.median([x for r in base for x in r]) / stats.median(now) - 1) < 0.05  # the median is blind
        assert d.tail is not None and d.tail.ratio < 0.7 and d.ratio > 0.75  # the mean alone: near the edge
        first.append(d.verdict)
        if d.verdict != stats.FAIL:  # the gate's retest: another round, pooled
            d = stats.decide(now + neighboured(rng, GPU["n"]), base, TOLERANCE, tail=GPU["tail"], seed=i)
        after_retest.append(d.verdict)
    assert stats.PASS not in first and first.count(stats.FAIL) >= 0.8 * TRIALS, first
    assert after_retest == [stats.FAIL] * TRIALS, after_retest
    # Without the tail statistic the mean alone sees about 20 % and is never a pass either.
    rng = random.Random(8)
    base = [draw(rng, GPU["n"], 1.0, 0.01) for _ in range(3)]
    assert stats.decide(neighboured(rng, GPU["n"]), base, TOLERANCE).verdict != stats.PASS


def test_high_variance_with_a_lower_median_is_evidence_not_an_excuse():
    """The old gate's rule (slower and noisy: warn, never fail) let a halved GPU pass; noise is no shield."""
    rng = random.Random(9)
    for i, plan in enumerate((GPU, CPU)):
        base = [draw(rng, plan["n"], 1.0, 0.02) for _ in range(3)]
        now = draw(rng, plan["n"], 1 / 0.6, 0.25)  # 40 % slower, cv 25 %
        d = stats.decide(now, base, TOLERANCE, trim=plan["trim"], tail=plan["tail"], seed=i)
        assert stats.cv(now) > 0.2 and d.verdict == stats.FAIL and d.high < 1 - TOLERANCE


def test_a_lone_outlier_is_trimmed_on_a_cpu():
    rng = random.Random(10)
    base = [draw(rng, 30, 1.0, 0.03) for _ in range(3)]
    now = draw(rng, 30, 1.0, 0.03)
    now[3] *= 6  # the scheduler took the core away for one sample
    assert stats.decide(now, base, TOLERANCE, trim=CPU["trim"]).verdict == stats.PASS


def test_run_to_run_spread_widens_the_interval_and_one_run_is_not_enough_to_be_sure():
    rng = random.Random(11)
    now = draw(rng, 30, 1.0, 0.02)
    steady = [draw(rng, 30, 1.0, 0.02, effect=1.0) for _ in range(3)]
    wandering = [draw(rng, 30, 1.0, 0.02, effect=e) for e in (0.9, 1.0, 1.1)]
    a, b = stats.decide(now, steady, TOLERANCE), stats.decide(now, wandering, TOLERANCE)
    assert b.high - b.low > 2 * (a.high - a.low)
    # Pooled effects from other cases (what the gate passes) widen a case whose own runs agreed.
    c = stats.decide(now, steady, TOLERANCE, effects=stats.run_effects(wandering))
    assert c.high - c.low > 2 * (a.high - a.low)


def test_the_decision_is_deterministic_and_says_how_sure_it_is():
    rng = random.Random(12)
    base = [draw(rng, 30, 1.0, 0.02) for _ in range(3)]
    now = draw(rng, 30, 1 / 0.7, 0.02)
    first = stats.decide(now, base, TOLERANCE, seed=stats.seed_for("matmul"))
    assert first == stats.decide(now, base, TOLERANCE, seed=stats.seed_for("matmul"))
    assert first.verdict == stats.FAIL and first.confidence == first.p_slower >= 1 - stats.ALPHA
    assert first.low <= first.ratio <= first.high and abs(first.ratio - 0.7) < 0.03
    passed = stats.decide(draw(rng, 30, 1.0, 0.02), base, TOLERANCE)
    assert passed.verdict == stats.PASS and passed.confidence == 1 - passed.p_slower >= 1 - stats.ALPHA
    as_json = first.as_dict()
    assert as_json["verdict"] == "fail" and as_json["ci"] == [round(first.low, 4), round(first.high, 4)]


def test_overall_verdict():
    assert stats.overall(["pass", "pass"]) == "pass"
    assert stats.overall(["pass", "inconclusive"]) == "inconclusive"
    assert stats.overall(["inconclusive", "fail", "pass"]) == "fail"
    with pytest.raises(ValueError):
        stats.decide([], [[1.0]], TOLERANCE)
