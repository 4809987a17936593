#!/usr/bin/env python3
"""Wall time of `pyinfra inventories/lab.py deploys/prod.py -y`: change and no-change deploys
for 1, 3 and 10 lab hosts, median of RUNS runs each, on a lab of its own.

    .venv/bin/python benchmarks/deploy_walltime.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ipex_fleet.lab import Lab  # noqa: E402


def timed_deploy(lab: Lab, state: Path, hosts: list[str], data: list[str]) -> float:
    env = {**os.environ, "IPEX_FLEET_LAB_ROOT": str(lab.layout.root), "IPEX_FLEET_STATE": str(state)}
    started = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "pyinfra"), "inventories/lab.py", "deploys/prod.py",
                           "-y", *[a for h in hosts for a in ("--limit", h)], *[a for d in data for a in ("--data", d)]], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed:\n{proc.stderr[-2000:]}")
    output = proc.stdout + proc.stderr
    done = output.count(" ok: generation") + output.count(" unchanged: generation")
    if done != len(hosts):
        raise SystemExit(f"expected {len(hosts)} host results, saw {done}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--root", default="/srv/ipex-fleet-bench")
    parser.add_argument("--net", default="127.0.40")
    parser.add_argument("--data", action="append", default=[], help="KEY=VALUE passed to pyinfra --data")
    args = parser.parse_args()
    lab = Lab(args.root)
    lab.destroy()
    lab.up(10, args.net)
    state = Path(args.root) / "controller-state"
    rows = {}
    try:
        for count in (1, 3, 10):
            hosts = [f"host{i}" for i in range(1, count + 1)]
            change, same = [], []
            for run in range(args.runs):
                for h in hosts:
                    lab.config(h, [f"version=b{count}-{run}-{time.time_ns()}"])
                change.append(timed_deploy(lab, state, hosts, args.data))
                same.append(timed_deploy(lab, state, hosts, args.data))
            rows[count] = (statistics.median(change), statistics.median(same), change, same)
            print(f"{count:>2} hosts: change {rows[count][0]:.2f}s  no-change {rows[count][1]:.2f}s  "
                  f"(runs: {', '.join(f'{t:.2f}' for t in change)} / {', '.join(f'{t:.2f}' for t in same)})",
                  flush=True)
    finally:
        lab.destroy()
    print(f"ratio 10 hosts / 1 host: change {rows[10][0] / rows[1][0]:.2f}x, "
          f"no-change {rows[10][1] / rows[1][1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
