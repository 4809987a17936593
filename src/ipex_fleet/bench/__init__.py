"""`python -m ipex_fleet.bench [--quick] --json`: device-generic benchmarks (the seeds' categories).

Warm up, synchronise, time with device events, report the median of N runs and its cv, with a
fixed seed. `--gate` holds the results against the host's baseline (bench/gate.py).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..device import Device, current_device, device_properties, synchronize, time_runs
from . import cases as case_lib
from .peaks import efficiency

SCHEMA = 1


def cv_bound(device: Device) -> float:
    """Above this spread a measurement is noisy: shared, time-sliced CPUs spread widely; GPUs should not."""
    return 0.20 if device.type == "cpu" else 0.03


def sample_seconds(device: Device) -> float:
    """Each timed sample lasts at least this long: short samples turn scheduler slices into noise."""
    return 0.05


def measure(torch: Any, device: Device, case: case_lib.Case, runs: int, device_name: str) -> dict[str, Any]:
    torch.manual_seed(0)
    one, work_once = case.setup(torch, device)
    single = min(time_runs(torch, device, one, 2, warmup=1))
    repeat = max(1, math.ceil(sample_seconds(device) / max(single, 1e-7)))

    def fn() -> None:
        for _ in range(repeat):
            one()

    work = work_once * repeat
    times = time_runs(torch, device, fn, runs)
    median, cv = case_lib.stats(times)
    if cv > cv_bound(device):  # noisy: measure once more and keep the steadier run
        again = time_runs(torch, device, fn, runs)
        median2, cv2 = case_lib.stats(again)
        if cv2 < cv:
            median, cv = median2, cv2
    value = work / median
    result = {"name": case.name, "dtype": case.dtype, "shape": case.shape, "metric": case.metric,
              "value": round(value, 6), "unit": case.unit, "runs": runs, "median": median / repeat,
              "cv": round(cv, 4), "repeat": repeat}
    eff = efficiency(device_name, case.peak, value)
    if eff is not None:
        result["efficiency"] = eff
    return result


def warm_up(torch: Any, device: Device, seconds: float) -> None:
    """Busy the device for a moment first, so clocks have ramped before the first case."""
    if device.type == "cpu":
        return
    a = torch.randn(4096, 4096, device=device.torch_device, dtype=torch.bfloat16)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(20):
            torch.mm(a, a)
        synchronize(torch, device)


def run(quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    import torch

    started = time.monotonic()
    device = current_device(torch)
    props = device_properties(torch, device)
    name = props[0]["name"] if props else device.type
    runs = 7 if quick else 15
    warm_up(torch, device, seconds=0.5 if quick else 2.0)
    results = []
    for case in case_lib.plan(device, quick):
        if only and not any(case.name.startswith(o) for o in only):
            continue
        results.append(measure(torch, device, case, runs, name))
    return {
        "schema": SCHEMA,
        "device": {"type": device.type, "name": name, "count": len(props), "torch": torch.__version__,
                   "threads": torch.get_num_threads()},
        "quick": quick,
        "duration_s": round(time.monotonic() - started, 3),
        "results": results,
    }
