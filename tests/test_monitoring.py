"""Alert rules and the Grafana dashboard: promtool checks and tests the rules (Debian's prometheus
package), a broken rule makes the tests fail, and both use only metric names the tool writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ipex_fleet.host import metrics

from .conftest import REPO, assert_ok

MONITORING = REPO / "monitoring"
PROMTOOL = shutil.which("promtool")


def _promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool is missing: scripts/bootstrap installs Debian's prometheus package"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_alert_rules_pass_promtool_check():
    proc = _promtool("check", "rules", "alerts.yml")
    assert_ok(proc)
    assert "SUCCESS: 7 rules found" in proc.stdout


def test_the_rules_fire_as_the_unit_tests_expect():
    proc = _promtool("test", "rules", "alerts.test.yml")
    assert_ok(proc)


def test_a_broken_off_generation_rule_fails_its_test(tmp_path):
    rules = (MONITORING / "alerts.yml").read_text()
    broken = rules.replace("expr: ipex_fleet_running_good_generation == 0", "expr: ipex_fleet_running_good_generation == 1")
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(MONITORING / "alerts.test.yml", tmp_path)
    proc = _promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert proc.returncode != 0 and "IpexFleetOffGoodGeneration" in proc.stdout + proc.stderr


def _written_names(tmp_path: Path) -> set[str]:
    doc = {"host": "h", "level": 1, "result": "pass", "duration_s": 1, "checks": [{"name": "torch", "level": 1, "result": "pass"}],
           "accelerator": {"type": "cuda", "count": 1, "torch": "x", "devices": [
               {"index": 0, "name": "g", "total_memory": 1, "memory_used": 1, "temperature_c": 1}]}}
    bench = {"device": {"type": "cuda", "name": "g"}, "results": [{"name": "m", "metric": "tflops", "unit": "T", "value": 1}],
             "gate": {"tolerance": 0.15, "result": "pass", "confidence": 0.99,
                      "comparisons": [{"name": "m", "ratio": 1.0, "verdict": "pass", "p_slower": 0.01,
                                       "ci": [0.95, 1.05]}]}}
    names = set()
    for families in (metrics.probe_metrics(doc), metrics.bench_metrics(bench), metrics.host_metrics(root=str(tmp_path))):
        for f in families:
            names |= {s.name for s in f.samples}
    return names


def _used_names(text: str) -> set[str]:
    return set(re.findall(r"\bipex_fleet_[a-z_]+", text))


def test_rules_and_dashboard_use_only_metrics_the_tool_writes(tmp_path):
    written = _written_names(tmp_path)
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for where, text in (("alerts.yml", (MONITORING / "alerts.yml").read_text()), ("dashboard", exprs)):
        unknown = _used_names(text) - written
        assert not unknown, f"{where} uses metrics nothing writes: {sorted(unknown)}"


def test_the_dashboard_is_grafana_json_with_a_datasource_variable():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] == "ipex-fleet" and dashboard["panels"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert p["targets"] and all(t["expr"] for t in p["targets"]) and set(p["gridPos"]) == {"x", "y", "w", "h"}
