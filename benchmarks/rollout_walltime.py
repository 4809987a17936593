#!/usr/bin/env python3
"""Issue figures for staged rollouts, on a 10-host lab of its own (health level 1 and 2, no bench):

- rollout in waves of 1, 3 and 6 against one all-hosts pyinfra run of the same deploy;
- time from a failed check until the host is checked back on its old generation;
- time for a magic rollback (a generation that locks SSH out);
- binary-cache mode against build-on-target, for 10 hosts.

    .venv/bin/python benchmarks/rollout_walltime.py [--runs 2]
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

from ipex_fleet.lab import Lab  # noqa: E402

BIN = Path(sys.executable).parent


def timed(argv: list[str], env: dict[str, str], expect_ok: bool = True) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=1800)
    elapsed = time.monotonic() - started
    if expect_ok and proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout[-3000:]}")
    return elapsed, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--root", default="/srv/ipex-fleet-bench-rollout")
    parser.add_argument("--net", default="127.0.41")
    args = parser.parse_args()
    lab = Lab(args.root)
    lab.destroy()
    lab.up(10, args.net)
    state = Path(args.root) / "controller-state"
    inventory = Path(args.root) / "fleet.py"
    inventory.write_text(
        "from ipex_fleet.lab.inventory import lab_hosts\n"
        f"hosts = [(n, {{**d, 'bench': False, 'min_free_mb': 64, 'command_timeout': 20, 'activation_timeout': 10,"
        f" 'confirm_timeout': 5}}) for n, d in lab_hosts({args.root!r})]\n")
    env = {**os.environ, "IPEX_FLEET_LAB_ROOT": args.root, "IPEX_FLEET_STATE": str(state)}
    hosts = [f"host{i}" for i in range(1, 11)]

    def bump() -> None:
        version = f"b{time.time_ns()}"
        for h in hosts:
            lab.config(h, [f"version={version}"])

    try:
        flat, waved, target, cache = [], [], [], []
        for _ in range(args.runs):
            bump()
            flat.append(timed([str(BIN / "pyinfra"), str(inventory), "deploys/prod.py", "-y"], env)[0])
            bump()
            waved.append(timed([str(BIN / "ipex-fleet"), "rollout", str(inventory), "deploys/prod.py",
                                "--waves", "1,3,6"], env)[0])
            bump()
            target.append(timed([str(BIN / "pyinfra"), str(inventory), "deploys/prod.py", "-y"], env)[0])
            bump()
            cache.append(timed([str(BIN / "pyinfra"), str(inventory), "deploys/prod.py", "-y", "--data",
                                "build=controller"], env)[0])
        f, w = statistics.median(flat), statistics.median(waved)
        print(f"10 hosts, one pyinfra run: {f:.1f}s; rollout in waves 1,3,6: {w:.1f}s; ratio {w / f:.2f}x "
              f"(runs {[round(x, 1) for x in flat]} / {[round(x, 1) for x in waved]})")
        t, c = statistics.median(target), statistics.median(cache)
        print(f"10 hosts, build on target: {t:.1f}s; binary cache: {c:.1f}s; ratio cache/target {c / t:.2f}x "
              f"(runs {[round(x, 1) for x in target]} / {[round(x, 1) for x in cache]})")

        def result_of(output: str, host: str) -> dict:
            run_id = sorted((state / "runs").iterdir(), key=lambda p: p.stat().st_mtime)[-1].name
            return json.loads((state / "runs" / run_id / "hosts" / f"{host}.json").read_text())

        bump()
        lab.config("host1", ["fail_service=ollama"])
        _, out = timed([str(BIN / "pyinfra"), str(inventory), "deploys/prod.py", "-y", "--limit", "host1"], env,
                       expect_ok=False)
        r = result_of(out, "host1")
        print(f"failed check -> back on the old generation, checked on the host: {r['timings']['rollback']:.2f}s; "
              f"and re-probed there: {r['timings']['recheck']:.2f}s (status {r['status']})")
        lab.config("host1", ["fail_service="])
        lab.config("host2", ["lock_ssh=true"])
        elapsed, out = timed([str(BIN / "pyinfra"), str(inventory), "deploys/prod.py", "-y", "--limit", "host2"], env,
                             expect_ok=False)
        r = result_of(out, "host2")
        print(f"magic rollback (activation_timeout 10s, confirm_timeout 5s): host back and checked "
              f"{r['timings'].get('magic_rollback', float('nan')):.1f}s after activation began; whole run {elapsed:.1f}s "
              f"(status {r['status']})")
    finally:
        lab.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
