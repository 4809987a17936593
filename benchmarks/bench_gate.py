#!/usr/bin/env python3
"""The benchmark gate on a real device: false alarms on clean reruns, and misses under a neighbour.

Takes a baseline (`ipex-fleet bench --quick --gate` on an empty directory: several runs), then
`--clean` gated quick reruns, then `--per-duty` gated quick reruns under a neighbour process at
each duty of `--duties`, and prints the verdict counts and each run's wall time (the whole
process: Python, torch's import, the device's start, the measuring, the retests, the decision).

The neighbour is another process on the same device doing bursts of bf16 matrix products: at duty
d, each cycle runs the products that take d x 100 ms on the idle device, then sleeps (1 - d) x 100
ms; at duty 1 it never sleeps. It starts before the gated run and is stopped after it.

    python3 benchmarks/bench_gate.py --out DIR [--clean 30] [--per-duty 4] [--duties 0.15,0.3,1]

Writes DIR/runs.jsonl (every run's JSON document, samples included), DIR/summary.json and
DIR/baseline.json. Exits 0 when the targets hold: no fail and at most one inconclusive in the clean
reruns, a fail in every run under a neighbour, every gated run within --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"


def neighbour(duty: float, period: float = 0.1) -> None:
    """Run as a separate process: bursts of bf16 matmuls at the given duty, until killed."""
    import torch

    dev = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    n = 8192 if dev.type != "cpu" else 512
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)

    def sync() -> None:
        if dev.type != "cpu":
            torch.accelerator.synchronize()

    for _ in range(5):
        torch.mm(a, b)
    sync()
    t0 = time.perf_counter()
    for _ in range(20):
        torch.mm(a, b)
    sync()
    one = (time.perf_counter() - t0) / 20
    burst = max(1, round(duty * period / one))
    print(json.dumps({"neighbour": os.getpid(), "duty": duty, "matmul_ms": round(one * 1000, 3),
                      "per_burst": burst}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        for _ in range(burst):
            torch.mm(a, b)
        sync()
        if duty < 1:
            time.sleep((1 - duty) * period)


def gated(directory: str, extra: list[str], env: dict[str, str], timeout: float) -> tuple[dict, float, int]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ipex_fleet.host.bench", "--quick", "--gate", "--json",
                           "--dir", directory, *extra], capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.monotonic() - started
    try:
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        doc = {"error": (proc.stderr or proc.stdout)[-2000:]}
    return doc, wall, proc.returncode


def brief(doc: dict) -> str:
    g = doc.get("gate") or {}
    if "error" in doc:
        return "error: " + doc["error"].strip().splitlines()[-1][:200]
    worst = sorted((c for c in g.get("comparisons", []) if c.get("ratio") is not None), key=lambda c: c["ratio"])[:2]
    shown = ", ".join(f"{c['name']} {c['ratio']:.0%} [{c['ci'][0]:.0%}-{c['ci'][1]:.0%}] {c['verdict']}" for c in worst)
    shared = " shared" if g.get("shared") else ""
    retest = g.get("retest") or {}
    return f"{g.get('result', '?'):<12} conf {g.get('confidence') or 0:.3f} retest {len(retest.get('cases', []))}{shared}; {shown}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--clean", type=int, default=30)
    p.add_argument("--per-duty", type=int, default=4)
    p.add_argument("--duties", default="0.15,0.3,1")
    p.add_argument("--tolerance", default="0.15")
    p.add_argument("--max-seconds", type=float, default=15.0)
    p.add_argument("--budget-s", type=float, default=570.0, help="stop starting runs after this long")
    p.add_argument("--only", action="append", default=[])
    p.add_argument("--neighbour", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.neighbour is not None:
        neighbour(args.neighbour)
        return 0
    began = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1"}
    extra = ["--tolerance", args.tolerance, "--config", "/nonexistent"]
    for o in args.only:
        extra += ["--only", o]
    directory = tempfile.mkdtemp(prefix="bench-gate-")
    runs_file = open(out / "runs.jsonl", "w")
    summary: dict = {"started": time.time(), "tolerance": float(args.tolerance), "phases": {}}

    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch; torch.zeros(1, device=torch.accelerator.current_accelerator() "
                    "if torch.accelerator.is_available() else 'cpu')"], env=env, check=True)
    summary["torch_start_s"] = round(time.monotonic() - t0, 2)
    print(f"python + torch import + device start: {summary['torch_start_s']:.1f}s", flush=True)

    def record(phase: str, doc: dict, wall: float, rc: int) -> None:
        doc = {**doc, "phase": phase, "wall_s": round(wall, 2), "rc": rc}
        runs_file.write(json.dumps(doc) + "\n")
        runs_file.flush()
        ph = summary["phases"].setdefault(phase, {"runs": 0, "pass": 0, "fail": 0, "inconclusive": 0, "error": 0,
                                                  "wall_s": [], "named_neighbour": 0})
        ph["runs"] += 1
        verdict = (doc.get("gate") or {}).get("result") or "error"
        ph[verdict if verdict in ph else "error"] += 1
        ph["wall_s"].append(round(wall, 2))
        if (doc.get("gate") or {}).get("shared"):
            ph["named_neighbour"] += 1
        print(f"  {phase:<14} #{ph['runs']:<3} {wall:5.1f}s  {brief(doc)}", flush=True)

    doc, wall, rc = gated(directory, extra, env, 300)
    record("baseline", doc, wall, rc)
    summary["device"] = doc.get("device")
    print(f"baseline on {(doc.get('device') or {}).get('name')}: "
          f"{(doc.get('gate') or {}).get('baseline_runs')} runs per case in {wall:.1f}s", flush=True)
    for r in doc.get("results", []):
        print(f"    {r['name']:<22} {r['value']:>10.4g} {r['unit']:<8} cv {r['cv']:.2%} n {r['runs']} "
              f"graph {r.get('graph')} warm-up {r['warmup']['seconds']}s steady {r['warmup']['steady']}  "
              f"({r.get('bounds')})", flush=True)

    for i in range(args.clean):
        if time.monotonic() - began > args.budget_s:
            print("time budget spent: no more clean runs", flush=True)
            break
        record("clean", *gated(directory, extra, env, 120))

    for duty in [float(d) for d in args.duties.split(",") if d]:
        phase = f"neighbour_{duty:g}"
        if time.monotonic() - began > args.budget_s:
            print(f"time budget spent: {phase} not run", flush=True)
            continue
        hog = subprocess.Popen([sys.executable, __file__, "--out", str(out), "--neighbour", str(duty)], env=env,
                               stdout=subprocess.PIPE, text=True)
        info = json.loads(hog.stdout.readline())
        summary.setdefault("neighbours", {})[phase] = info
        print(f"{phase}: pid {info['neighbour']}, {info['per_burst']} matmuls of {info['matmul_ms']} ms per burst",
              flush=True)
        time.sleep(0.5)
        for _ in range(args.per_duty):
            if time.monotonic() - began > args.budget_s:
                break
            record(phase, *gated(directory, extra, env, 120))
        hog.terminate()
        hog.wait(timeout=30)

    runs_file.close()
    for name in ("baseline.json", "history.jsonl"):
        if Path(directory, name).exists():
            shutil.copy(Path(directory, name), out / name)
    targets = {}
    clean = summary["phases"].get("clean", {})
    targets["clean: 0 fail, <= 1 inconclusive"] = bool(clean) and clean["fail"] == 0 and clean["inconclusive"] <= 1 \
        and clean["error"] == 0
    for phase, ph in summary["phases"].items():
        if phase.startswith("neighbour"):
            targets[f"{phase}: fail in every run"] = ph["fail"] == ph["runs"] > 0
    walls = [w for phase, ph in summary["phases"].items() if phase != "baseline" for w in ph["wall_s"]]
    targets[f"every gated run within {args.max_seconds:g}s"] = bool(walls) and max(walls) <= args.max_seconds
    summary["targets"] = targets
    summary["duration_s"] = round(time.monotonic() - began, 1)
    for ph in summary["phases"].values():
        ph["wall_median_s"] = round(statistics.median(ph["wall_s"]), 2) if ph["wall_s"] else None
        ph["wall_max_s"] = max(ph["wall_s"]) if ph["wall_s"] else None
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\nphase            runs  pass  fail  inconclusive  error  named neighbour  wall median / max")
    for phase, ph in summary["phases"].items():
        print(f"{phase:<16} {ph['runs']:>4} {ph['pass']:>5} {ph['fail']:>5} {ph['inconclusive']:>13} {ph['error']:>6} "
              f"{ph['named_neighbour']:>16}  {ph['wall_median_s']}s / {ph['wall_max_s']}s")
    for what, ok in targets.items():
        print(f"{'met' if ok else 'MISSED':<7} {what}")
    shutil.rmtree(directory, ignore_errors=True)
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
