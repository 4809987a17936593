"""Device-generic torch helpers: one code path for xpu, cuda and cpu (torch.accelerator)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

ENVIRONMENT_FILE = "/etc/ipex-fleet/environment"


def load_generation_environment(path: str = ENVIRONMENT_FILE) -> dict[str, str]:
    """Apply the generation's environment (KEY=VALUE lines), as systemd's EnvironmentFile would.

    Must run before torch is imported: device visibility variables are read at import.
    """
    applied: dict[str, str] = {}
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        return applied
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            os.environ[key] = value
            applied[key] = value
    return applied


@dataclass(frozen=True)
class Device:
    type: str  # xpu | cuda | cpu
    index: int | None

    @property
    def torch_device(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def current_device(torch: Any) -> Device:
    acc = getattr(torch, "accelerator", None)
    dev = acc.current_accelerator() if acc is not None and acc.is_available() else None
    if dev is None:
        return Device("cpu", None)
    return Device(dev.type, 0)


def device_count(torch: Any, device: Device) -> int:
    if device.type == "cpu":
        return 1
    return int(torch.accelerator.device_count())


def synchronize(torch: Any, device: Device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize()


def device_properties(torch: Any, device: Device) -> list[dict[str, Any]]:
    if device.type == "cpu":
        model = "cpu"
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return [{"index": None, "name": model, "cores": len(os.sched_getaffinity(0)),
                 "threads": torch.get_num_threads()}]
    module = getattr(torch, device.type)
    out = []
    for i in range(device_count(torch, device)):
        p = module.get_device_properties(i)
        props = {"index": i, "name": p.name, "total_memory": int(p.total_memory)}
        for attr in ("driver_version", "has_fp64", "major", "minor", "multi_processor_count",
                     "max_compute_units", "gpu_eu_count", "platform_name"):
            if hasattr(p, attr):
                value = getattr(p, attr)
                props[attr] = value if isinstance(value, (int, float, bool, str)) else str(value)
        # For the metrics: memory in use and temperature, where this torch can tell.
        try:
            free, total = module.mem_get_info(i)
            props["memory_used"] = int(total - free)
        except Exception:  # noqa: BLE001 - not every backend or driver answers
            pass
        try:
            props["temperature_c"] = float(module.temperature(i))
        except Exception:  # noqa: BLE001 - torch.cuda.temperature needs pynvml
            pass
        out.append(props)
    return out


def time_runs(torch: Any, device: Device, fn: Callable[[], Any], runs: int, warmup: int = 2) -> list[float]:
    """Seconds per call: warm up, synchronise, time with device events (wall clock on cpu).

    The first timed run is discarded, as good practice says.
    """
    for _ in range(warmup):
        fn()
    synchronize(torch, device)
    times: list[float] = []
    use_events = device.type != "cpu" and hasattr(torch, "Event")
    for _ in range(runs + 1):
        if use_events:
            start = torch.Event(enable_timing=True)
            end = torch.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            synchronize(torch, device)
            times.append(time.perf_counter() - t0)
    return times[1:]


def capture_graph(torch: Any, device: Device, fn: Callable[[], Any], warmup: int = 3) -> Callable[[], Any] | None:
    """`fn` captured once as a device graph (torch.cuda.CUDAGraph, torch.xpu.XPUGraph where this torch has
    it) and returned as its replay: one launch instead of one per kernel, so the host's launch rate and
    jitter leave the measurement. None on the CPU, or where this torch or driver cannot capture `fn`."""
    if device.type == "cpu":
        return None
    module = getattr(torch, device.type, None)
    graph_type = getattr(module, "CUDAGraph", None) or getattr(module, "XPUGraph", None)
    if graph_type is None or not hasattr(module, "graph") or not hasattr(module, "Stream"):
        return None
    try:
        side = module.Stream()
        side.wait_stream(module.current_stream())
        with module.stream(side):  # capture wants its allocations and lazy inits done first, off the main stream
            for _ in range(warmup):
                fn()
        module.current_stream().wait_stream(side)
        graph = graph_type()
        with module.graph(graph):
            fn()
        graph.replay()
        synchronize(torch, device)
        return graph.replay
    except Exception:  # noqa: BLE001 - not capturable here (an op, a driver): measure it eagerly
        try:
            synchronize(torch, device)
        except Exception:  # noqa: BLE001
            pass
        return None


def time_samples(torch: Any, device: Device, fn: Callable[[], Any], repeat: int, count: int,
                 deadline: float | None = None, chunk: int = 8) -> list[float]:
    """Seconds of up to `count` samples of `repeat` calls each, timed with device events (wall clock on cpu).

    On a device the samples are queued back to back, the next chunk before the last one is read, so
    the device never waits for the host between samples. Past `deadline` (time.monotonic()) no new
    chunk is queued; at least one chunk is always taken.
    """
    times: list[float] = []
    if device.type == "cpu" or not hasattr(torch, "Event"):
        for _ in range(count):
            t0 = time.perf_counter()
            for _ in range(repeat):
                fn()
            synchronize(torch, device)
            times.append(time.perf_counter() - t0)
            if deadline is not None and time.monotonic() > deadline and len(times) >= min(chunk, count):
                break
        return times

    def enqueue(n: int) -> list[tuple[Any, Any]]:
        pairs = []
        for _ in range(n):
            start, end = torch.Event(enable_timing=True), torch.Event(enable_timing=True)
            start.record()
            for _ in range(repeat):
                fn()
            end.record()
            pairs.append((start, end))
        return pairs

    queued = enqueue(min(chunk, count))
    left = count - len(queued)
    while queued:
        upcoming: list[tuple[Any, Any]] = []
        if left > 0 and (deadline is None or time.monotonic() <= deadline):
            upcoming = enqueue(min(chunk, left))
            left -= len(upcoming)
        queued[-1][1].synchronize()
        times += [start.elapsed_time(end) / 1000.0 for start, end in queued]
        queued = upcoming
    return times
