"""`ipex-fleet report --html`: a lab rollout with one rolled-back host, rendered in headless Chromium
(Debian's chromium); the DOM shows the failing host and its failing check, and a screenshot is kept
as an artifact. Chromium runs with every network path closed: the page has no external asset."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ipex_fleet.views import report
from ipex_fleet.domain import Generation, HostResult, Status

from .conftest import BIN, REPO, assert_ok

ARTIFACTS = REPO / ".ipex-fleet" / "artifacts"
CHROMIUM = shutil.which("chromium")
# No network for the browser: no DNS, a dead proxy, no background services.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                  "--disable-domain-reliability", "--host-resolver-rules=MAP * ~NOTFOUND",
                  "--proxy-server=127.0.0.1:9", "--window-size=1200,1400"]


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "chromium is missing: scripts/bootstrap installs Debian's chromium package"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=120)


def test_texts_are_escaped_and_the_chart_shows_baseline_and_band(tmp_path, monkeypatch):
    monkeypatch.setenv("IPEX_FLEET_STATE", str(tmp_path / "state"))
    from ipex_fleet.ledger.results import write_host_result
    from ipex_fleet.ledger.runs import Ledger

    ledger = Ledger()
    for i, (run, value, recorded) in enumerate((("r1", 10.0, True), ("r2", 9.0, False), ("r3", 7.0, False))):
        ledger.start_run(run, "deploy", None, None, {})
        result = HostResult("gpu<1>", run, Status.OK if value > 8 else Status.ROLLED_BACK, Generation(1, "/a"),
                            Generation(2, "/b"), Generation(2, "/b"),
                            health={"failing": ["<script>alert(1)</script>: bad"]} if value < 8 else None,
                            bench={"results": {"matmul": {"value": value, "unit": "T", "cv": 0.01}},
                                   "tolerance": 0.15, "baseline_recorded": recorded},
                            error="<b>health checks failed</b>" if value < 8 else None)
        path = write_host_result(result)
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
        ledger.record(result)
        ledger.finish_run(run, "failed" if value < 8 else "ok")
    html = report.render(report.build("r3"))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;: bad" in html
    assert "&lt;b&gt;health checks failed&lt;/b&gt;" in html
    assert 'class="band"' in html and 'class="baseline"' in html and "-15%" in html
    points = re.search(r'data-case="matmul"[^>]*points="([^"]+)"', html).group(1).split()
    assert len(points) == 3  # r1 (the baseline, 100%), r2 (90%), r3 (70%): the last drops below the band
    assert not re.search(r'(src|href)="(https?:)?//', html), "no external asset"


def _rollout(fleet, inventory: Path) -> tuple[subprocess.CompletedProcess, str]:
    proc = subprocess.run([str(BIN / "ipex-fleet"), "rollout", str(inventory), "deploys/prod.py", "--waves", "1,1"],
                          cwd=REPO, env=fleet.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    return proc, proc.stdout.split("rollout ", 1)[1].split(":", 1)[0]


@pytest.mark.timeout(900)  # two lab rollouts with health level 2 and a browser, on two shared cores
def test_the_report_of_a_rollout_with_a_rolled_back_host_in_chromium(fleet2, tmp_path):
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        "from ipex_fleet.lab.inventory import lab_hosts\n"
        # The gate's tolerance wide: this test is about the report of a host the health check rolled
        # back; the benchmark is here for host1's chart. This machine's memory bandwidth moved by a
        # third between two rollouts a minute apart (mem_copy 65% of the first one's, three times in
        # five, at commits before and after this line), which the gate rightly fails at its default.
        f"_all = [(n, {{**d, 'health_levels': [1], 'bench': True, 'bench_tolerance': 0.6, 'min_free_mb': 64}}) "
        f"for n, d in lab_hosts({str(fleet2.lab.layout.root)!r})]\n"
        "canary = _all[:1]\nwave1 = _all[1:]\n")
    for h in ("host1", "host2"):
        fleet2.configure(h, f"version=v{time.monotonic_ns()}")
    first, _ = _rollout(fleet2, inventory)
    assert_ok(first)
    for h in ("host1", "host2"):
        fleet2.configure(h, f"version=v{time.monotonic_ns()}")
    fleet2.configure("host2", "hide_accelerator=true")
    try:
        second, run_id = _rollout(fleet2, inventory)
    finally:
        fleet2.reset()
    assert second.returncode != 0
    page = tmp_path / "report.html"
    proc = subprocess.run([str(BIN / "ipex-fleet"), "report", run_id, "--html", str(page)], cwd=REPO,
                          env=fleet2.env(), capture_output=True, text=True, timeout=60)
    assert_ok(proc)

    dom = chromium(page, tmp_path, "--dump-dom")
    assert_ok(dom)
    row = re.search(r'<tr class="host" id="host-host2" data-status="([a-z_]+)">(.*?)</tr>', dom.stdout, re.S)
    assert row and row.group(1) == "rolled_back", dom.stdout[:3000]
    failing = re.findall(r'<li class="failing-check">(.*?)</li>', row.group(2))
    recorded = fleet2.result(run_id, "host2").health["failing"]  # e.g. "comfyui: ... comfyui.service failed; its journal ends: ..."
    assert recorded and failing == recorded
    assert re.search(r'<tr class="host" id="host-host1" data-status="ok">', dom.stdout)
    chart = re.search(r'<div class="card" data-host="host1">(.*?)</div>', dom.stdout, re.S).group(1)
    assert "<svg" in chart and 'class="band"' in chart and 'class="series"' in chart

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-rollout.png"
    taken = chromium(page, tmp_path, f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
