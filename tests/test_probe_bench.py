"""The probe and bench on this machine's CPU, through the same device-generic code as on GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipex_fleet.host.bench import gate
from ipex_fleet.host.probe import run as probe_run
from ipex_fleet.host.probe.checks import Expectations
from ipex_fleet.host.probe.model import passed

from .conftest import REPO

PY = sys.executable


def probe(*args: str, env: dict | None = None) -> tuple[int, dict]:
    proc = subprocess.run([PY, "-m", "ipex_fleet.host.probe", "--json", "--config", "/nonexistent", *args],
                          capture_output=True, text=True, timeout=300, env=env)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_probe_json_follows_the_contract():
    rc, doc = probe("--level", "2", "--accelerator", "cpu")
    assert rc == 0, doc
    assert {"schema", "level", "host", "duration_s", "accelerator", "checks", "result"} <= set(doc)
    assert doc["level"] == 2 and doc["result"] in ("pass", "warn")
    assert {"type", "count", "devices", "torch", "ipex"} <= set(doc["accelerator"])
    assert doc["accelerator"]["type"] == "cpu" and doc["accelerator"]["torch"].startswith("2.")
    names = {c["name"] for c in doc["checks"]}
    assert {"torch", "accelerator", "matmul", "memory"} <= names
    for c in doc["checks"]:
        assert set(c) >= {"name", "level", "result", "message", "data"}
        assert c["result"] in ("pass", "warn", "fail", "skip") and c["message"]
    skips = {c["name"]: c["message"] for c in doc["checks"] if c["result"] == "skip"}
    assert "not an Intel GPU host" in skips["render_nodes"], "a check that cannot run says why"


def test_probe_fails_when_the_expected_accelerator_is_missing():
    rc, doc = probe("--level", "1", "--accelerator", "cuda")
    assert rc == 1 and doc["result"] == "fail"
    acc = next(c for c in doc["checks"] if c["name"] == "accelerator")
    assert acc["result"] == "fail" and "expected a cuda device, torch sees cpu" in acc["message"]


def test_probe_check_that_hangs_fails_within_its_limit():
    def hangs(exp, scratch):
        time.sleep(30)
        return passed("never")

    started = time.monotonic()
    doc = probe_run(1, Expectations(), extra=[("hangs", 1, hangs, 0.3)])
    hung = next(c for c in doc["checks"] if c["name"] == "hangs")
    assert hung["result"] == "fail" and "did not finish within 0.3s" in hung["message"]
    assert doc["result"] == "fail"
    assert time.monotonic() - started < 25


def test_probe_writes_textfile_metrics(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    out = tmp_path / "ipex_fleet.prom"
    rc, doc = probe("--level", "1", "--textfile", str(out))
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    states = {(s.labels["check"], s.labels["result"]): s.value for s in families["ipex_fleet_check_result"].samples}
    for c in doc["checks"]:  # a state set: exactly the check's own state is 1
        assert [r for r in ("pass", "warn", "fail", "skip") if states[(c["name"], r)] == 1] == [c["result"]]
    assert families["ipex_fleet_probe_success"].samples[0].value == (0 if doc["result"] == "fail" else 1)
    info = families["ipex_fleet_accelerator_info"].samples[0]
    assert info.name == "ipex_fleet_accelerator_info" and info.labels["type"] == doc["accelerator"]["type"]
    assert not list(tmp_path.glob("*.tmp*")), "written atomically: no temporary file left"


def bench(*args: str) -> tuple[int, dict]:
    proc = subprocess.run([PY, "-m", "ipex_fleet.host.bench", "--json", *args], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_bench_writes_textfile_metrics_with_the_baseline_ratio(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    out = tmp_path / "bench.prom"
    args = ("--quick", "--only", "matmul_fp32", "--gate", "--dir", str(tmp_path), "--textfile", str(out))
    bench(*args)  # the first run records the baseline
    rc, doc = bench(*args)
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    (value,) = families["ipex_fleet_benchmark_value"].samples
    assert value.labels["case"] == doc["results"][0]["name"] and value.value == doc["results"][0]["value"]
    (ratio,) = families["ipex_fleet_benchmark_baseline_ratio"].samples
    assert ratio.value == doc["gate"]["comparisons"][0]["ratio"]
    assert families["ipex_fleet_benchmark_tolerance_ratio"].samples[0].value == doc["gate"]["tolerance"]


def test_bench_json_follows_the_contract():
    rc, doc = bench("--quick")
    assert rc == 0
    assert {"schema", "device", "quick", "results"} <= set(doc) and doc["quick"] is True
    names = {r["name"].split("_")[0] for r in doc["results"]}
    assert {"matmul", "conv3x3", "sd", "mem"} <= names
    dtypes = {r["dtype"] for r in doc["results"] if r["name"].startswith("matmul")}
    assert dtypes == {"fp32", "fp16", "bf16"}
    for r in doc["results"]:
        assert {"name", "dtype", "shape", "metric", "value", "unit", "runs", "median", "cv"} <= set(r)
        assert r["value"] > 0 and r["median"] > 0 and r["cv"] >= 0 and r["runs"] >= 5


def scale_baseline(baseline: dict, name: str, speed: float) -> dict:
    """A copy of the baseline as if its device had been `speed` times as fast for `name` (samples shortened)."""
    baseline = json.loads(json.dumps(baseline))
    case = baseline["cases"][name]
    case["runs"] = [[t / speed for t in run] for run in case["runs"]]
    case["value"] *= speed
    baseline["results"][name] = case["value"]
    return baseline


def test_gate_judges_samples_and_noise_is_no_shield():
    import random

    rng = random.Random(5)

    def samples(level: float, cv: float, n: int = 30) -> list[float]:
        return [level * (1 + rng.gauss(0, cv)) for _ in range(n)]

    def entry(runs):
        return {"unit": "x", "metric": "m", "work": 1.0, "repeat": 1, "value": 1.0, "runs": runs}

    baseline = {"cases": {n: entry([samples(1.0, 0.02) for _ in range(3)]) for n in "abc"}}
    results = [
        {"name": "a", "value": 0.9, "unit": "x", "cv": 0.02, "work": 1.0, "samples": samples(1 / 0.9, 0.02)},
        {"name": "b", "value": 0.7, "unit": "x", "cv": 0.02, "work": 1.0, "samples": samples(1 / 0.7, 0.02)},
        # 30% slower and noisy: the old gate called this a warn and let the deploy pass.
        {"name": "c", "value": 0.7, "unit": "x", "cv": 0.2, "work": 1.0, "samples": samples(1 / 0.7, 0.2)},
        {"name": "d", "value": 5.0, "unit": "x", "cv": 0.01, "work": 1.0, "samples": samples(0.2, 0.01)},
    ]
    compared = {c["name"]: c for c in gate.compare(results, baseline, 0.15)}
    assert {n: c["verdict"] for n, c in compared.items()} == {"a": "pass", "b": "fail", "c": "fail", "d": "baseline"}
    assert compared["b"]["ci"][1] < 0.85 and compared["b"]["confidence"] >= 0.995
    assert compared["a"]["ci"][0] >= 0.85 and compared["a"]["p_slower"] <= 0.005
    assert gate.verdict_of(list(compared.values())) == "fail"
    assert gate.verdict_of([compared["a"], compared["d"]]) == "pass"


def test_bench_gate_records_a_baseline_then_fails_a_real_slowdown(tmp_path):
    rc, doc = bench("--quick", "--only", "matmul_fp32", "--gate", "--dir", str(tmp_path))
    assert rc == 0 and doc["gate"]["baseline_recorded"] is True
    baseline = json.loads((tmp_path / "baseline.json").read_text())
    runs = baseline["cases"]["matmul_fp32_1024"]["runs"]
    assert baseline["schema"] == 2 and len(runs) == 3 and all(len(r) >= 5 for r in runs)
    # A baseline 10x faster than this machine can reach: the gate must fail, after re-measuring.
    (tmp_path / "baseline.json").write_text(json.dumps(scale_baseline(baseline, "matmul_fp32_1024", 10)))
    rc, doc = bench("--quick", "--only", "matmul_fp32", "--gate", "--dir", str(tmp_path))
    assert rc == 1 and doc["gate"]["result"] == "fail"
    (c,) = doc["gate"]["comparisons"]
    assert c["verdict"] == "fail" and c["ci"][1] < 0.85 and c["confidence"] >= 0.995
    assert doc["gate"]["retest"]["cases"] == ["matmul_fp32_1024"]  # measured again before the verdict
    assert doc["results"][0]["rounds"] == 2
    # And one it easily beats passes.
    (tmp_path / "baseline.json").write_text(json.dumps(scale_baseline(baseline, "matmul_fp32_1024", 1 / 10)))
    rc, doc = bench("--quick", "--only", "matmul_fp32", "--gate", "--dir", str(tmp_path))
    assert rc == 0 and doc["gate"]["result"] == "pass"
    history = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(l)["verdict"] for l in history] == ["pass", "fail", "pass"]


IPEX_WHEEL = "intel-extension-for-pytorch==2.8.0"


@pytest.fixture(scope="session")
def ipex_beside_torch() -> Path:
    """IPEX 2.8 installed next to this venv's torch 2.13, in a directory of its own."""
    target = REPO / ".cache" / "ipex-2.8.0"
    if not (target / "intel_extension_for_pytorch").is_dir():
        proc = subprocess.run([PY, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), IPEX_WHEEL],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"could not install {IPEX_WHEEL}: {proc.stderr[-500:]}")
    return target


