"""python -m ipex_fleet.bench [--quick] [--json] [--gate --tolerance 0.15 --dir DIR]"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
from contextlib import nullcontext
from pathlib import Path

from .. import fleetconfig
from ..device import load_generation_environment
from ..results import write_json_atomic
from . import gate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipex-fleet bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="the post-deploy run (at most 30 s on a 2-core CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--only", action="append", help="run only cases whose name starts with this")
    p.add_argument("--gate", action="store_true", help="hold results against the baseline in --dir")
    p.add_argument("--tolerance", type=float,
                   help="allowed slowdown against the baseline (default: the fleet config's, else 0.15)")
    p.add_argument("--config", default=fleetconfig.CONFIG_FILE, help="the fleet config written by the flake")
    p.add_argument("--dir", default=gate.BENCH_DIR, help="baseline.json and history.jsonl live here")
    p.add_argument("--rebaseline", action="store_true", help="make this run the new baseline")
    p.add_argument("--lock", help="flock this file while measuring (hosts sharing one machine)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--textfile", help="also write node-exporter textfile metrics to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tolerance is None:
        try:
            config = fleetconfig.load(args.config)
        except fleetconfig.FleetConfigError as exc:
            print(f"ipex-fleet bench: error: {args.config}: {exc}", file=sys.stderr)
            return 2
        args.tolerance = config.health.bench_tolerance if config else fleetconfig.DEFAULTS["health"]["bench_tolerance"]
    if not 0 < args.tolerance < 1:
        print("ipex-fleet bench: error: --tolerance must lie between 0 and 1, e.g. 0.15", file=sys.stderr)
        return 2
    load_generation_environment()
    if args.threads is not None:
        if args.threads < 1:
            print("ipex-fleet bench: error: --threads must be at least 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    from . import cv_bound, run
    from ..device import Device

    with open(args.lock, "a") if args.lock else nullcontext() as lock:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        document = run(args.quick, args.only)
    verdict = "pass"
    if args.gate or args.rebaseline:
        baseline = gate.read_baseline(args.dir)
        if args.rebaseline:
            if baseline is not None:  # the old baseline stays in the history
                gate.archive_baseline(args.dir, baseline)
            baseline = None
        bound = cv_bound(Device(document["device"]["type"], None))
        if baseline is None or not gate.same_hardware(baseline.get("device") or {}, document["device"]):
            # No baseline, or one taken on other hardware or thread count: start anew. A new torch
            # on the same hardware is compared, so that its regressions show (--rebaseline accepts them).
            write_json_atomic(Path(args.dir) / "baseline.json",
                                   {"device": document["device"], "quick": document["quick"],
                                    "results": {r["name"]: r["value"] for r in document["results"]}})
            document["gate"] = {"result": "pass", "baseline_recorded": True, "tolerance": args.tolerance,
                                "comparisons": []}
        else:
            comparisons = gate.compare(document["results"], baseline, args.tolerance, bound)
            # Noise only ever slows a run: confirm a slowdown twice more and keep the best value.
            for _ in range(2):
                failed = [c["name"] for c in comparisons if c["verdict"] == "fail"]
                if not failed:
                    break
                retry = {r["name"]: r for r in run(args.quick, failed)["results"]}
                document["results"] = [
                    retry[r["name"]] if r["name"] in retry and retry[r["name"]]["value"] > r["value"] else r
                    for r in document["results"]
                ]
                comparisons = gate.compare(document["results"], baseline, args.tolerance, bound)
            verdict = gate.verdict_of(comparisons)
            document["gate"] = {"result": verdict, "baseline_recorded": False, "tolerance": args.tolerance,
                                "cv_bound": bound, "comparisons": comparisons}
            if baseline["device"].get("torch") != document["device"].get("torch"):
                document["gate"]["torch_changed"] = {"baseline": baseline["device"].get("torch"),
                                                     "now": document["device"].get("torch")}
        gate.append_history(args.dir, document, verdict)
    if args.textfile:
        from ..metrics import bench_metrics, write

        write(args.textfile, bench_metrics(document))
    if args.json:
        print(json.dumps(document))
    else:
        for r in document["results"]:
            eff = f"  {r['efficiency']:.0%} of peak" if "efficiency" in r else ""
            print(f"{r['name']:<24} {r['value']:>12.4f} {r['unit']:<8} cv {r['cv']:.1%}{eff}")
        if "gate" in document:
            print(f"gate: {document['gate']['result']}")
    return 1 if verdict == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
