"""Benchmark drift across maintenance runs: each result against the host's baseline and against its
own history (bench/history.jsonl on the host), as a trend, not one point. GPUs drift (drivers,
thermals, dust): a result past tolerance is a warning with its figures, never a rollback.

The verdict is the benchmark gate's own (bench.stats: the run's samples against the baseline's,
with the same false-alarm rate): `fail` is drift established with confidence, `inconclusive` a
possible drift, both warnings; the trend is each past run's ratio to the baseline."""

from __future__ import annotations

from dataclasses import dataclass
from shlex import quote
from typing import Any

from ipex_fleet.host.bench.gate import BENCH_DIR
from ipex_fleet.transaction.gates import bench_summary

TREND_RUNS = 8  # how many runs of the same kind (quick or full) a trend spans


@dataclass(frozen=True)
class Drift:
    summary: dict[str, Any]  # the result's `bench`
    report: dict[str, Any]  # the maintenance report's `drift` task
    warnings: tuple[str, ...]


def history_command() -> str:
    return f"tail -n 200 {quote(BENCH_DIR + '/history.jsonl')} 2>/dev/null || true"


def slope(values: list[float]) -> float | None:
    """Least-squares change per run (None for fewer than two runs)."""
    n = len(values)
    if n < 2:
        return None
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    den = sum((x - mean_x) ** 2 for x in range(n))
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / den


def assess(document: dict[str, Any], history: list[dict[str, Any]]) -> Drift:
    """`document` is this run's (already appended to `history` by the gate)."""
    gate = document.get("gate", {})
    comparisons = {c["name"]: c for c in gate.get("comparisons", [])}
    same_kind = [h for h in history if h.get("quick") == document.get("quick") and h.get("results")]
    cases, warnings = [], []
    for r in document.get("results", []):
        compared = comparisons.get(r["name"], {})
        base = compared.get("baseline")
        past = [h["results"][r["name"]] for h in same_kind if r["name"] in h["results"]][-TREND_RUNS:]
        trend = [round(v / base, 4) for v in past] if base else []
        per_run = slope(trend)
        case = {"name": r["name"], "value": r["value"], "unit": r["unit"], "baseline": base,
                "ratio": compared.get("ratio"), "verdict": compared.get("verdict"), "trend": trend,
                "slope_per_run": round(per_run, 4) if per_run is not None else None}
        for key in ("ci", "p_slower", "confidence"):
            if compared.get(key) is not None:
                case[key] = compared[key]
        cases.append(case)
        if compared.get("verdict") in ("fail", "inconclusive"):
            shown = " ".join(f"{t:.0%}" for t in trend)
            kind = "benchmark drift" if compared["verdict"] == "fail" else "possible benchmark drift (inconclusive)"
            warnings.append(f"{kind}: {r['name']}: {compared.get('message')}; trend over {len(trend)} "
                            f"run(s): {shown}" + (f" ({per_run:+.1%} per run)" if per_run is not None else ""))
    if warnings and gate.get("shared"):
        warnings.append(f"benchmark drift: {gate['shared']}")
    report = {"result": gate.get("result"), "confidence": gate.get("confidence"),
              "rebaselined": bool(gate.get("baseline_recorded")), "tolerance": gate.get("tolerance"),
              "alpha": gate.get("alpha"), "quick": document.get("quick"), "cases": cases,
              "shared_with": (gate.get("occupants") or {}).get("processes") or []}
    return Drift(bench_summary(document), report, tuple(warnings))
