"""The benchmark gate's decision: is this run slower than the baseline beyond the tolerance?

Plain Python (no numpy or scipy on the hosts' side of the contract), deterministic (a seeded RNG
per case), a few tens of milliseconds per case.

What is compared. Each case keeps its samples: seconds per unit of work (per TFLOP, per GB, per
iteration), one per timed batch of calls. Its speed is the reciprocal of the *trimmed mean* of those
samples (TRIM of them cut at each end). The trimmed mean is a throughput: a neighbour that slows a
third of the samples lowers it by a third of what it costs them, where the median would not move
at all; a lone hiccup (a page fault, a scheduler tick) is cut off. High variance with slower
samples is evidence, never an excuse.

The test. θ = speed(run) / speed(baseline). Its distribution comes from a two-level bootstrap:
the baseline's runs are resampled, then the samples within each chosen run (so the baseline's own
run-to-run spread widens the interval), the run's samples are resampled, and the run is given a
run-to-run effect drawn from the baseline's runs (a run that differs from the baseline only as
much as the baseline's runs differ from each other is not a slowdown). With `p_slower`, the
bootstrap probability that θ < 1 - tolerance:

- ``fail`` when p_slower >= 1 - ALPHA: the slowdown beyond tolerance is established;
- ``pass`` when p_slower <= ALPHA: the run is established to be within tolerance (or faster);
- ``inconclusive`` otherwise: never a silent pass.

The stated rates (checked by tests/test_bench_stats.py on synthetic samples, tolerance 0.15, 15
samples against a baseline of 3 runs of 15):

- false alarm: a case whose true slowdown is within the tolerance fails with probability at most
  ALPHA = 0.5 % (one-sided; at the tolerance's very edge). A case as fast as its baseline fails with
  a probability far below that (none in thousands of trials at 0, 5 and 10 % slower, with noise
  up to 5 % cv and 5 % outliers). A run of k cases fails falsely with probability at most k·ALPHA.
- miss: a case slower than the tolerance passes with probability at most ALPHA as well; it fails
  (detection) in at least 99 % of trials 20 % slower and all trials 50 % slower with noise up to
  2 % cv (GPU-like), and in at least 80 % of trials 20 % slower with 5 % cv; the rest end
  inconclusive, and the retest (more samples) settles most of them.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Sequence

TRIM = 0.1  # cut from each end before the mean
ALPHA = 0.005  # one-sided, per case: the false-alarm rate (and the miss rate at the edge)
RESAMPLES = 2000

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True)
class Decision:
    verdict: str  # pass | fail | inconclusive
    ratio: float  # speed(run) / speed(baseline), the point estimate
    low: float  # the 1 - 2*ALPHA interval of the ratio
    high: float
    p_slower: float  # bootstrap probability that the ratio is below 1 - tolerance
    samples: int
    baseline_samples: int
    baseline_runs: int

    @property
    def confidence(self) -> float:
        """How sure the verdict is of its claim: P(slower) for a fail, P(within) for a pass, and for
        an inconclusive case the larger of the two (it is not sure enough of either)."""
        if self.verdict == FAIL:
            return self.p_slower
        if self.verdict == PASS:
            return 1.0 - self.p_slower
        return max(self.p_slower, 1.0 - self.p_slower)

    def as_dict(self) -> dict[str, float | int | str | list[float]]:
        return {"verdict": self.verdict, "ratio": round(self.ratio, 4), "ci": [round(self.low, 4), round(self.high, 4)],
                "p_slower": round(self.p_slower, 4), "confidence": round(self.confidence, 4),
                "samples": self.samples, "baseline_samples": self.baseline_samples,
                "baseline_runs": self.baseline_runs}


def trimmed_mean(values: Sequence[float], trim: float = TRIM) -> float:
    ordered = sorted(values)
    cut = int(trim * len(ordered))
    kept = ordered[cut:len(ordered) - cut] or ordered
    return sum(kept) / len(kept)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation (sample standard deviation over the mean)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return math.sqrt(var) / mean if mean else 0.0


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Quantile of sorted values, linear between order statistics."""
    pos = q * (len(ordered) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def seed_for(name: str) -> int:
    """A stable seed per case: the same samples always give the same verdict."""
    return zlib.crc32(name.encode())


def run_effects(baseline_runs: Sequence[Sequence[float]], trim: float = TRIM) -> list[float]:
    """Each run's trimmed mean over the pool of all its case's runs: how much runs differ (none for one run)."""
    runs = [r for r in baseline_runs if r]
    if len(runs) < 2:
        return []
    pooled = trimmed_mean([x for r in runs for x in r], trim)
    return [trimmed_mean(r, trim) / pooled for r in runs]


def decide(now: Sequence[float], baseline_runs: Sequence[Sequence[float]], tolerance: float, *,
           alpha: float = ALPHA, resamples: int = RESAMPLES, seed: int = 0, trim: float = TRIM,
           effects: Sequence[float] | None = None) -> Decision:
    """Samples are seconds per unit of work (lower is faster); `baseline_runs` holds one list per run.

    `effects` are run-to-run effects to draw the run's own from: by default this case's baseline runs'
    (run_effects); the gate passes those of every case of the baseline, pooled, since runs differ for
    reasons (clocks, placement, the host) that all cases share, and three runs alone say little of
    how far a fourth may fall.
    """
    runs = [list(r) for r in baseline_runs if r]
    now = list(now)
    if not runs or not now:
        raise ValueError("need samples from the run and from at least one baseline run")
    pooled = [x for r in runs for x in r]
    base_tm = trimmed_mean(pooled, trim)
    ratio = base_tm / trimmed_mean(now, trim)
    # Run-to-run effects as log offsets, spread back to a whole run's (each was measured against a pool
    # that held it: its spread is short by a factor sqrt((R-1)/R)).
    n_runs = len(runs)
    logs = [math.log(e) for e in (effects or run_effects(runs, trim)) if e > 0] or [0.0]
    centre = sum(logs) / len(logs)
    widen = math.sqrt(n_runs / (n_runs - 1)) if n_runs > 1 else 1.0
    logs = [(x - centre) * widen for x in logs]
    rng = random.Random(seed)
    choices, choice = rng.choices, rng.choice
    n_now = len(now)
    thetas = []
    for _ in range(resamples):
        base = []
        for r in runs:  # samples within each run; the runs' own effects come next
            base += choices(r, k=len(r))
        within = trimmed_mean(base, trim) / trimmed_mean(choices(now, k=n_now), trim)
        # This run's effect against the mean effect of the baseline's runs, both drawn afresh.
        between = sum(choices(logs, k=n_runs)) / n_runs - choice(logs)
        thetas.append(within * math.exp(between))
    thetas.sort()
    edge = 1.0 - tolerance
    p_slower = sum(1 for t in thetas if t < edge) / resamples
    if p_slower >= 1.0 - alpha:
        verdict = FAIL
    elif p_slower <= alpha:
        verdict = PASS
    else:
        verdict = INCONCLUSIVE
    return Decision(verdict, ratio, _quantile(thetas, alpha), _quantile(thetas, 1.0 - alpha), p_slower,
                    len(now), len(pooled), len(runs))


def overall(verdicts: Sequence[str]) -> str:
    """A run fails if any case fails; it passes only if every case passes."""
    found = set(verdicts)
    if FAIL in found:
        return FAIL
    if INCONCLUSIVE in found:
        return INCONCLUSIVE
    return PASS
