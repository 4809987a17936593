#!/usr/bin/env python3
"""Where one host's change deploy goes: every remote command ipex-fleet runs, with its wall time and
the CPU it took on the host (the host's cgroup), then the same change by the bare script
(benchmarks/overhead.py's: one ssh, unpack, nix build, set the profile, switch) for comparison.

    .venv/bin/python benchmarks/trace_deploy.py [--root DIR] [--net 127.0.76]

On a lab of its own (one host), after a warm-up deploy of each of two versions; pyinfra runs in this
process with ipex_fleet.remote's run, run_fresh and put_bytes wrapped. The heartbeat's renewals run on
their own connection and are not in the list (their CPU is in the total).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import overhead  # noqa: E402
from ipex_fleet.nix.flakepush import flake_hash, flake_tarball  # noqa: E402
from ipex_fleet.lab import Lab, container  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/srv/ipex-fleet-trace")
    parser.add_argument("--net", default="127.0.76")
    args = parser.parse_args()
    lab = Lab(args.root)
    lab.destroy()
    state = Path(args.root) / "controller-state"
    try:
        lab.up(1, args.net)
        spec = lab.spec
        stat = container.unified_cgroup(spec, spec.hosts[0]) / "cpu.stat"

        def host_cpu() -> float:
            return int(stat.read_text().split()[1]) / 1e3  # usage_usec -> ms

        stamp = time.strftime("%H%M%S")
        for label in ("A", "B", "C"):  # warm-up: inputs carried, agent installed, both builds in the store
            overhead.set_version(lab, ["host1"], f"trace-{stamp}-{label}")
            overhead.ipex_fleet_deploy(lab, state, 1, "ok")
        overhead.set_version(lab, ["host1"], f"trace-{stamp}-B")
        # As in overhead.py, every way pushes the flake's bytes: ipex-fleet's copy of B is removed.
        overhead.forget_pushed(lab, ["host1"], flake_hash(str(lab.layout.flake_dir)))
        os.environ.update(overhead.env_for(lab, state))
        os.chdir(REPO)
        import ipex_fleet.remote as remote
        from ipex_fleet.transaction import agentcalls, core, models, system

        log: list[tuple[float, float, float, str, str]] = []
        t0 = time.monotonic()

        def traced(kind: str, fn):
            def call(host, what, *a, **k):
                started, cpu = time.monotonic(), host_cpu()
                try:
                    return fn(host, what, *a, **k)
                finally:
                    text = what if isinstance(what, str) else f"<{len(what)} bytes>"
                    log.append((started - t0, time.monotonic() - started, host_cpu() - cpu, kind,
                                " ".join(text.split())[:96]))
            return call

        core.run = remote.run = traced("run", remote.run)
        core.run_fresh = remote.run_fresh = traced("fresh", remote.run_fresh)
        remote.put_bytes = traced("put", remote.put_bytes)
        for module in (agentcalls, models, system):  # the modules that upload
            module.put_bytes = remote.put_bytes
        from pyinfra_cli.main import main as pyinfra_main

        before = host_cpu()
        sys.argv = ["pyinfra", "inventories/lab.py", "deploys/prod.py", "-y", *overhead.DEPLOY_DATA]
        try:
            pyinfra_main()
        except SystemExit as exc:
            if exc.code:
                raise
        wall, total = time.monotonic() - t0, host_cpu() - before
        print(f"ipex-fleet change deploy of one host: {wall:.2f} s, {total:.0f} ms CPU on the host "
              f"({overhead.load()}); {len(log)} remote commands:")
        for at, took, cpu, kind, text in log:
            print(f"  {at:6.2f} s {took * 1000:6.0f} ms  host CPU {cpu:5.0f} ms  {kind:5} {text}")
        print(f"  host CPU in the commands above {sum(c for *_, c, _k, _t in log):.0f} ms, the rest (logins, "
              f"the heartbeat) {total - sum(c for *_, c, _k, _t in log):.0f} ms")
        overhead.set_version(lab, ["host1"], f"trace-{stamp}-C")
        before, started = host_cpu(), time.monotonic()
        overhead.bare_deploy(lab, ["host1"], flake_tarball(str(lab.layout.flake_dir)))
        print(f"bare script, the same kind of change: {time.monotonic() - started:.2f} s, "
              f"{host_cpu() - before:.0f} ms CPU on the host")
    finally:
        lab.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
