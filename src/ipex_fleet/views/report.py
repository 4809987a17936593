"""`ipex-fleet report [RUN_ID] --html PATH`: one run as a static page that works offline (no
external asset, no script): the timeline wave by wave, each host's result with its failing checks,
and each host's benchmark history as an inline SVG chart against its baseline and tolerance band.

Everything comes from the controller: the ledger (runs, waves, host rows) and the host results
under .ipex-fleet/runs/. The page is a jinja2 template (templates/report.html.j2, with the chart's
templates/chart.svg.j2) with autoescape: every text a host or a run wrote is escaped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from ipex_fleet.domain import HostResult
from ipex_fleet.common.errors import UserError
from ipex_fleet.common.files import state_dir
from ipex_fleet.ledger.runs import Ledger
from ipex_fleet.views.tables import when

TEMPLATES = Path(__file__).parent / "templates"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
STATUS_COLOUR = {"ok": "#2ca02c", "unchanged": "#7f7f7f", "rolled_back": "#d62728", "failed": "#d62728",
                 "unreachable": "#ff7f0e", "skipped": "#bcbd22", "revert-failed": "#8b0000"}


@dataclass(frozen=True)
class BenchPoint:
    run_id: str
    when: float
    values: dict[str, float]
    tolerance: float | None
    baseline_recorded: bool


@dataclass
class HostReport:
    host: str
    phase: str
    wave: int | None
    status: str
    previous: int | None
    final: int | None
    error: str | None
    failing: list[str]
    timings: dict[str, float]
    history: list[BenchPoint] = field(default_factory=list)


def _results_of(host: str) -> list[tuple[float, HostResult]]:
    out = []
    for path in (state_dir() / "runs").glob(f"*/hosts/{host}.json"):
        try:
            out.append((path.stat().st_mtime, HostResult.from_json(json.loads(path.read_text()))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda pair: pair[0])


def bench_history(host: str) -> list[BenchPoint]:
    points = []
    for recorded, result in _results_of(host):
        bench = result.bench or {}
        values = {name: float(r["value"]) for name, r in (bench.get("results") or {}).items()}
        if values:
            points.append(BenchPoint(result.run_id, recorded, values, bench.get("tolerance"),
                                     bool(bench.get("baseline_recorded"))))
    return points


def build(run_id: str | None = None) -> dict[str, Any]:
    ledger = Ledger()
    if run_id is None:
        runs = ledger.runs(limit=1)
        if not runs:
            raise UserError("the ledger has no run yet: deploy or roll out first, then ask for its report")
        run_id = runs[0].run_id
    run = ledger.run(run_id)
    if run is None:
        raise UserError(f"no run {run_id} in the ledger; `ipex-fleet history` lists the runs")
    hosts = []
    for row in ledger.results(run_id):
        health = json.loads(row["health"]) if row["health"] else {}
        hosts.append(HostReport(
            host=row["host"], phase=row["phase"], wave=row["wave"], status=row["status"],
            previous=row["previous_generation"], final=row["final_generation"], error=row["error"],
            failing=list((health or {}).get("failing") or []),
            timings=json.loads(row["timings"]) if row["timings"] else {},
            history=bench_history(row["host"])))
    return {"run": run, "waves": [dict(w) for w in ledger.waves(run_id)], "hosts": hosts}


def chart(history: list[BenchPoint], width: int = 460, height: int = 160) -> dict[str, Any] | None:
    """Each case's value over its baseline, run after run, with the baseline (1.0) and the band down to
    1 - tolerance shaded: the geometry of an inline SVG (templates/chart.svg.j2), or None without runs."""
    if not history:
        return None
    base_point = next((p for p in history if p.baseline_recorded), history[0])
    tolerance = next((p.tolerance for p in reversed(history) if p.tolerance is not None), 0.15)
    cases = sorted({c for p in history for c in p.values if c in base_point.values})
    ratios = {c: [(i, p.values[c] / base_point.values[c]) for i, p in enumerate(history)
                  if c in p.values and base_point.values[c] > 0] for c in cases}
    all_r = [r for pts in ratios.values() for _, r in pts] + [1.0, 1 - tolerance]
    lo, hi = min(all_r) - 0.05, max(all_r) + 0.05
    pad_l, pad_r, pad_t, pad_b = 44, 10, 10, 24
    n = max(len(history) - 1, 1)

    def x(i: int) -> str:
        return f"{pad_l + (width - pad_l - pad_r) * i / n:.1f}"

    def y(r: float) -> float:
        return pad_t + (height - pad_t - pad_b) * (hi - r) / (hi - lo)

    series = []
    for k, case in enumerate(cases):
        pts = ratios[case]
        series.append({"case": case, "colour": PALETTE[k % len(PALETTE)],
                       "points": " ".join(f"{x(i)},{y(r):.1f}" for i, r in pts),
                       "dots": [{"x": x(i), "y": f"{y(r):.1f}", "run_id": history[i].run_id,
                                 "percent": f"{r * 100:.0f}"} for i, r in pts]})
    return {"width": width, "height": height, "left": pad_l, "right": width - pad_r,
            "plot_width": width - pad_l - pad_r, "y_base": f"{y(1.0):.1f}",
            "band_height": f"{y(1 - tolerance) - y(1.0):.1f}", "y_base_label": f"{y(1.0) + 4:.1f}",
            "y_band_label": f"{y(1 - tolerance) + 4:.1f}", "tolerance_pct": f"{tolerance * 100:.0f}",
            "series": series, "runs": len(history)}


def _seconds(timings: dict[str, float]) -> float:
    """The host's whole time: its result's `total` (older records: the sum of their steps)."""
    return timings.get("total", sum(timings.values()))


def render(model: dict[str, Any]) -> str:
    """The page, from templates/report.html.j2; jinja2 escapes every text (autoescape)."""
    run = model["run"]
    hosts: list[HostReport] = model["hosts"]
    by_wave: dict[int | None, list[HostReport]] = {}
    for h in hosts:
        by_wave.setdefault(h.wave, []).append(h)
    rows = model["waves"] or [{"idx": None, "name": "all hosts", "status": run.status, "started": run.started,
                               "finished": run.finished, "tally": None}]
    waves = []
    for w in rows:
        counts = json.loads(w["tally"]) if w.get("tally") else {}
        waves.append({"name": w["name"], "status": w["status"], "started": w.get("started"),
                      "finished": w.get("finished"), "trouble": ", ".join(f"{k} {n}" for k, n in counts.items() if n),
                      "members": by_wave.get(w["idx"], []) if model["waves"] else hosts})
    template = _templates().get_template("report.html.j2")
    return template.render(run=run, waves=waves, hosts=hosts, chart=chart, when=when, seconds=_seconds,
                           colour=lambda status, default: STATUS_COLOUR.get(status, default),
                           gen=lambda n: "-" if n is None else n)


def _templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              autoescape=True)


def write(run_id: str | None, path: str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(build(run_id)))
    return out
