#!/usr/bin/env python3
"""Lockstep against per-host pace on a mixed fleet: the same change deployed to 3 lab hosts where
host2's activation takes ACTIVATION seconds and host3 downloads a model from a throttled mirror
(about MODEL seconds), host1 neither. With pace=lockstep (each step one pyinfra operation, every
host waiting for the slowest at each step) the slow steps add up; with pace=host (the transaction one
operation per host) each host moves at its own pace. Runs alternate; the medians and their ratio
are printed. Loopback only, on a lab of its own.

    .venv/bin/python benchmarks/pace.py [--runs 3] [--activation 10] [--model 10]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ipex_fleet.lab import Lab  # noqa: E402

RATE = 200_000  # bytes/s from the mirror


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--activation", type=int, default=10)
    parser.add_argument("--model", type=int, default=10)
    parser.add_argument("--root", default="/srv/ipex-fleet-pace")
    parser.add_argument("--net", default="127.0.87")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ipex-fleet-pace-"))
    mirror_dir = work / "mirror"
    mirror_dir.mkdir()
    blob = os.urandom(args.model * RATE)
    (mirror_dir / "slow.safetensors").write_bytes(blob)
    port = free_port()
    mirror = subprocess.Popen([sys.executable, "-m", "ipex_fleet.lab.mirror", "--dir", str(mirror_dir), "--port",
                               str(port), "--rate", str(RATE)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab = Lab(args.root)
    lab.destroy()
    times: dict[str, list[float]] = {"lockstep": [], "host": []}
    try:
        lab.up(3, args.net)
        entry = {"kind": "checkpoints", "name": "slow.safetensors", "url": f"http://127.0.0.1:{port}/slow.safetensors",
                 "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
        inventory = work / "mixed.py"
        inventory.write_text(
            "from ipex_fleet.lab.inventory import lab_hosts\n"
            f"_model = {entry!r}\n"
            f"hosts = [(n, {{**d, 'bench': False, 'health_levels': [1], 'min_free_mb': 64,"
            f" 'trusted_mirrors': ['http://127.0.0.1:'], **({{'models': [_model]}} if n == 'host3' else {{}})}})"
            f" for n, d in lab_hosts({str(lab.layout.root)!r})]\n")
        lab.config("host2", [f"slow_activation={args.activation}"])
        env = {**os.environ, "IPEX_FLEET_LAB_ROOT": str(lab.layout.root), "IPEX_FLEET_STATE": str(work / "state")}
        pyinfra = str(Path(sys.executable).parent / "pyinfra")
        for i in range(args.runs * 2 + 1):
            pace = ("host", "lockstep")[i % 2]
            for h in ("host1", "host2", "host3"):
                lab.config(h, [f"version=pace-{i}-{time.monotonic_ns()}"])
            lab.ssh("host3", "rm -f /var/lib/comfyui/models/checkpoints/slow.safetensors "
                             "/var/lib/comfyui/models/checkpoints/.slow.safetensors*", timeout=30, check=False)
            started = time.monotonic()
            proc = subprocess.run([pyinfra, str(inventory), "deploys/prod.py", "-y", "--data", f"pace={pace}"],
                                  cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            took = time.monotonic() - started
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-2000:])
                raise SystemExit(f"the {pace} deploy failed")
            if i == 0:
                print(f"warm-up ({pace}): {took:.1f} s")
                continue
            times[pace].append(took)
            print(f"run {i}: pace={pace} {took:.1f} s", flush=True)
    finally:
        mirror.terminate()
        lab.destroy()
    lockstep, per_host = statistics.median(times["lockstep"]), statistics.median(times["host"])
    print(f"\nmixed fleet of 3 (host2 activation {args.activation} s, host3 model download ~{args.model} s), "
          f"median of {args.runs}: lockstep {lockstep:.1f} s, per-host pace {per_host:.1f} s "
          f"(per-host/lockstep = {per_host / lockstep:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
