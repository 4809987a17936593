"""The benchmark gate: each result against the host's baseline, with a tolerance.

Metrics are higher-is-better. A result slower than baseline x (1 - tolerance) fails, unless
its measurement is noisy (cv over the bound): then it is a warn, never a false fail.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

BENCH_DIR = "/var/lib/ipex-fleet/bench"


def same_hardware(baseline: dict[str, Any], now: dict[str, Any]) -> bool:
    """The same device kind, model, count and thread count; torch's version may differ."""
    keys = ("type", "name", "count", "threads")
    return all(baseline.get(k) == now.get(k) for k in keys)


def read_baseline(directory: str) -> dict[str, Any] | None:
    try:
        return json.loads((Path(directory) / "baseline.json").read_text())
    except FileNotFoundError:
        return None


def append_history(directory: str, document: dict[str, Any], verdict: str) -> None:
    path = Path(directory) / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"time": time.time(), "verdict": verdict, "quick": document["quick"],
            "results": {r["name"]: r["value"] for r in document["results"]}}
    with open(path, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")


def archive_baseline(directory: str, baseline: dict[str, Any]) -> None:
    """A baseline being replaced (--rebaseline), kept as a line of the history."""
    with open(Path(directory) / "history.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), "verdict": "rebaselined", "previous_baseline": baseline},
                           sort_keys=True) + "\n")


def compare(results: list[dict[str, Any]], baseline: dict[str, Any], tolerance: float,
            cv_bound: float) -> list[dict[str, Any]]:
    base = baseline.get("results", {})
    out = []
    for r in results:
        ref = base.get(r["name"])
        if not ref:
            out.append({"name": r["name"], "verdict": "pass", "message": "no baseline for this result yet"})
            continue
        ratio = r["value"] / ref
        slower = ratio < 1.0 - tolerance
        noisy = r["cv"] > cv_bound
        verdict = "fail" if slower and not noisy else ("warn" if slower or noisy else "pass")
        message = f"{r['value']:.4g} {r['unit']} is {ratio:.0%} of baseline {ref:.4g}"
        if slower and noisy:
            message += f" (noisy: cv {r['cv']:.1%} > {cv_bound:.0%}, so warn, not fail)"
        elif noisy:
            message += f" (noisy: cv {r['cv']:.1%})"
        out.append({"name": r["name"], "verdict": verdict, "ratio": round(ratio, 4), "baseline": ref,
                    "value": r["value"], "cv": r["cv"], "message": message})
    return out


def verdict_of(comparisons: list[dict[str, Any]]) -> str:
    verdicts = {c["verdict"] for c in comparisons}
    return "fail" if "fail" in verdicts else ("warn" if "warn" in verdicts else "pass")
