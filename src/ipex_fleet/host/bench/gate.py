"""The benchmark gate: each case's samples against the baseline's, with bench.stats' decision.

The baseline (`baseline.json`, schema 2) holds, per case, the samples of several runs (rounds),
taken when the host is first gated or with `--rebaseline`; a case the baseline lacks (a new case,
the full benchmark after quick ones) is added to it, measured the same way, the first time it
runs. Each comparison is `pass`, `fail` or `inconclusive` with its ratio, interval and confidence.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ipex_fleet.host.bench import stats

BENCH_DIR = "/var/lib/ipex-fleet/bench"
BASELINE_SCHEMA = 2


def same_hardware(baseline: dict[str, Any], now: dict[str, Any]) -> bool:
    """The same device kind, model, count and thread count; torch's version may differ."""
    keys = ("type", "name", "count", "threads")
    return all(baseline.get(k) == now.get(k) for k in keys)


def read_baseline(directory: str) -> dict[str, Any] | None:
    """The baseline, None when there is none, or {"unreadable": why} (a torn or foreign file)."""
    try:
        baseline = json.loads((Path(directory) / "baseline.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"unreadable": str(exc)}
    return baseline if isinstance(baseline, dict) else {"unreadable": "not a JSON object"}


def usable(baseline: dict[str, Any] | None, device: dict[str, Any]) -> tuple[bool, str]:
    """Whether this baseline can judge a run on `device`, and if not, why a new one is taken."""
    if baseline is None:
        return False, "no baseline yet"
    if "unreadable" in baseline:
        return False, f"the baseline could not be read ({baseline['unreadable']})"
    if baseline.get("schema") != BASELINE_SCHEMA or not isinstance(baseline.get("cases"), dict):
        return False, "the baseline holds no samples (schema 1)"
    if not same_hardware(baseline.get("device") or {}, device):
        return False, "the baseline was taken on other hardware or another thread count"
    return True, ""


def baseline_case(rounds: list[dict[str, Any]], trim: float) -> dict[str, Any]:
    """A case's entry in the baseline: the samples of each round, and what they were measured with."""
    last = rounds[-1]
    runs = [list(r["samples"]) for r in rounds]
    per_unit = [t / last["work"] for run in runs for t in run]
    return {"unit": last["unit"], "metric": last["metric"], "work": last["work"], "repeat": last["repeat"],
            "graph": last.get("graph"), "value": float(f"{1.0 / stats.trimmed_mean(per_unit, trim):.6g}"), "runs": runs,
            "recorded": time.time()}


def new_baseline(document: dict[str, Any], cases: dict[str, dict[str, Any]],
                 occupants: dict[str, Any] | None) -> dict[str, Any]:
    return {"schema": BASELINE_SCHEMA, "device": document["device"], "quick": document["quick"],
            "recorded": time.time(), "cases": cases, "occupants": occupants,
            # Each case's value, as schema 1 had it, for readers that want one number.
            "results": {name: c["value"] for name, c in cases.items()}}


def add_cases(baseline: dict[str, Any], cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    baseline = dict(baseline)
    baseline["cases"] = {**baseline.get("cases", {}), **cases}
    baseline["results"] = {name: c["value"] for name, c in baseline["cases"].items()}
    return baseline


def append_history(directory: str, document: dict[str, Any], verdict: str) -> None:
    """One line per gated run: values, and each comparison's verdict, ratio and P(slower). No samples."""
    path = Path(directory) / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    gate = document.get("gate") or {}
    line = {"time": time.time(), "verdict": verdict, "quick": document["quick"],
            "confidence": gate.get("confidence"),
            "results": {r["name"]: r["value"] for r in document["results"]},
            "comparisons": {c["name"]: {k: c.get(k) for k in ("verdict", "ratio", "ci", "p_slower")}
                            for c in gate.get("comparisons", []) if c.get("ratio") is not None},
            "shared_with": [p.get("pid") for p in (gate.get("occupants") or {}).get("processes", [])]}
    with open(path, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")


def archive_baseline(directory: str, baseline: dict[str, Any]) -> None:
    """A baseline being replaced (--rebaseline), kept as a line of the history."""
    with open(Path(directory) / "history.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "verdict": "rebaselined", "previous_baseline": baseline},
                           sort_keys=True) + "\n")


def run_effects(baseline: dict[str, Any], trim: float) -> list[float]:
    """The run-to-run effects of every case of the baseline, pooled (bench.stats.decide)."""
    return [e for case in (baseline.get("cases") or {}).values() for e in stats.run_effects(case["runs"], trim)]


def compare_one(result: dict[str, Any], base: dict[str, Any], tolerance: float, trim: float,
                tail: float | None = None, effects: list[float] | None = None,
                alpha: float = stats.ALPHA) -> dict[str, Any]:
    """A result's samples against its baseline entry's (both turned into seconds per unit of work)."""
    now = [t / result["work"] for t in result["samples"]]
    runs = [[t / base["work"] for t in run] for run in base["runs"]]
    d = stats.decide(now, runs, tolerance, alpha=alpha, trim=trim, tail=tail, seed=stats.seed_for(result["name"]),
                     effects=effects)
    ref = base["value"]
    message = (f"{result['value']:.4g} {result['unit']} is {d.ratio:.0%} of baseline {ref:.4g} "
               f"(interval {d.low:.0%}-{d.high:.0%})")
    if d.tail is not None:
        message += (f", its slowest {1 - tail:.0%} at {d.tail.ratio:.0%} of the baseline's "
                    f"(interval {d.tail.low:.0%}-{d.tail.high:.0%})")
    message += f"; P(slower than {1 - tolerance:.0%} of baseline) {d.p_slower:.1%}"
    return {"name": result["name"], **d.as_dict(), "baseline": ref, "value": result["value"],
            "cv": result.get("cv"), "rounds": result.get("rounds", 1), "message": message}


def compare(results: list[dict[str, Any]], baseline: dict[str, Any], tolerance: float,
            trim: float = stats.TRIM, tail: float | None = None) -> list[dict[str, Any]]:
    """Every result with samples and a baseline entry; the others say why they were not judged."""
    cases = baseline.get("cases") or {}
    effects = run_effects(baseline, trim)
    out = []
    for r in results:
        base = cases.get(r["name"])
        if base is None or not r.get("samples"):
            out.append({"name": r["name"], "verdict": "baseline",
                        "message": "no baseline for this case yet: this run's rounds are its baseline"})
            continue
        out.append(compare_one(r, base, tolerance, trim, tail, effects))
    return out


def verdict_of(comparisons: list[dict[str, Any]]) -> str:
    return stats.overall([c["verdict"] for c in comparisons if c["verdict"] in (stats.PASS, stats.FAIL,
                                                                                  stats.INCONCLUSIVE)])


def confidence_of(comparisons: list[dict[str, Any]], verdict: str) -> float | None:
    """The run's confidence in its verdict: a fail as sure as its surest failing case; a pass as sure as
    its least sure case; an inconclusive run as its least settled case."""
    judged = [c for c in comparisons if c.get("confidence") is not None]
    if not judged:
        return None
    if verdict == stats.FAIL:
        return max(c["confidence"] for c in judged if c["verdict"] == stats.FAIL)
    if verdict == stats.INCONCLUSIVE:
        return min(c["confidence"] for c in judged if c["verdict"] == stats.INCONCLUSIVE)
    return min(c["confidence"] for c in judged)
