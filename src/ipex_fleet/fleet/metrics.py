"""A rollout's own metrics, for the controller's node_exporter textfile collector (or a CI artefact):
each wave's hosts per kind of trouble, counted apart (rollout.tally), rewritten as each wave ends.

    ipex_fleet_rollout_wave_hosts{run_id="...",wave="canary",kind="rolled_back"} 1
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from ipex_fleet.host import metrics
from ipex_fleet.ledger.results import run_dir
from ipex_fleet.fleet.tally import KINDS


def write_metrics(run_id: str, kind: str, waves: list[sqlite3.Row]) -> Path:
    family = GaugeMetricFamily("ipex_fleet_rollout_wave_hosts",
                               "Hosts of each judged wave per kind of trouble (rolled back, failed, "
                               "revert-failed, unreachable, skipped, inconclusive), counted apart.",
                               labels=["run_id", "run_kind", "wave", "kind"])
    for wave in waves:
        counts = json.loads(wave["tally"]) if wave["tally"] else None
        if counts is None:
            continue  # not judged yet
        for name in KINDS:
            family.add_metric([run_id, kind, wave["name"], name], float(counts.get(name, 0)))
    path = run_dir(run_id) / "rollout.prom"
    metrics.write(str(path), [family])
    return path
