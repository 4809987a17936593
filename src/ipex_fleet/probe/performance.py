"""Level 3: the full benchmark, held against the host's baseline and the device's peak."""

from __future__ import annotations

from typing import Any, Callable

from ..bench import cv_bound, run
from ..bench.gate import compare, read_baseline, verdict_of
from ..device import Device
from ..fleetconfig import FleetConfig
from .model import Outcome, failed, passed, warned


def performance_check(bench_dir: str, config: FleetConfig | None) -> Callable[[Any, Any], Outcome]:
    tolerance = config.health.bench_tolerance if config else 0.15

    def check(exp: Any, scratch: dict[str, Any]) -> Outcome:
        document = run(quick=False)
        effs = {r["name"]: r["efficiency"] for r in document["results"] if "efficiency" in r}
        baseline = read_baseline(bench_dir)
        if baseline is None:
            return passed(f"no baseline yet; efficiency vs peak: {effs or 'unknown device'}",
                          results=document["results"])
        comparisons = compare(document["results"], baseline, tolerance,
                              cv_bound(Device(document["device"]["type"], None)))
        verdict = verdict_of(comparisons)
        slow = [c["message"] for c in comparisons if c["verdict"] != "pass"]
        data = {"results": document["results"], "comparisons": comparisons}
        if verdict == "fail":
            return failed("; ".join(slow), **data)
        if verdict == "warn":
            return warned("; ".join(slow), **data)
        return passed(f"every result within {tolerance:.0%} of baseline", **data)

    return check
