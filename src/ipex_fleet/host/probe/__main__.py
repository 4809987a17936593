"""python -m ipex_fleet.host.probe --level 1|2|3 [--json] [--accelerator xpu|cuda|cpu|any] ..."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ipex_fleet.host import fleetconfig
from ipex_fleet.host.device import load_generation_environment


def _level(text: str) -> int | str:
    if text == "config":
        return text
    if text in ("1", "2", "3"):
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: use 1, 2, 3 or config")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipex-fleet probe", description=__doc__)
    p.add_argument("--level", type=_level, default=1,
                   help="1, 2 or 3; or config: the highest of the fleet config's health levels")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--accelerator", choices=fleetconfig.ACCELERATORS,
                   help="what must be present (default: the fleet config's, else any)")
    p.add_argument("--min-devices", type=int, help="how many devices of it (default: the fleet config's, else 1)")
    p.add_argument("--expect-system", help="the store path that should be /run/current-system")
    p.add_argument("--smoke-model", help="Ollama model for the level-2 generation")
    p.add_argument("--config", default=fleetconfig.CONFIG_FILE, help="the fleet config written by the flake")
    p.add_argument("--memory-fraction", type=float, help="fraction of free device memory to allocate (level 2)")
    p.add_argument("--min-free-mb", type=int, default=1024, help="free space needed on model paths")
    p.add_argument("--bench-dir", default="/var/lib/ipex-fleet/bench",
                   help="the benchmark's baseline (level 3) and, under ollama/, the tokens/s baseline (level 2)")
    p.add_argument("--tolerance", type=float,
                   help="allowed tokens/s slowdown against the baseline (default: the fleet config's, else 0.15)")
    p.add_argument("--rebaseline", action="store_true",
                   help="record a new tokens/s baseline on a healthy host (the old one is kept in the history)")
    p.add_argument("--lock", help="flock this file while measuring tokens/s (hosts sharing one machine)")
    p.add_argument("--textfile", help="also write node-exporter textfile metrics to this file")
    p.add_argument("--junit", help="also write the checks as JUnit XML to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = fleetconfig.load(args.config)
    except fleetconfig.FleetConfigError as exc:
        print(f"ipex-fleet probe: error: {args.config}: {exc}", file=sys.stderr)
        return 2
    load_generation_environment()  # before torch is imported, as the services see it
    from ipex_fleet.host.probe import run
    from ipex_fleet.host.probe.checks import Expectations

    if args.level == "config":
        policy = config.health.levels if config else tuple(fleetconfig.DEFAULTS["health"]["levels"])
        args.level = max(policy, default=0)  # an empty policy runs no check
    fraction = args.memory_fraction if args.memory_fraction is not None else (
        config.health.memory_fraction if config else 0.5)
    if not 0 < fraction <= 0.95:
        print("ipex-fleet probe: error: --memory-fraction must lie in (0, 0.95]", file=sys.stderr)
        return 2
    tolerance = args.tolerance if args.tolerance is not None else (
        config.health.bench_tolerance if config else fleetconfig.DEFAULTS["health"]["bench_tolerance"])
    if not 0 < tolerance < 1:
        print("ipex-fleet probe: error: --tolerance must lie between 0 and 1, e.g. 0.15", file=sys.stderr)
        return 2
    exp = Expectations(
        accelerator=args.accelerator or (config.accelerator if config else "any"),
        min_devices=args.min_devices or (config.min_devices if config else 1),
        config=config, expect_system=args.expect_system, smoke_model=args.smoke_model,
        memory_fraction=fraction, min_free_mb=args.min_free_mb,
        bench_dir=args.bench_dir, tolerance=tolerance, rebaseline=args.rebaseline, lock=args.lock,
    )
    extra = []
    if args.level >= 3:
        from ipex_fleet.host.probe.performance import performance_check

        extra.append(("performance", 3, performance_check(args.bench_dir, config), 900))
    document = run(args.level, exp, extra)
    if args.textfile:
        from ipex_fleet.host.metrics import probe_metrics, write

        write(args.textfile, probe_metrics(document))
    if args.junit:
        from ipex_fleet.common import junit

        junit.write(args.junit, [junit.probe_suite(document)])
    if args.json:
        print(json.dumps(document))
    else:
        for c in document["checks"]:
            print(f"{c['result'].upper():<5} L{c['level']} {c['name']:<16} {c['message']}")
        print(f"result: {document['result']}")
    sys.stdout.flush()
    # A check left hanging in a driver call must not keep the process alive.
    os._exit(1 if document["result"] == "fail" else 0)


if __name__ == "__main__":
    main()