def test_ipex_mismatch_is_a_clear_fail_not_a_crash(ipex_beside_torch):
    env = {**os.environ, "PYTHONPATH": str(ipex_beside_torch)}
    rc, doc = probe("--level", "1", env=env)
    ipex = next(c for c in doc["checks"] if c["name"] == "ipex")
    assert rc == 1 and doc["result"] == "fail"
    assert ipex["result"] == "fail"
    assert "IPEX 2.8.0" in ipex["message"] and "torch is 2.13.0" in ipex["message"]
    assert doc["accelerator"]["ipex"] == "2.8.0"


def test_a_torch_upgrade_is_held_against_the_old_baseline_not_rerecorded(tmp_path):
    rc, doc = bench("--quick", "--only", "matmul_fp32", "--gate", "--dir", str(tmp_path))
    assert rc == 0 and doc["gate"]["baseline_recorded"] is True
    baseline = json.loads((tmp_path / "baseline.json").read_text())
    # The baseline was taken with an older torch and was 10x faster: the upgrade's regression shows.
    baseline["device"]["torch"] = "2.0.0"
    (tmp_path / "baseline.json").write_text(json.dumps(scale_baseline(baseline, "matmul_fp32_1024", 10)))
    rc, doc = bench("--quick", "--only", "matmul_fp32", "--gate", "--dir", str(tmp_path))
    assert rc == 1 and doc["gate"]["baseline_recorded"] is False and doc["gate"]["result"] == "fail"
    assert doc["gate"]["torch_changed"] == {"baseline": "2.0.0", "now": doc["device"]["torch"]}
    assert json.loads((tmp_path / "baseline.json").read_text())["device"]["torch"] == "2.0.0"
    # Other hardware (here: another thread count) does start a new baseline.
    baseline["device"]["threads"] = 999
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    rc, doc = bench("--quick", "--only", "matmul_fp32", "--gate", "--dir", str(tmp_path))
    assert rc == 0 and doc["gate"]["baseline_recorded"] is True
