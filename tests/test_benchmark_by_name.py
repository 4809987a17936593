"""`ipex-benchmark`, the benchmark by the seeds' name: the packaged entry point gives the bench's
JSON document, and each category flag runs exactly that category's cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ipex_fleet.host.bench import byname, cases
from ipex_fleet.host.device import Device
from .conftest import assert_ok

ENTRY_POINT = Path(sys.executable).parent / "ipex-benchmark"


def _run(*args: str) -> dict:
    proc = subprocess.run([str(ENTRY_POINT), *args], capture_output=True, text=True, timeout=300)
    assert_ok(proc)
    return json.loads(proc.stdout)


@pytest.mark.parametrize("device", ["cpu", "cuda", "xpu"])
@pytest.mark.parametrize("category", sorted(byname.CATEGORIES))
def test_every_category_selects_cases_on_every_device(device, category):
    names = [c.name for c in cases.plan(Device(device, 0), quick=True)]
    chosen = [n for n in names if n.startswith(byname.CATEGORIES[category])]
    # memory on the CPU has no host transfer, but always its copy: no flag may select nothing.
    assert chosen, f"--{category}-only selects no case on {device}"


def test_the_entry_point_gives_the_bench_document():
    assert ENTRY_POINT.exists(), "the console script ipex-benchmark is not installed (run scripts/bootstrap)"
    doc = _run("--quick", "--json")
    assert doc["schema"] == 2 and doc["quick"] is True and doc["device"]["type"] == "cpu"
    assert [r["name"] for r in doc["results"]] == [c.name for c in cases.plan(Device("cpu", None), quick=True)]
    for r in doc["results"]:
        assert {"name", "dtype", "shape", "metric", "value", "unit", "runs", "median", "cv", "samples", "bounds"} <= set(r)
        assert r["value"] > 0 and len(r["samples"]) == r["runs"] and r["bounds"]


def test_sd_only_runs_only_the_sd_cases():
    doc = _run("--quick", "--json", "--sd-only")
    names = [r["name"] for r in doc["results"]]
    assert names and all(n.startswith("sd_unet_step_") for n in names)


def test_flags_add_up_and_map_to_the_bench():
    args = byname.build_parser().parse_args(["--quick", "--tensor-only", "--conv-only", "--threads", "2"])
    assert byname.bench_argv(args) == ["--quick", "--only", "conv3x3_", "--only", "matmul_", "--threads", "2"]
    args = byname.build_parser().parse_args(["--sd-only", "--gate", "--tolerance", "0.2", "--dir", "/d"])
    assert byname.bench_argv(args) == ["--only", "sd_unet_step_", "--gate", "--tolerance", "0.2", "--dir", "/d"]


def test_gated_it_prints_the_verdict_and_its_confidence(tmp_path):
    for _ in range(2):  # the first run records the baseline; the second is judged
        proc = subprocess.run([str(ENTRY_POINT), "--quick", "--sd-only", "--gate", "--dir", str(tmp_path),
                               "--tolerance", "0.5"], capture_output=True, text=True, timeout=300)
    last = proc.stdout.strip().splitlines()
    verdict = next(line for line in last if line.startswith("gate: "))
    assert verdict.split()[1].rstrip(",") in ("pass", "fail", "inconclusive"), proc.stdout
    assert proc.returncode == {"pass": 0, "fail": 1, "inconclusive": 3}[verdict.split()[1].rstrip(",")]
    assert "confidence" in verdict and "of baseline" in proc.stdout


def test_an_unknown_flag_is_one_line_and_exit_2():
    proc = subprocess.run([str(ENTRY_POINT), "--gpu-only"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unrecognized arguments: --gpu-only" in proc.stderr
    assert "Traceback" not in proc.stderr
