#!/usr/bin/env python3
"""What a change deploy costs each host's CPU, ipex-fleet against the bare script, for one host alone
and for ten at once: whether the difference is the safety net's own bill or comes from ten hosts
beside each other on two cores.

    .venv/bin/python benchmarks/per_host_cpu.py [--hosts 10] [--rounds 3] [--root DIR] [--net 127.0.78]

On a lab of its own; after a warm-up deploy of two versions A and B (both builds in every host's
store), each round deploys ipex-fleet to host1 alone (`--limit host1`), the bare script to host1
alone, ipex-fleet to every host, the bare script to every host, each a change (A and B alternate) that
pushes the same flake bytes (ipex-fleet's pushed copy is removed first, as in overhead.py). Each line
gives the wall time and the hosts' CPU (their cgroups) divided by the hosts deployed.
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
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import overhead  # noqa: E402
from ipex_fleet.lab import Lab, container  # noqa: E402
from ipex_fleet.nix.flakepush import flake_hash, flake_tarball  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", default="/srv/ipex-fleet-per-host-cpu")
    parser.add_argument("--net", default="127.0.78")
    args = parser.parse_args()
    lab = Lab(args.root)
    lab.destroy()
    state = Path(args.root) / "controller-state"
    shutil.rmtree(state, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores; {overhead.load()} at the start", flush=True)
    try:
        lab.up(args.hosts, args.net)
        hosts = lab.spec.hosts[:args.hosts]
        names = [h.name for h in hosts]
        stats = {h.name: container.unified_cgroup(lab.spec, h) / "cpu.stat" for h in hosts}

        def cpu_ms(on: list[str]) -> float:
            return sum(int(stats[n].read_text().split()[1]) for n in on) / 1e3  # usage_usec

        flakes: dict[str, tuple[bytes, str]] = {}
        stamp = time.strftime("%H%M%S")
        for label in ("A", "B"):  # warm-up: both builds in every store, the agent installed
            overhead.set_version(lab, names, f"per-host-{stamp}-{label}")
            flakes[label] = (flake_tarball(str(lab.layout.flake_dir)), flake_hash(str(lab.layout.flake_dir)))
            overhead.ipex_fleet_deploy(lab, state, len(names), "ok")
        on = {n: "B" for n in names}

        def prepare_ipex_fleet(to: list[str]) -> Callable[[], None]:
            """The version set and ipex-fleet's pushed copy removed (logins of their own, not measured);
            returns the deploy."""
            label = "A" if on[to[0]] == "B" else "B"
            overhead.set_version(lab, to, f"per-host-{stamp}-{label}")
            overhead.forget_pushed(lab, to, flakes[label][1])
            argv = [str(overhead.BIN / "pyinfra"), "inventories/lab.py", "deploys/prod.py", "-y", *overhead.DEPLOY_DATA,
                    *(["--limit", to[0]] if len(to) == 1 else [])]

            def deploy() -> None:
                proc = subprocess.run(argv, cwd=REPO, env=overhead.env_for(lab, state), capture_output=True, text=True,
                                      timeout=900)
                overhead.checked(proc, "ipex-fleet deploy", ("ok",), len(to))
                on.update({n: label for n in to})
            return deploy

        def prepare_bare(to: list[str]) -> Callable[[], None]:
            label = "A" if on[to[0]] == "B" else "B"

            def deploy() -> None:
                overhead.bare_deploy(lab, to, flakes[label][0])
                on.update({n: label for n in to})
            return deploy

        figures: dict[tuple[str, int], list[float]] = {}
        for rnd in range(1, args.rounds + 1):
            for to in (names[:1], names):
                for method, prepare in (("ipex-fleet", prepare_ipex_fleet), ("bare", prepare_bare)):
                    deploy = prepare(to)
                    before, started = cpu_ms(to), time.monotonic()
                    deploy()
                    wall, per_host = time.monotonic() - started, (cpu_ms(to) - before) / len(to)
                    figures.setdefault((method, len(to)), []).append(per_host)
                    print(f"  round {rnd} {method:10} {len(to):2} host(s): {wall:5.2f} s, {per_host:4.0f} ms of CPU a host "
                          f"({overhead.load()})", flush=True)
        print(f"\nmedians of {args.rounds}, host CPU a host of one change deploy:")
        for count in (1, len(names)):
            ipex, plain = (statistics.median(figures[(m, count)]) for m in ("ipex-fleet", "bare"))
            print(f"  {count:2} host(s) at once: ipex-fleet {ipex:.0f} ms, bare {plain:.0f} ms, "
                  f"{ipex - plain:.0f} ms more ({ipex / plain:.2f}x)")
    finally:
        lab.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
