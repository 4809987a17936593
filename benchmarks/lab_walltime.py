"""Figures of the systemd lab: `lab up N` from a cold and a warm template cache, one host's boot and
reboot, and the memory an idle host takes. Prints figures; one run (these machines are noisy).

    python benchmarks/lab_walltime.py [--hosts 10] [--skip-cold]

The cold run builds the root filesystem into a temporary cache directory (debootstrap, needs
Debian's mirror), so the machine's own cache is neither used nor touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from ipex_fleet.lab import Lab, container

ROOT = "/srv/ipex-fleet-bench-lab"
NET = "127.0.60"


def timed(label: str, fn) -> float:
    started = time.monotonic()
    fn()
    took = time.monotonic() - started
    print(f"{label}: {took:.2f} s", flush=True)
    return took


def pss_kib(pids: list[int]) -> int:
    """Proportional set size: each shared page counted once across the processes that map it."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def boot_time(lab: Lab, name: str) -> float:
    """From a powered-off host to sshd answering with its banner."""
    spec = lab.spec
    host = spec.host(name)
    pid = container.stop(lab.layout, spec, host)
    container.wait_gone([pid] if pid else [], 20)
    from ipex_fleet.lab import template

    started = time.monotonic()
    container.start(lab.layout, spec, host, template.template_dir(), *lab._binds())
    while time.monotonic() - started < 60:
        try:
            with socket.create_connection((host.address, 22), timeout=0.5) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"{name} did not boot within 60 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--skip-cold", action="store_true")
    args = p.parse_args()
    lab = Lab(ROOT)
    lab.destroy()
    if not args.skip_cold:
        cold_cache = tempfile.mkdtemp(prefix="ipex-fleet-cold-cache-", dir="/srv")
        os.environ["IPEX_FLEET_LAB_CACHE"] = cold_cache
        try:
            timed(f"lab up {args.hosts}, cold cache (debootstrap included)", lambda: lab.up(args.hosts, NET))
            timed("lab destroy", lab.destroy)
        finally:
            del os.environ["IPEX_FLEET_LAB_CACHE"]
            shutil.rmtree(cold_cache, ignore_errors=True)
    Lab(ROOT).up(1, NET)  # make sure the machine's cache is built, then start from nothing
    lab.destroy()
    timed(f"lab up {args.hosts}, warm cache", lambda: lab.up(args.hosts, NET))
    try:
        time.sleep(5)  # let every host settle to idle
        spec = lab.spec
        per_host = [pss_kib(container.host_pids(spec, h)) for h in spec.hosts]
        procs = [len(container.host_pids(spec, h)) for h in spec.hosts]
        print(f"memory per idle host (PSS of its processes): median {sorted(per_host)[len(per_host) // 2] / 1024:.1f}"
              f" MiB, {min(procs)}-{max(procs)} processes", flush=True)
        print(f"one host's boot, power-off to sshd banner: {boot_time(lab, 'host1'):.2f} s", flush=True)
        before = lab.boot_id("host1")
        started = time.monotonic()
        lab.reboot("host1")
        print(f"one host's reboot, to a new boot id over SSH: {time.monotonic() - started:.2f} s "
              f"(boot id changed: {lab.boot_id('host1') != before})", flush=True)
        print(f"packets off loopback: {lab.leaks()['leaks']}")
    finally:
        timed("lab destroy", lab.destroy)


if __name__ == "__main__":
    main()
