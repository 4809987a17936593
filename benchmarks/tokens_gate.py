#!/usr/bin/env python3
"""Level 2's Ollama tokens/s gate (src/ipex_fleet/host/probe/tokens.py) on this machine: false alarms on
clean reruns, and what it says of a slower Ollama.

Serves the lab's Ollama stand-in on loopback (the same program the lab's hosts run), pulls a model,
records the tokens/s baseline as a host's first healthy level-2 probe does, then judges `--clean`
reruns of the same server and `--per-factor` reruns of a server whose tokens take each factor of
`--factors` times the work (lab knob slow_ollama). The device's other users are listed as on a host
(this machine's CPU: other processes and the kernel's CPU pressure count).

    python3 benchmarks/tokens_gate.py [--clean 30] [--per-factor 5] [--factors 1.1,1.25,2,4] [--out FILE]

Prints each verdict with its ratio and interval, the counts, and each judged run's wall time.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ipex_fleet.host.probe import tokens  # noqa: E402

STAND_IN = REPO / "src" / "ipex_fleet" / "lab" / "labpkgs" / "services" / "ollama.py"
MODEL = "smollm2:135m"
DEVICE = {"type": "cpu", "name": "cpu", "count": 1, "threads": None}


def serve(state: str, factor: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["/usr/bin/python3", str(STAND_IN), "--host", "127.0.0.1", "--port", str(port),
                             "--state", state, "--lab-slow-tokens", str(factor)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    return proc, url


def judged(state: str, bench_dir: str, factor: float, tolerance: float) -> dict:
    proc, url = serve(state, factor)
    try:
        body = json.dumps({"model": MODEL, "stream": False}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/pull", data=body), timeout=60).read()
        started = time.monotonic()
        outcome = tokens.judge(MODEL, tokens.ollama_generate(url, MODEL), device=DEVICE, bench_dir=bench_dir,
                               tolerance=tolerance)
        gate = outcome.data.get("gate", {})
        return {"factor": factor, "result": "recorded" if gate.get("baseline_recorded") else gate.get("result"),
                "ratio": gate.get("ratio"), "ci": gate.get("ci"), "rounds": gate.get("rounds"),
                "contended": bool(gate.get("contended")), "shared": gate.get("shared"),
                "seconds": round(time.monotonic() - started, 2), "message": outcome.message}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clean", type=int, default=30)
    p.add_argument("--per-factor", type=int, default=5)
    p.add_argument("--factors", default="1.1,1.25,2,4")
    p.add_argument("--tolerance", type=float, default=0.15)
    p.add_argument("--out", help="also write the runs here, one JSON line each")
    args = p.parse_args()
    factors = [float(f) for f in args.factors.split(",") if f]
    runs = []
    with tempfile.TemporaryDirectory(prefix="tokens-gate-") as tmp:
        state, bench_dir = f"{tmp}/state", f"{tmp}/bench"
        plan = [1.0] + [1.0] * args.clean + [f for f in factors for _ in range(args.per_factor)]
        for i, factor in enumerate(plan):
            run = judged(state, bench_dir, factor, args.tolerance)
            runs.append(run)
            ratio = f"{run['ratio']:.0%} [{run['ci'][0]:.0%}, {run['ci'][1]:.0%}]" if run["ratio"] else "-"
            print(f"{i:3d} x{factor:<5g} {run['result']:<13} {ratio:<18} rounds {run['rounds'] or '-'} "
                  f"{run['seconds']:6.2f}s{'  contended' if run['contended'] else ''}", flush=True)
    print()
    for factor in [1.0] + factors:
        these = [r for r in runs[1:] if r["factor"] == factor]
        counts = Counter(r["result"] for r in these)
        ratios = [r["ratio"] for r in these if r["ratio"]]
        secs = [r["seconds"] for r in these]
        print(f"x{factor:g} ({len(these)} runs): " + ", ".join(f"{counts[k]} {k}" for k in ("pass", "inconclusive", "fail"))
              + f"; ratio {min(ratios):.0%}-{max(ratios):.0%}; judged in {min(secs):.1f}-{max(secs):.1f} s "
              f"(median {statistics.median(secs):.1f}); {sum(r['contended'] for r in these)} contended")
    print(f"baseline recorded in {runs[0]['seconds']:.1f} s")
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
