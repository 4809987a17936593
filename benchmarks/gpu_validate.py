#!/usr/bin/env python3
"""Validate the probe and the bench on a real GPU, through the same device-generic code.

Runs the probe (levels 1-2, JSON), the full bench (JSON), and a plain reference loop
(torch.mm in bf16 timed with device events) in one process run, then prints each figure with
its ratio to the reference loop and to the device's peak. Writes the JSON documents to --out.

    python3 benchmarks/gpu_validate.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def reference_mm(n: int = 8192, inner: int = 60, samples: int = 15) -> tuple[float, float]:
    """(TFLOP/s median, cv) of a plain torch.mm loop, timed with CUDA/XPU events."""
    import torch

    dev = torch.accelerator.current_accelerator()
    torch.manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    deadline = time.monotonic() + 2.0  # clocks and power settle before timing starts
    while time.monotonic() < deadline:
        for _ in range(50):
            torch.mm(a, b)
        torch.accelerator.synchronize()
    rates = []
    for _ in range(samples + 1):
        start, end = torch.Event(enable_timing=True), torch.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            torch.mm(a, b)
        end.record()
        end.synchronize()
        rates.append(2 * n**3 * inner / (start.elapsed_time(end) / 1000) / 1e12)
    rates = rates[1:]
    return statistics.median(rates), statistics.stdev(rates) / statistics.mean(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    probe = subprocess.run([sys.executable, "-m", "ipex_fleet.host.probe", "--level", "2", "--json",
                            "--accelerator", "cuda", "--config", "/nonexistent"], capture_output=True, text=True,
                           env=env, timeout=600)
    (out / "probe.json").write_text(probe.stdout)
    doc = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"probe level 2: {doc['result']} in {doc['duration_s']}s on {doc['accelerator']['devices'][0]['name']}")
    for c in doc["checks"]:
        print(f"  {c['result']:<4} {c['name']:<16} {c['message'][:110]}")
    hidden = subprocess.run([sys.executable, "-m", "ipex_fleet.host.probe", "--level", "1", "--json",
                             "--accelerator", "cuda", "--config", "/nonexistent"], capture_output=True, text=True,
                            env={**env, "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    hdoc = json.loads(hidden.stdout.strip().splitlines()[-1])
    acc = next(c for c in hdoc["checks"] if c["name"] == "accelerator")
    print(f"probe with CUDA_VISIBLE_DEVICES='': {hdoc['result']} (exit {hidden.returncode}): {acc['message']}")

    ref_before, ref_cv_before = reference_mm()
    from ipex_fleet.host.bench import run

    bench = run(quick=False)
    ref_after, ref_cv_after = reference_mm()
    (out / "bench.json").write_text(json.dumps(bench, indent=1))
    ref = statistics.mean([ref_before, ref_after])
    print(f"reference torch.mm bf16 8192^3: {ref_before:.1f} / {ref_after:.1f} TFLOP/s "
          f"(cv {ref_cv_before:.2%} / {ref_cv_after:.2%}), mean {ref:.1f}")
    for r in bench["results"]:
        eff = f"{r['efficiency']:.1%} of peak" if "efficiency" in r else "no peak known"
        line = f"  {r['name']:<24} {r['value']:>10.2f} {r['unit']:<8} cv {r['cv']:.2%}  {eff}"
        if r["name"].startswith("matmul_bf16"):
            line += f"  ratio to reference loop {r['value'] / ref:.3f}"
        print(line)
    quick = run(quick=True)
    (out / "bench_quick.json").write_text(json.dumps(quick, indent=1))
    print(f"quick bench: {quick['duration_s']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
