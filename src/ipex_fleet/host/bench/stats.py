"""The benchmark gate's decision: is this run slower than the baseline beyond the tolerance?

Plain Python (no numpy or scipy on the hosts' side of the contract), deterministic (a seeded RNG
per case), tens of milliseconds per case.

What is compared. Each case keeps its samples: seconds per unit of work (per TFLOP, per GB, per
iteration), one per timed batch of calls. Two statistics of them are held against the baseline's:

- the throughput: the reciprocal of the mean of the samples (a trimmed mean, `trim` cut at each
  end, where the device's timings carry the host's scheduler: the CPU). A neighbour that slows a
  fifth of the samples lowers it by a fifth of what it costs them, where a median would not move;
- the tail (where the plan asks for it: GPUs, whose samples are timed on the device, queue kept
  full, so a slow sample is the device's): the `tail` quantile of the samples, 0.9. A device that
  runs one batch in five at half speed, because another process holds it, is slowed, whatever its
  mean says: high variance with slower samples is evidence, never an excuse.

The test. For each statistic θ = speed(run) / speed(baseline). Its distribution comes from a
bootstrap: the samples are resampled within each of the baseline's runs and within the run, and a
run-to-run effect is added: the run's own against the mean of the baseline's runs, both drawn from
the baseline's runs' effects (pooled over every case by the gate: runs differ for reasons the cases
share, and three runs alone say little of how far a fourth may fall). With `p_slower`, the bootstrap
probability that θ < 1 - tolerance, each statistic at level ALPHA / (number of statistics):

- ``fail`` when one statistic's p_slower >= 1 - that level: a slowdown beyond tolerance is established;
- ``pass`` when every statistic's p_slower <= that level: the run is established to be within tolerance;
- ``inconclusive`` otherwise: never a silent pass.

The stated rates (tests/test_bench_stats.py checks them on synthetic samples, tolerance 0.15,
against a baseline of 3 runs):

- false alarm: a case whose true slowdown is within the tolerance fails with probability at most
  ALPHA = 0.5 % (one-sided, at the tolerance's very edge); a run of k cases at most k x ALPHA. A
  case 10 % slower or less never failed in the tests (240 trials at 0, 5 and 10 % slower, with noise
  up to 10 % cv, 5 % outliers and run-to-run effects).
- miss: a case slower than the tolerance passes with probability at most ALPHA. It fails in every
  trial 20 % slower at GPU-like noise (1 % cv) and 50 % slower at every noise tested, and in at
  least 70 % of trials 20 % slower at 5 % cv; the rest end inconclusive, and the retest (more
  samples) settles many of them.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Sequence

TRIM = 0.0  # cut from each end before the mean (the plan says how much, per device)
TAIL = 0.9  # the tail statistic's quantile, where the plan asks for one
ALPHA = 0.005  # one-sided, per case: the false-alarm rate (and the miss rate at the edge)
RESAMPLES = 2000

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True)
class Judged:
    """One statistic's comparison."""

    verdict: str
    ratio: float  # speed(run) / speed(baseline), the point estimate
    low: float  # the 1 - 2 x level interval of the ratio
    high: float
    p_slower: float  # bootstrap probability that the ratio is below 1 - tolerance

    def as_dict(self) -> dict[str, float | str | list[float]]:
        return {"verdict": self.verdict, "ratio": round(self.ratio, 4), "ci": [round(self.low, 4), round(self.high, 4)],
                "p_slower": round(self.p_slower, 4)}


@dataclass(frozen=True)
class Decision:
    verdict: str  # pass | fail | inconclusive
    throughput: Judged
    tail: Judged | None
    samples: int
    baseline_samples: int
    baseline_runs: int

    @property
    def ratio(self) -> float:
        return self.throughput.ratio

    @property
    def low(self) -> float:
        return self.throughput.low

    @property
    def high(self) -> float:
        return self.throughput.high

    @property
    def p_slower(self) -> float:
        """The probability that the case is slower than the tolerance: its likelier statistic's."""
        return max(j.p_slower for j in self.judged)

    @property
    def judged(self) -> list[Judged]:
        return [self.throughput] + ([self.tail] if self.tail else [])

    @property
    def confidence(self) -> float:
        """How sure the verdict is of its claim: P(slower) for a fail, P(within) for a pass, and for
        an inconclusive case the larger of the two (it is not sure enough of either)."""
        if self.verdict == FAIL:
            return self.p_slower
        if self.verdict == PASS:
            return 1.0 - self.p_slower
        return max(self.p_slower, 1.0 - self.p_slower)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {**self.throughput.as_dict(), "verdict": self.verdict,
                                  "p_slower": round(self.p_slower, 4), "confidence": round(self.confidence, 4),
                                  "throughput": self.throughput.as_dict(), "samples": self.samples,
                                  "baseline_samples": self.baseline_samples, "baseline_runs": self.baseline_runs}
        if self.tail is not None:
            out["tail"] = self.tail.as_dict()
        return out


