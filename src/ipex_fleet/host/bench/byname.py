"""`ipex-benchmark`: the benchmark by the name the seeds give it, with their category flags.

    ipex-benchmark [--quick] [--json] [--tensor-only] [--conv-only] [--sd-only]
                   [--memory-only] [--throughput-only] [--threads N]
                   [--gate [--tolerance 0.15] [--dir DIR]] [--textfile FILE]

The same cases and the same JSON document as `ipex-fleet bench` (it runs that bench); a category
flag keeps only that category's cases, and several flags add up. With `--gate` it judges the run
against the host's baseline and prints the verdict (pass, fail, inconclusive) with its confidence.
"""

from __future__ import annotations

import argparse
import sys

from ipex_fleet.host.bench import __main__ as bench_cli

# Category -> the case-name prefixes of bench.cases that measure it.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "tensor": ("matmul_",),                    # tensor operations: matrix multiplication
    "conv": ("conv3x3_",),                     # convolutions: CNN inference
    "sd": ("sd_unet_step_",),                  # Stable Diffusion: a UNet block step
    "memory": ("mem_copy_", "h2d_", "d2h_"),   # device memory bandwidth and host transfers
    "throughput": ("sd_unet_step_",),          # images per second: UNet steps per second
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipex-benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the short run (at most 30 s on a 2-core CPU)")
    p.add_argument("--json", action="store_true", help="print the bench's JSON document")
    for name in CATEGORIES:
        p.add_argument(f"--{name}-only", dest="categories", action="append_const", const=name,
                       help=f"only the {name} cases ({', '.join(p + '*' for p in CATEGORIES[name])})")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--gate", action="store_true", help="judge the run against the host's baseline")
    p.add_argument("--tolerance", type=float, help="allowed slowdown against the baseline (gated)")
    p.add_argument("--dir", help="where baseline.json and history.jsonl live (gated)")
    p.add_argument("--textfile", help="also write node-exporter textfile metrics to this file")
    return p


def bench_argv(args: argparse.Namespace) -> list[str]:
    """The `ipex-fleet bench` arguments these flags stand for."""
    argv = [flag for flag, on in (("--quick", args.quick), ("--json", args.json)) if on]
    prefixes = sorted({p for c in args.categories or [] for p in CATEGORIES[c]})
    for prefix in prefixes:
        argv += ["--only", prefix]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if args.gate:
        argv.append("--gate")
    for flag, value in (("--tolerance", args.tolerance), ("--dir", args.dir), ("--textfile", args.textfile)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def main(argv: list[str] | None = None) -> int:
    return bench_cli.main(bench_argv(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
