#!/usr/bin/env python3
"""Wall time of the probe (levels 1 and 2) and of the quick bench on a lab host, over SSH,
median of RUNS runs; the quick bench's cv per result.

    .venv/bin/python benchmarks/probe_walltime.py [--runs 5]   (needs a running lab: ipex-fleet lab up 1)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ipex_fleet.lab import Lab  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--host", default="host1")
    args = parser.parse_args()
    lab = Lab()
    tool = f"{sys.executable} -m ipex_fleet"
    for label, command in (("probe level 1", f"{tool} probe --level 1 --json"),
                           ("probe level 2", f"{tool} probe --level 2 --json"),
                           ("quick bench", f"{tool} bench --quick --json --threads 1")):
        times, docs = [], []
        for _ in range(args.runs):
            t0 = time.monotonic()
            out = lab.ssh(args.host, command, timeout=300, check=False)
            times.append(time.monotonic() - t0)
            docs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{label}: median {statistics.median(times):.2f}s (runs: {', '.join(f'{t:.2f}' for t in times)})")
        if label == "quick bench":
            for r in docs[len(docs) // 2]["results"]:
                print(f"    {r['name']:<22} {r['value']:.4g} {r['unit']:<8} cv {r['cv']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
