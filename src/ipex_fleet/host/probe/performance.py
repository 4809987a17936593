"""Level 3: the full benchmark, held against the host's baseline and the device's peak."""

from __future__ import annotations

from typing import Any, Callable

from ipex_fleet.host.bench import plan_for, run
from ipex_fleet.host.device import Device
from ipex_fleet.host.bench.gate import compare, read_baseline, usable, verdict_of
from ipex_fleet.host.fleetconfig import FleetConfig
from ipex_fleet.host.probe.model import Outcome, failed, passed, warned


def performance_check(bench_dir: str, config: FleetConfig | None) -> Callable[[Any, Any], Outcome]:
    tolerance = config.health.bench_tolerance if config else 0.15

    def check(exp: Any, scratch: dict[str, Any]) -> Outcome:
        document = run(quick=False)
        effs = {r["name"]: r["efficiency"] for r in document["results"] if "efficiency" in r}
        baseline = read_baseline(bench_dir)
        ok, why = usable(baseline, document["device"])
        if not ok:
            return passed(f"{why}; efficiency vs peak: {effs or 'unknown device'}", results=document["results"])
        plan = plan_for(Device(document["device"]["type"], None), quick=False)
        comparisons = compare(document["results"], baseline, tolerance, plan.trim, plan.tail)
        verdict = verdict_of(comparisons)
        slow = [f"{c['name']}: {c['message']}" for c in comparisons if c["verdict"] not in ("pass", "baseline")]
        data = {"results": document["results"], "comparisons": comparisons}
        if verdict == "fail":
            return failed("; ".join(slow), **data)
        if verdict == "inconclusive":  # the probe reports; the deploy's gate decides what it costs
            return warned("inconclusive: " + "; ".join(slow), **data)
        return passed(f"every result within {tolerance:.0%} of baseline", **data)

    return check
