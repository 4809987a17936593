"""The benchmark gate's consequences and reports, without a lab: the deploy step's policy on each
verdict, the device's other users, the baseline's validity, the metrics and maintenance's drift."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from ipex_fleet.fleet import drift
from ipex_fleet.host import metrics
from ipex_fleet.transaction import gates
from ipex_fleet.host.bench import gate, occupants
from ipex_fleet.remote import RemoteResult
from ipex_fleet.transaction.core import HostTransaction, StepFailed


def settings(**over) -> SimpleNamespace:
    base = dict(bench=True, bench_inconclusive="fail", ipex_fleet_command="ipex-fleet", metrics_dir=None,
                bench_tolerance=None, bench_lock=None, bench_threads=None, bench_timeout=60)
    return SimpleNamespace(**{**base, **over})


def document(verdict: str, shared: bool = False) -> dict:
    comparison = {"name": "matmul_bf16_4096", "verdict": verdict, "ratio": 0.82, "ci": [0.74, 0.91],
                  "p_slower": 0.5 if verdict == "inconclusive" else 0.999, "confidence": 0.999,
                  "message": "560 TFLOP/s is 82% of baseline 690 (interval 74%-91%)"}
    gate_doc = {"result": verdict, "confidence": 0.999, "tolerance": 0.15, "alpha": 0.005, "baseline_recorded": False,
                "comparisons": [comparison] if verdict != "pass" else [], "retest": {"cases": ["matmul_bf16_4096"]},
                "occupants": {"method": "nvml", "processes": [{"pid": 4242, "name": "python3 hog.py", "memory_mib": 900}]
                              if shared else []}}
    if shared:
        gate_doc["shared"] = "the device is shared with pid 4242 python3 hog.py 900 MiB"
    return {"schema": 2, "device": {"type": "cuda", "name": "NVIDIA H200"}, "quick": True, "duration_s": 11.0,
            "results": [{"name": "matmul_bf16_4096", "metric": "tflops", "unit": "TFLOP/s", "value": 560.0, "cv": 0.2,
                         "runs": 120}], "gate": gate_doc}


def gate_step(monkeypatch, verdict: str, shared: bool = False, **over) -> HostTransaction:
    tx = HostTransaction(host="h1", run_id="r1", settings=settings(**over))
    logged = []
    host = SimpleNamespace(log=lambda text, *_: logged.append(text))
    monkeypatch.setattr(gates, "sh", lambda tx, host, command, timeout=None: RemoteResult(
        {"pass": 0, "fail": 1, "inconclusive": 3}[verdict], (json.dumps(document(verdict, shared)),), ()))
    tx.logged = logged  # type: ignore[attr-defined]
    gates.bench_gate(tx, host)
    return tx


def test_a_pass_passes_and_keeps_the_verdict_and_its_confidence(monkeypatch):
    tx = gate_step(monkeypatch, "pass")
    assert tx.bench["result"] == "pass" and tx.bench["confidence"] == 0.999 and tx.bench["comparisons"] == []


def test_a_fail_fails_the_deploy_naming_the_case_and_the_neighbour(monkeypatch):
    with pytest.raises(StepFailed) as err:
        gate_step(monkeypatch, "fail", shared=True)
    assert str(err.value).startswith("benchmark gate failed: matmul_bf16_4096: 560 TFLOP/s is 82% of baseline")
    assert "the device is shared with pid 4242 python3 hog.py" in str(err.value)


def test_inconclusive_fails_by_default_and_warns_when_host_data_says_so(monkeypatch):
    with pytest.raises(StepFailed) as err:
        gate_step(monkeypatch, "inconclusive")
    assert "benchmark gate inconclusive (host data bench_inconclusive=fail): matmul_bf16_4096" in str(err.value)
    tx = gate_step(monkeypatch, "inconclusive", bench_inconclusive="warn")
    assert tx.bench["result"] == "inconclusive" and tx.bench["inconclusive_accepted"] is True
    assert any("inconclusive" in line and "bench_inconclusive=warn" in line for line in tx.logged)


def test_bench_inconclusive_is_fail_or_warn_in_host_data(tmp_path):
    from ipex_fleet.common.errors import UserError
    from ipex_fleet.settings import from_host_data

    (tmp_path / "flake.nix").write_text("{}")
    (tmp_path / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}')
    assert from_host_data("h", {"flake": str(tmp_path)}).bench_inconclusive == "fail"
    assert from_host_data("h", {"flake": str(tmp_path), "bench_inconclusive": "warn"}).bench_inconclusive == "warn"
    with pytest.raises(UserError, match="bench_inconclusive='pass' is not one of fail, warn"):
        from_host_data("h", {"flake": str(tmp_path), "bench_inconclusive": "pass"})


def test_nvidia_users_are_read_from_nvidia_smi_without_nvml(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '4242, python3, 1024'\necho \"$PPID, ours, 10\"\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML here: the CLI answers
    found = occupants.scan("cuda")
    assert found["method"] == "nvidia-smi"
    assert [(p["pid"], p["memory_mib"]) for p in found["processes"]] == [(4242, 1024)]  # never itself
    assert occupants.describe(found).startswith("the device is shared with pid 4242 ")


def test_intel_users_are_the_processes_holding_a_render_node(tmp_path):
    for pid, target in ((101, "/dev/dri/renderD128"), (102, "/dev/null"), (103, "/dev/dri/renderD129")):
        (tmp_path / str(pid) / "fd").mkdir(parents=True)
        os.symlink(target, tmp_path / str(pid) / "fd" / "5")
    found = occupants.render_nodes(str(tmp_path))
    assert sorted((p["pid"], tuple(p["nodes"])) for p in found["processes"]) == [
        (101, ("/dev/dri/renderD128",)), (103, ("/dev/dri/renderD129",))]


def test_cpu_users_are_the_busy_processes_but_never_the_bench_itself(monkeypatch):
    monkeypatch.setattr(occupants, "MIN_CPU", 0.05)
    # A busy grandchild (its shell parent is this process's child, and is left out as one).
    busy = subprocess.Popen(["sh", "-c", f"{sys.executable} -c 'while True: pass' & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = occupants.scan("cpu")
            if any("while True" in p["name"] for p in found["processes"]):
                break
        else:
            pytest.fail(f"the busy process was not listed: {found}")
        assert os.getpid() not in {p["pid"] for p in found["processes"]}
        assert busy.pid not in {p["pid"] for p in found["processes"]}
    finally:
        os.killpg(busy.pid, signal.SIGKILL)  # the session this test started, and nothing else
        busy.wait(timeout=10)


def test_a_baseline_without_samples_or_from_other_hardware_is_taken_anew():
    device = {"type": "cuda", "name": "NVIDIA H200", "count": 1, "threads": 16, "torch": "2.11"}
    good = {"schema": 2, "device": device, "cases": {}}
    assert gate.usable(good, {**device, "torch": "2.12"}) == (True, "")
    assert gate.usable(None, device) == (False, "no baseline yet")
    assert gate.usable({"device": device, "results": {"m": 1.0}}, device)[1] == "the baseline holds no samples (schema 1)"
    assert not gate.usable(good, {**device, "name": "NVIDIA H100"})[0]


def test_a_torn_baseline_is_taken_anew_not_a_traceback(tmp_path):
    (tmp_path / "baseline.json").write_text('{"schema": 2, "cases": {')
    baseline = gate.read_baseline(str(tmp_path))
    ok, why = gate.usable(baseline, {"type": "cpu"})
    assert not ok and why.startswith("the baseline could not be read (")
    assert gate.read_baseline(str(tmp_path / "none")) is None


def test_metrics_carry_the_verdict_its_confidence_and_each_case(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    doc = document("fail", shared=True)
    doc["gate"]["comparisons"][0]["tail"] = {"verdict": "fail", "ratio": 0.45, "ci": [0.41, 0.6], "p_slower": 1.0}
    out = tmp_path / "bench.prom"
    metrics.write(str(out), metrics.bench_metrics(doc))
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    verdict = {s.labels["result"]: s.value for s in families["ipex_fleet_benchmark_verdict"].samples}
    assert verdict == {"pass": 0, "fail": 1, "inconclusive": 0}
    assert families["ipex_fleet_benchmark_confidence_ratio"].samples[0].value == 0.999
    case = {s.labels["result"]: s.value for s in families["ipex_fleet_benchmark_case_verdict"].samples}
    assert case == {"pass": 0, "fail": 1, "inconclusive": 0}
    bounds = {s.labels["bound"]: s.value for s in families["ipex_fleet_benchmark_baseline_ratio_bound"].samples}
    assert bounds == {"low": 0.74, "high": 0.91}
    assert families["ipex_fleet_benchmark_slower_probability"].samples[0].value == 0.999
    assert families["ipex_fleet_benchmark_device_processes"].samples[0].value == 1


def test_maintenance_drift_uses_the_gates_verdicts():
    doc = document("inconclusive", shared=True)
    doc["gate"]["comparisons"][0]["baseline"] = 690.0
    history = [{"quick": True, "results": {"matmul_bf16_4096": v}} for v in (690.0, 640.0, 560.0)]
    found = drift.assess(doc, history)
    (case,) = found.report["cases"]
    assert case["verdict"] == "inconclusive" and case["ci"] == [0.74, 0.91] and case["p_slower"] == 0.5
    assert found.warnings[0].startswith("possible benchmark drift (inconclusive): matmul_bf16_4096: 560 TFLOP/s")
    assert "trend over 3 run(s): 100% 93% 81%" in found.warnings[0]
    assert found.warnings[1] == "benchmark drift: the device is shared with pid 4242 python3 hog.py 900 MiB"
    assert found.report["result"] == "inconclusive" and found.report["shared_with"][0]["pid"] == 4242


def test_a_doubtful_new_baseline_says_why():
    from ipex_fleet.host.bench.__main__ import baseline_warnings

    def run(steady: bool, level: float = 1.0) -> dict:
        return {"warmup": {"steady": steady}, "samples": [level] * 5, "work": 1.0}

    shared = {"processes": [{"pid": 7, "name": "python3 train.py", "memory_mib": 5000}]}
    rounds = {"m": [run(True), run(False)], "c": [run(True), run(True, 1.3)]}
    first, second, third = baseline_warnings(shared, rounds, 0.15, 0.0)
    assert first.startswith("the baseline was taken while the device is shared with pid 7 python3 train.py 5000 MiB")
    assert "--rebaseline" in first and second == "the warm-up of m never became steady within its bound"
    assert third.startswith("the baseline's runs disagree (c 30% apart")
    assert baseline_warnings({"processes": []}, {"m": [run(True), run(True, 1.05)]}, 0.15, 0.0) == []


def test_a_baseline_keeps_the_runs_that_agree_after_measuring_a_doubtful_case_again():
    from ipex_fleet.host.bench.__main__ import settle

    levels = iter([1.0, 1.01])  # the two extra runs of the disturbed case

    class Bench:
        plan = SimpleNamespace(trim=0.0, retest_s=5.0)
        measured: list[str] = []

        def measure(self, name, repeat=None):
            self.measured.append(name)
            return {"samples": [next(levels)] * 4, "work": 1.0, "repeat": repeat}

    rounds = {"a": [{"samples": [x] * 4, "work": 1.0, "repeat": 3} for x in (1.4, 1.0, 0.99)],  # a transient
              "b": [{"samples": [x] * 4, "work": 1.0, "repeat": 3} for x in (1.0, 1.02, 1.01)]}
    bench = Bench()
    assert settle(bench, rounds, ["a", "b"], 3, 0.15) == {"a": 1}
    assert bench.measured == ["a"]  # one more run made the case agree; b's runs agreed from the start
    assert [r["samples"][0] for r in rounds["a"]] == [1.0, 0.99, 1.0]
    assert len(rounds["b"]) == 3


def test_a_retest_confirms_a_slowdown_and_unmasks_a_transient():
    import random

    from ipex_fleet.host.bench.__main__ import judge

    rng = random.Random(3)

    def round_at(level: float) -> dict:
        return {"name": "m", "unit": "x", "value": 1 / level, "work": 1.0, "repeat": 1, "cv": 0.01,
                "samples": [level * (1 + rng.gauss(0, 0.01)) for _ in range(30)]}

    baseline = {"cases": {"m": {"work": 1.0, "value": 1.0, "runs": [round_at(1.0)["samples"] for _ in range(3)]}}}

    class Bench:
        plan = SimpleNamespace(trim=0.0, tail=None, retest_rounds=2, retest_s=30.0)
        cases = {"m": None}

        def __init__(self, levels):
            self.levels = iter(levels)

        def measure(self, name, repeat=None):
            return round_at(next(self.levels))

    def gated(first: float, retests: list[float]) -> tuple[dict, dict]:
        rounds = {"m": [round_at(first)]}
        results = {"m": rounds["m"][0]}
        (c,), retest = judge(Bench(retests), baseline, rounds, results, 0.15, [])
        return c, retest

    slow, retest = gated(1.6, [1.6, 1.6])  # a device that stays slow: confirmed after one retest
    assert slow["verdict"] == "fail" and slow["rounds"] == 2 and retest["cases"] == ["m"]
    transient, retest = gated(1.6, [1.0, 1.0])  # slow once, then itself again: never a fail
    assert transient["verdict"] == "inconclusive" and transient.get("transient") is True
    assert retest["cases"] == ["m", "m"]  # measured once more: the pool of all three, still not a fail
    fine, retest = gated(1.0, [])  # a pass is never retested
    assert fine["verdict"] == "pass" and retest["cases"] == []


def test_cpu_pressure_says_when_a_cpu_run_shared_its_cores(tmp_path):
    psi = tmp_path / "cpu"
    psi.write_text("some avg10=49.69 avg60=48.28 avg300=48.79 total=3846131718\n"
                   "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert occupants.cpu_pressure(str(psi)) == 0.497
    assert occupants.cpu_pressure(str(tmp_path / "absent")) is None
    assert occupants.describe({"processes": [], "pressure": 0.497}) == \
        "the CPU is contended (some task waited 50% of the last 10 s)"
    assert occupants.describe({"processes": [], "pressure": 0.05}) is None
    both = occupants.describe({"processes": [{"pid": 9, "name": "python3 cpu-hog.py", "cpu": 0.4}], "pressure": 0.6})
    assert both == ("the device is shared with pid 9 python3 cpu-hog.py 40% of a core; "
                    "the CPU is contended (some task waited 60% of the last 10 s)")


def test_a_cpu_contended_from_outside_the_host_is_inconclusive_but_its_own_hog_still_fails():
    from ipex_fleet.host.bench.__main__ import not_ours

    def failing() -> list[dict]:
        return [{"name": "m", "verdict": "fail", "message": "0.3 is 30% of baseline 1"},
                {"name": "c", "verdict": "pass", "message": "ok"}]

    outside = {"processes": [], "pressure": 0.8}
    assert occupants.contended_from_outside(outside)
    comparisons = failing()
    assert not_ours(comparisons, outside) == "inconclusive"
    assert comparisons[0]["contended"] is True and "contended from outside this host" in comparisons[0]["message"]
    hog = {"processes": [{"pid": 9, "name": "python3 cpu-hog.py", "cpu": 0.4}], "pressure": 0.9}
    assert not occupants.contended_from_outside(hog)  # the host's own process: its fail stands
    assert not occupants.contended_from_outside({"processes": [], "pressure": 0.05})
    assert not occupants.contended_from_outside({"processes": []})  # no pressure file: no excuse