def trimmed_mean(values: Sequence[float], trim: float = TRIM) -> float:
    return _trimmed_sorted(sorted(values), trim)


def _trimmed_sorted(ordered: Sequence[float], trim: float) -> float:
    cut = int(trim * len(ordered))
    kept = ordered[cut:len(ordered) - cut] or ordered
    return sum(kept) / len(kept)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def quantile(values: Sequence[float], q: float) -> float:
    return _quantile(sorted(values), q)


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
    """Each run's mean over the pool of all its case's runs: how much runs differ (none for one run)."""
    runs = [r for r in baseline_runs if r]
    if len(runs) < 2:
        return []
    pooled = trimmed_mean([x for r in runs for x in r], trim)
    return [trimmed_mean(r, trim) / pooled for r in runs]


def _judge(ratio: float, thetas: list[float], tolerance: float, level: float) -> Judged:
    thetas.sort()
    edge = 1.0 - tolerance
    p_slower = sum(1 for t in thetas if t < edge) / len(thetas)
    verdict = FAIL if p_slower >= 1.0 - level else PASS if p_slower <= level else INCONCLUSIVE
    return Judged(verdict, ratio, _quantile(thetas, level), _quantile(thetas, 1.0 - level), p_slower)


def decide(now: Sequence[float], baseline_runs: Sequence[Sequence[float]], tolerance: float, *,
           alpha: float = ALPHA, resamples: int = RESAMPLES, seed: int = 0, trim: float = TRIM,
           tail: float | None = None, effects: Sequence[float] | None = None) -> Decision:
    """Samples are seconds per unit of work (lower is faster); `baseline_runs` holds one list per run.

    `effects` are the run-to-run effects to draw from (run_effects; by default this case's own).
    `tail`, a quantile such as 0.9, adds the tail statistic.
    """
    runs = [list(r) for r in baseline_runs if r]
    now = list(now)
    if not runs or not now:
        raise ValueError("need samples from the run and from at least one baseline run")
    pooled = sorted(x for r in runs for x in r)
    ordered_now = sorted(now)
    ratio = _trimmed_sorted(pooled, trim) / _trimmed_sorted(ordered_now, trim)
    tail_ratio = _quantile(pooled, tail) / _quantile(ordered_now, tail) if tail else None
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
    means: list[float] = []
    tails: list[float] = []
    for _ in range(resamples):
        base: list[float] = []
        for r in runs:  # samples within each run; the runs' own effects come next
            base += choices(r, k=len(r))
        base.sort()
        fresh = sorted(choices(now, k=n_now))
        # This run's effect against the mean effect of the baseline's runs, both drawn afresh.
        shift = math.exp(sum(choices(logs, k=n_runs)) / n_runs - choice(logs))
        means.append(_trimmed_sorted(base, trim) / _trimmed_sorted(fresh, trim) * shift)
        if tail:
            tails.append(_quantile(base, tail) / _quantile(fresh, tail) * shift)
    level = alpha / (2 if tail else 1)
    throughput = _judge(ratio, means, tolerance, level)
    tail_judged = _judge(tail_ratio, tails, tolerance, level) if tail and tail_ratio is not None else None
    verdict = overall([j.verdict for j in [throughput] + ([tail_judged] if tail_judged else [])])
    return Decision(verdict, throughput, tail_judged, len(now), len(pooled), n_runs)


def overall(verdicts: Sequence[str]) -> str:
    """Any fail fails; only all passes pass."""
    found = set(verdicts)
    if FAIL in found:
        return FAIL
    if INCONCLUSIVE in found:
        return INCONCLUSIVE
    return PASS
