#!/usr/bin/env python3
"""What the host-side journal costs: a change deploy to N lab hosts with this tree against an earlier
revision of the tool (default: the last one before the journal), on the same lab, alternating.

    .venv/bin/python benchmarks/journal_cost.py [--ref 63a7191] [--hosts 10] [--runs 2]

The earlier revision runs from a git worktree (its own deploys/, roles/ and src/ through PYTHONPATH);
both use the same lab and the same health levels (bench off, so only the transaction differs).
Prints each run's wall time and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ipex_fleet.lab import Lab  # noqa: E402

ROOT = "/srv/ipex-fleet-bench-journal"
NET = "127.0.61"


def change_deploy(lab: Lab, tree: Path, state: Path, count: int) -> float:
    version = f"j{time.monotonic_ns()}"
    for host in lab.spec.hosts[:count]:
        lab.config(host.name, [f"version={version}"])
    env = {**os.environ, "IPEX_FLEET_LAB_ROOT": str(lab.layout.root), "IPEX_FLEET_STATE": str(state),
           "PYTHONPATH": str(tree / "src")}
    started = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "pyinfra"), "inventories/lab.py", "deploys/prod.py",
                           "-y", "--data", "bench=false"], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=900)
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr  # pyinfra logs host lines to stderr
    if proc.returncode != 0 or output.count(" ok: generation") != count:
        raise SystemExit(f"deploy from {tree} failed:\n{output[-3000:]}")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ref", default="63a7191", help="the earlier revision")
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    old_tree = Path(f"/srv/ipex-fleet-ref-{args.ref}")
    if old_tree.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO)
    subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.ref], cwd=REPO, check=True,
                   capture_output=True)
    lab = Lab(ROOT)
    lab.destroy()
    state = Path(ROOT + "-state")
    shutil.rmtree(state, ignore_errors=True)
    try:
        lab.up(args.hosts, NET)
        change_deploy(lab, REPO, state, args.hosts)  # warm both the hosts' stores and the caches
        times: dict[str, list[float]] = {"earlier": [], "this": []}
        for _ in range(args.runs):
            for name, tree in (("earlier", old_tree), ("this", REPO)):
                took = change_deploy(lab, tree, state, args.hosts)
                times[name].append(took)
                print(f"{name:8} change deploy, {args.hosts} hosts: {took:.2f} s", flush=True)
        old, new = statistics.median(times["earlier"]), statistics.median(times["this"])
        print(f"median: earlier ({args.ref}) {old:.2f} s, this tree {new:.2f} s; ratio this/earlier {new / old:.2f}x")
    finally:
        lab.destroy()
        shutil.rmtree(state, ignore_errors=True)
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO, capture_output=True)


if __name__ == "__main__":
    main()
