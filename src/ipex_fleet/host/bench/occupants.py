"""Who else uses the device: listed before measuring, and again when a run looks slow, so that a
verdict can name its likely cause ("the device is shared with pid 4242 python3 ...").

- NVIDIA: NVML (the `pynvml` module of nvidia-ml-py) when importable, else
  `nvidia-smi --query-compute-apps`; with NVML, the device's utilisation too.
- Intel: the processes holding `/dev/dri/renderD*` open (read from /proc; as root, every process).
- CPU: the processes that used more than MIN_CPU of a core over a short window (from /proc), and
  the kernel's CPU pressure (`/proc/pressure/cpu`: the share of the last 10 s in which some task
  waited for a CPU), which also sees what a container cannot list: other containers, other VMs' load
  on the same kernel.

This process and its children are left out. Every path is bounded in time and never raises: a
listing that could not be made says why in `error`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

MIN_CPU = 0.2  # of one core
CPU_WINDOW_S = 0.25
SMI_TIMEOUT_S = 5.0


def _comm(pid: int) -> str:
    """The process's command line, each absolute path shortened to its last part (`python3 cpu-hog.py
    --seconds 300`, not two store paths), at most 120 characters."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        words = []
    args = " ".join(os.path.basename(w.rstrip("/")) if w.startswith("/") else w for w in words if w).strip()
    if not args:
        try:
            args = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            args = "?"
    return args[:120]


def _ours() -> set[int]:
    """This process and its children: never a neighbour of themselves."""
    me = os.getpid()
    mine = {me}
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if int(fields[1]) == me:
                    mine.add(int(entry))
    except OSError:
        pass
    return mine


def nvidia() -> dict[str, Any]:
    ours = _ours()
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            processes, utilisation = [], []
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                try:
                    utilisation.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                except pynvml.NVMLError:
                    pass
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if p.pid in ours:
                        continue
                    used = getattr(p, "usedGpuMemory", None)
                    processes.append({"pid": int(p.pid), "device": i, "name": _comm(p.pid),
                                      "memory_mib": round(used / 2**20) if isinstance(used, int) else None})
            out: dict[str, Any] = {"method": "nvml", "processes": processes}
            if utilisation:
                out["utilisation_percent"] = utilisation
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML here: ask nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {"method": "none", "processes": [], "error": "neither NVML (pynvml) nor nvidia-smi is available"}
    try:
        proc = subprocess.run([smi, "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"method": "nvidia-smi", "processes": [], "error": str(exc)}
    if proc.returncode != 0:
        return {"method": "nvidia-smi", "processes": [],
                "error": (proc.stderr or proc.stdout).strip()[:200] or f"exit {proc.returncode}"}
    processes = []
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit() or int(parts[0]) in ours:
            continue
        pid = int(parts[0])
        processes.append({"pid": pid, "name": _comm(pid) if Path(f"/proc/{pid}").exists() else parts[1],
                          "memory_mib": int(parts[2]) if parts[2].isdigit() else None})
    return {"method": "nvidia-smi", "processes": processes}


def render_nodes(proc_root: str = "/proc") -> dict[str, Any]:
    """Intel (and any DRM device): processes with /dev/dri/renderD* open."""
    ours = _ours()
    processes, unreadable = [], 0
    for entry in os.listdir(proc_root):
        if not entry.isdigit() or int(entry) in ours:
            continue
        fd_dir = f"{proc_root}/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            unreadable += 1
            continue
        nodes = set()
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/dri/renderD"):
                nodes.add(target)
        if nodes:
            processes.append({"pid": int(entry), "name": _comm(int(entry)), "nodes": sorted(nodes)})
    out: dict[str, Any] = {"method": "/proc fds on /dev/dri/renderD*", "processes": processes}
    if unreadable:
        out["unreadable"] = unreadable  # not root: other users' processes stay hidden
    return out


def _cpu_ticks() -> dict[int, int]:
    ticks = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                ticks[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, IndexError, ValueError):
                continue
    return ticks


def cpu(window_s: float = CPU_WINDOW_S) -> dict[str, Any]:
    """Processes busy on the CPU over a short window: what a CPU benchmark shares its cores with."""
    ours = _ours()
    hz = os.sysconf("SC_CLK_TCK")
    before, t0 = _cpu_ticks(), time.monotonic()
    time.sleep(window_s)
    after, elapsed = _cpu_ticks(), time.monotonic() - t0
    processes = []
    for pid, ticks in after.items():
        share = (ticks - before.get(pid, ticks)) / hz / elapsed
        if pid not in ours and share >= MIN_CPU:
            processes.append({"pid": pid, "name": _comm(pid), "cpu": round(share, 2)})
    processes.sort(key=lambda p: -p["cpu"])
    out: dict[str, Any] = {"method": f"/proc cpu time over {window_s:g}s (at least {MIN_CPU:.0%} of a core)",
                           "processes": processes}
    pressure = cpu_pressure()
    if pressure is not None:
        out["pressure"] = pressure
    return out


def cpu_pressure(path: str = "/proc/pressure/cpu") -> float | None:
    """The share of the last 10 s in which some runnable task waited for a CPU (PSI), 0 to 1."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("some "):
                fields = dict(f.split("=", 1) for f in line.split()[1:])
                return round(float(fields["avg10"]) / 100, 3)
    except (OSError, ValueError, KeyError):
        pass
    return None


def scan(device_type: str) -> dict[str, Any]:
    """The other users of this kind of device, never raising."""
    started = time.monotonic()
    try:
        if device_type == "cuda":
            found = nvidia()
        elif device_type == "xpu":
            found = render_nodes()
        else:
            found = cpu()
    except Exception as exc:  # noqa: BLE001 - a listing must never break the benchmark
        found = {"method": "none", "processes": [], "error": f"{type(exc).__name__}: {exc}"}
    found["duration_s"] = round(time.monotonic() - started, 3)
    return found


CONTENDED = 0.2  # CPU pressure from which a CPU run says it shared its cores


def contended_from_outside(found: dict[str, Any] | None) -> bool:
    """The CPU was contended (pressure) while no process this host can list was busy on it: the cause
    is elsewhere (another container or VM on the same kernel), not this host's to answer for."""
    pressure = (found or {}).get("pressure")
    return pressure is not None and pressure >= CONTENDED and not (found or {}).get("processes")


def over(found: dict[str, Any] | None) -> str:
    """The time the pressure covers: the kernel's last 10 s, unless the listing says it measured its own."""
    return (found or {}).get("pressure_over") or "the last 10 s"


def describe(found: dict[str, Any] | None) -> str | None:
    """One line naming the other users, or None when there are none."""
    processes = (found or {}).get("processes") or []
    pressure = (found or {}).get("pressure")
    contended = (f"the CPU is contended (some task waited {pressure:.0%} of {over(found)})"
                 if pressure is not None and pressure >= CONTENDED else None)
    if not processes:
        return contended
    parts = []
    for p in processes[:5]:
        extra = (f" {p['memory_mib']} MiB" if p.get("memory_mib") is not None else
                 f" {p['cpu']:.0%} of a core" if p.get("cpu") is not None else "")
        parts.append(f"pid {p['pid']} {p['name'][:60]}{extra}")
    more = f" and {len(processes) - 5} more" if len(processes) > 5 else ""
    return "the device is shared with " + "; ".join(parts) + more + (f"; {contended}" if contended else "")
