"""`ipex-fleet report [RUN_ID] --html PATH`: one run as a static page that works offline (no
external asset, no script): the timeline wave by wave, each host's result with its failing checks,
and each host's benchmark history as an inline SVG chart against its baseline and tolerance band.

Everything comes from the controller: the ledger (runs, waves, host rows) and the host results
under .ipex-fleet/runs/. Every text is escaped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from .domain import HostResult
from .errors import UserError
from .results import state_dir
from .rollout.ledger import Ledger
from .tables import when

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


def chart(history: list[BenchPoint], width: int = 460, height: int = 160) -> str:
    """Each case's value over its baseline, run after run, with the baseline (1.0) and the band down to
    1 - tolerance shaded: an inline SVG."""
    if not history:
        return '<p class="muted">no benchmark recorded for this host</p>'
    base_point = next((p for p in history if p.baseline_recorded), history[0])
    tolerance = next((p.tolerance for p in reversed(history) if p.tolerance is not None), 0.15)
    cases = sorted({c for p in history for c in p.values if c in base_point.values})
    ratios = {c: [(i, p.values[c] / base_point.values[c]) for i, p in enumerate(history)
                  if c in p.values and base_point.values[c] > 0] for c in cases}
    all_r = [r for pts in ratios.values() for _, r in pts] + [1.0, 1 - tolerance]
    lo, hi = min(all_r) - 0.05, max(all_r) + 0.05
    pad_l, pad_r, pad_t, pad_b = 44, 10, 10, 24
    n = max(len(history) - 1, 1)
    x = lambda i: pad_l + (width - pad_l - pad_r) * i / n  # noqa: E731
    y = lambda r: pad_t + (height - pad_t - pad_b) * (hi - r) / (hi - lo)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="benchmark history">',
             f'<rect class="band" x="{pad_l}" y="{y(1.0):.1f}" width="{width - pad_l - pad_r}" '
             f'height="{y(1 - tolerance) - y(1.0):.1f}" fill="#d9f0d3"/>',
             f'<line class="baseline" x1="{pad_l}" x2="{width - pad_r}" y1="{y(1.0):.1f}" y2="{y(1.0):.1f}" '
             'stroke="#333" stroke-dasharray="4 3"/>',
             f'<text x="2" y="{y(1.0) + 4:.1f}" font-size="10">baseline</text>',
             f'<text x="2" y="{y(1 - tolerance) + 4:.1f}" font-size="10">-{tolerance:.0%}</text>']
    for k, case in enumerate(cases):
        pts = ratios[case]
        colour = PALETTE[k % len(PALETTE)]
        path = " ".join(f"{x(i):.1f},{y(r):.1f}" for i, r in pts)
        parts.append(f'<polyline class="series" data-case="{escape(case)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.5" points="{path}"><title>{escape(case)}</title></polyline>')
        for i, r in pts:
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(r):.1f}" r="2.5" fill="{colour}">'
                         f'<title>{escape(case)} run {escape(history[i].run_id)}: {r:.0%} of baseline</title></circle>')
    parts.append(f'<text x="{pad_l}" y="{height - 6}" font-size="10">{len(history)} run(s), oldest to newest</text>')
    parts.append("</svg>")
    legend = " ".join(f'<span style="color:{PALETTE[k % len(PALETTE)]}">&#9632; {escape(c)}</span>'
                      for k, c in enumerate(cases))
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def render(model: dict[str, Any]) -> str:
    run = model["run"]
    hosts: list[HostReport] = model["hosts"]
    by_wave: dict[int | None, list[HostReport]] = {}
    for h in hosts:
        by_wave.setdefault(h.wave, []).append(h)
    waves = model["waves"] or [{"idx": None, "name": "all hosts", "status": run.status, "hosts": json.dumps(
        [h.host for h in hosts]), "started": run.started, "finished": run.finished}]
    timeline = []
    for w in waves:
        members = by_wave.get(w["idx"], []) if model["waves"] else hosts
        chips = "".join(f'<span class="chip" style="background:{STATUS_COLOUR.get(h.status, "#999")}" '
                        f'title="{escape(h.status)}">{escape(h.host)}</span>' for h in members)
        counts = json.loads(w["tally"]) if w.get("tally") else {}
        trouble = ", ".join(f"{k} {n}" for k, n in counts.items() if n)
        tally = f' <span class="tally">{escape(trouble)}</span>' if trouble else ""
        timeline.append(f'<li class="wave" data-status="{escape(str(w["status"]))}"><b>{escape(str(w["name"]))}</b> '
                        f'<span class="muted">{escape(str(w["status"]))}, {when(w.get("started"))} &rarr; '
                        f'{when(w.get("finished"))}</span>{tally}<div>{chips}</div></li>')
    rows, cards = [], []
    for h in hosts:
        failing = "".join(f'<li class="failing-check">{escape(f)}</li>' for f in h.failing)
        rows.append(
            f'<tr class="host" id="host-{escape(h.host)}" data-status="{escape(h.status)}">'
            f'<td>{escape(h.host)}</td><td>{escape(h.phase)}</td>'
            f'<td><span class="status" style="color:{STATUS_COLOUR.get(h.status, "#333")}">{escape(h.status)}</span></td>'
            f'<td>{h.previous if h.previous is not None else "-"} &rarr; {h.final if h.final is not None else "-"}</td>'
            f'<td>{escape(h.error or "")}<ul class="failing">{failing}</ul></td>'
            f'<td>{sum(h.timings.values()):.1f} s</td></tr>')
        cards.append(f'<div class="card" data-host="{escape(h.host)}"><h3>{escape(h.host)}</h3>{chart(h.history)}</div>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>ipex-fleet run {escape(run.run_id)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; }} .muted {{ color: #777; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }} td:last-child {{ white-space: nowrap; }}
.chip {{ display: inline-block; color: #fff; border-radius: 3px; padding: 1px 6px; margin: 2px; font-size: 12px; }}
.wave {{ margin: 6px 0; }} .cards {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ border: 1px solid #ddd; border-radius: 4px; padding: 8px; }} .card h3 {{ margin: 0 0 4px; font-size: 14px; }}
.legend span {{ margin-right: 8px; font-size: 12px; }} ul.failing {{ margin: 2px 0; padding-left: 18px; color: #d62728; }}
</style></head><body>
<h1>Run {escape(run.run_id)} <span class="muted">({escape(run.kind)})</span></h1>
<p id="summary">Status <b>{escape(run.status)}</b>, started {when(run.started)}, finished {when(run.finished)}.
{escape(run.message or "")}</p>
<h2>Timeline</h2><ol id="timeline">{"".join(timeline)}</ol>
<h2>Hosts</h2>
<table id="hosts"><tr><th>host</th><th>phase</th><th>status</th><th>generation</th><th>error and failing checks</th><th>time</th></tr>
{"".join(rows)}</table>
<h2>Benchmarks against baseline</h2><div class="cards">{"".join(cards)}</div>
</body></html>
"""


def write(run_id: str | None, path: str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(build(run_id)))
    return out
