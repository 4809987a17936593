"""`python -m ipex_fleet.host.bench [--quick] --json`: device-generic benchmarks (the seeds' categories).

Each case is measured as samples, not a summary: after a warm-up that lasts until the timings are
steady (clocks ramped, caches and autotuners settled; bounded in time), a series of timed batches
of calls, queued back to back and timed with device events (wall clock on the CPU), with a fixed
seed. On GPUs each call is replayed from a device graph where torch can capture it. A result keeps
its samples; its value is the work over the trimmed mean of the samples (bench.stats). `--gate`
holds the samples against the baseline's (bench/gate.py, bench/__main__.py).

Document schema 2 (schema 1 had no samples): each result has `name, dtype, shape, metric, value,
unit, runs, median, cv` as before, and `samples` (seconds per sample), `work` (units of work per
sample), `repeat` (calls per sample), `graph`, `warmup` (`seconds`, `samples`, `steady`) and
`bounds` (what the case's speed is limited by).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable

from ipex_fleet.host.device import (Device, capture_graph, current_device, device_properties, synchronize, time_runs,
    time_samples)
from ipex_fleet.host.bench import cases as case_lib
from ipex_fleet.host.bench import reference, stats
from ipex_fleet.host.bench.peaks import efficiency

SCHEMA = 2


@dataclass(frozen=True)
class Plan:
    """How a case is measured on this kind of device, quick or full."""

    samples: int  # timed samples per round
    sample_s: float  # each sample lasts about this long (repeat calls)
    window_s: float  # ...and a round of samples stops queueing after this long (at least one chunk)
    warmup_max_s: float  # the warm-up stops here, steady or not (and says which)
    steady_band: float  # steady: the last samples within this spread, and no longer speeding up
    trim: float  # cut from each end of the samples for the mean (bench.stats)
    tail: float | None  # the tail statistic's quantile (bench.stats), or none
    baseline_runs: int  # rounds a baseline holds
    retest_rounds: int  # at most this many more rounds of a suspicious case...
    retest_s: float  # ...within this many seconds for the whole run
    graphs: bool  # capture each call as a device graph


def plan_for(device: Device, quick: bool) -> Plan:
    if device.type == "cpu":
        # Scheduler slices are milliseconds and a CPU's timings carry the host's scheduler: samples of
        # 20 ms and more, a trimmed mean, no tail statistic.
        return Plan(samples=30, sample_s=0.02 if quick else 0.03, window_s=0.8 if quick else 1.2,
                    warmup_max_s=0.4 if quick else 0.8, steady_band=0.25, trim=0.2, tail=None, baseline_runs=3,
                    retest_rounds=2, retest_s=4.0 if quick else 8.0, graphs=False)
    # Device events on a full queue: a slow sample is the device's. The plain mean (an H200's clean
    # samples have no outliers to trim: 0.2-3 % cv) and the tail, where a neighbour shows first: many
    # short samples, so that the share of them it slows is well measured (a process on the GPU 15 % of
    # the time slowed a fifth to a quarter of an H200's samples about twice).
    return Plan(samples=120 if quick else 200, sample_s=0.003 if quick else 0.006, window_s=0.45 if quick else 1.5,
                warmup_max_s=0.3 if quick else 1.0, steady_band=0.05, trim=0.0, tail=stats.TAIL, baseline_runs=3,
                retest_rounds=2, retest_s=3.0 if quick else 15.0, graphs=True)


def cv_bound(device: Device) -> float:
    """Kept for readers of schema 1: the spread above which a measurement was called noisy."""
    return 0.20 if device.type == "cpu" else 0.03


def sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


class Bench:
    """One process's benchmark: the device, its plan, and each case measured as often as asked."""

    def __init__(self, quick: bool, only: Iterable[str] | None = None) -> None:
        import torch

        self.torch = torch
        self.started = time.monotonic()
        self.quick = quick
        self.device = current_device(torch)
        self.props = device_properties(torch, self.device)
        self.name = self.props[0]["name"] if self.props else self.device.type
        self.plan = plan_for(self.device, quick)
        only = list(only or [])
        self.cases = {c.name: c for c in case_lib.plan(self.device, quick)
                      if not only or any(c.name.startswith(o) for o in only)}
        self.warmed = False
        # The CPU's own speed, read before each gated round (bench/reference.py): a CPU run only.
        self.reference = reference.cpu_speed if self.device.type == "cpu" else None

    def warm_up(self, seconds: float) -> None:
        """Busy the device for a moment first, so clocks have ramped before the first case."""
        self.warmed = True
        if self.device.type == "cpu":
            return
        torch = self.torch
        a = torch.randn(4096, 4096, device=self.device.torch_device, dtype=torch.bfloat16)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(20):
                torch.mm(a, a)
            synchronize(torch, self.device)

    def _steady(self, call: Any, repeat: int) -> dict[str, Any]:
        """Warm-up samples until the last ones agree and stop speeding up, or the time is up."""
        torch, device, plan = self.torch, self.device, self.plan
        window = 5
        started = time.monotonic()
        deadline = started + plan.warmup_max_s
        seen: list[float] = []
        steady = False
        while True:
            seen += time_samples(torch, device, call, repeat, window)
            if len(seen) >= 2 * window:
                last, before = seen[-window:], seen[-2 * window:-window]
                spread = max(last) / min(last) - 1.0
                speeding_up = stats.median(last) < stats.median(before) * (1.0 - plan.steady_band / 2)
                if spread <= plan.steady_band and not speeding_up:
                    steady = True
                    break
            if time.monotonic() >= deadline:
                break
        return {"seconds": round(time.monotonic() - started, 3), "samples": len(seen), "steady": steady}

    def measure(self, name: str, repeat: int | None = None) -> dict[str, Any]:
        """One round of a case: set up, warm up until steady, then the samples."""
        if not self.warmed:
            self.warm_up(0.3 if self.quick else 1.0)
        torch, device, plan = self.torch, self.device, self.plan
        case = self.cases[name]
        torch.manual_seed(0)
        fn, work_once = case.setup(torch, device)
        call = capture_graph(torch, device, fn) if plan.graphs else None
        graphed = call is not None
        call = call or fn
        if not repeat:
            single = min(time_runs(torch, device, call, 2, warmup=1))
            repeat = max(1, math.ceil(plan.sample_s / max(single, 1e-7)))
        warmup = self._steady(call, repeat)
        times = time_samples(torch, device, call, repeat, plan.samples,
                             deadline=time.monotonic() + plan.window_s)
        work = work_once * repeat
        value = work / stats.trimmed_mean(times, plan.trim)
        result = {"name": case.name, "dtype": case.dtype, "shape": case.shape, "metric": case.metric,
                  "value": sig(value), "unit": case.unit, "runs": len(times),
                  "median": sig(stats.median(times) / repeat), "cv": round(stats.cv(times), 4),
                  "repeat": repeat, "work": sig(work, 9), "graph": graphed, "warmup": warmup,
                  "bounds": case.bounds, "samples": [sig(t) for t in times]}
        eff = efficiency(self.name, case.peak, value)
        if eff is not None:
            result["efficiency"] = eff
        del fn, call
        return result

    def occupants(self) -> dict[str, Any]:
        """The device's other users (bench.occupants), as the gate names them."""
        from ipex_fleet.host.bench.occupants import scan

        return scan(self.device.type)

    def document(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "device": {"type": self.device.type, "name": self.name, "count": len(self.props),
                       "torch": self.torch.__version__, "threads": self.torch.get_num_threads()},
            "quick": self.quick,
            "duration_s": round(time.monotonic() - self.started, 3),
            "plan": {"samples": self.plan.samples, "sample_s": self.plan.sample_s, "trim": self.plan.trim,
                     "tail": self.plan.tail, "warmup_max_s": self.plan.warmup_max_s, "graphs": self.plan.graphs},
            "results": results,
        }


def pooled(results: list[dict[str, Any]], trim: float) -> dict[str, Any]:
    """Rounds of one case as one result: their samples together (same repeat), value recomputed."""
    first = dict(results[-1])
    samples = [t for r in results for t in r["samples"]]
    first["samples"] = samples
    first["runs"] = len(samples)
    first["value"] = sig(first["work"] / stats.trimmed_mean(samples, trim))
    first["median"] = sig(stats.median(samples) / first["repeat"])
    first["cv"] = round(stats.cv(samples), 4)
    first["rounds"] = len(results)
    return first


def run(quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    """One round of every case (the probe's level 3 and scripts use this; the CLI drives Bench)."""
    bench = Bench(quick, only)
    return bench.document([bench.measure(name) for name in bench.cases])
