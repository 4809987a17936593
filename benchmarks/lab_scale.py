#!/usr/bin/env python3
"""The lab at 40 and 100 hosts: `lab up N` from a warm cache (where its seconds go), the kernel
limits it raised, the memory the hosts take, then deploys with nothing to change (wall time and the
controller's peak RSS), and `lab destroy`. One run per size: these machines are noisy.

    .venv/bin/python benchmarks/lab_scale.py [--hosts 40 100] [--root DIR] [--net 127.0.79]

Its lab is its own (default /srv/ipex-fleet-scale-bench on 127.0.79), destroyed before and after.
The deploys are `pyinfra inventories/lab.py deploys/prod.py -y --data bench=false`, run under
/usr/bin/time -v: "Maximum resident set size" is pyinfra's own peak (its ssh children are smaller).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ipex_fleet.lab import Lab, container, install, limits, template  # noqa: E402
from ipex_fleet.lab import fleet as labfleet  # noqa: E402


class Phases:
    """Wall time of lab up's phases: first start to last end of each wrapped step (they overlap in threads)."""

    STEPS = ((labfleet.Lab, "_prepare_host", "prepare each host's overlay (keys, units; threads)"),
             (install, "build", "build every first generation (controller, one evaluation)"),
             (install, "install", "copy each closure into its host's store (threads)"),
             (container, "start", "start each host's supervisor"),
             (labfleet.Lab, "_boot", "boot every host (to its READY=1) and log in to each"),
             (labfleet.Lab, "_login", "the logins, from each host's READY=1 on"))

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.saved = []
        for owner, name, _ in self.STEPS:
            original = getattr(owner, name)
            self.saved.append((owner, name, original))
            setattr(owner, name, self._wrap(name, original))

    def _wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.monotonic()
                with self.lock:
                    span = self.spans.setdefault(name, [start, end, 0.0, 0])
                    span[0], span[1] = min(span[0], start), max(span[1], end)
                    span[2] += end - start
                    span[3] += 1
        return timed

    def report(self, t0: float) -> None:
        for _owner, name, label in self.STEPS:
            if name in self.spans:
                start, end, total, n = self.spans[name]
                print(f"    {start - t0:5.1f} s -> {end - t0:5.1f} s  {label} (x{n}, {total:.1f} s summed)")

    def restore(self) -> None:
        for owner, name, original in self.saved:
            setattr(owner, name, original)


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])
    return out


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def in_use() -> dict[str, int]:
    """What the whole machine uses now of each resource the lab's limits bound (and of keys and ptys)."""
    instances: dict[int, int] = {}
    watches = tasks = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            uid = int(next(l for l in (proc / "status").read_text().splitlines() if l.startswith("Uid:")).split()[1])
            tasks += len(os.listdir(proc / "task"))
            for fd in os.listdir(proc / "fd"):
                if os.readlink(proc / "fd" / fd) == "anon_inode:inotify":
                    instances[uid] = instances.get(uid, 0) + 1
                    watches += (proc / "fdinfo" / fd).read_text().count("inotify wd:")
        except (OSError, StopIteration):
            continue
    keys = sum(int(line.split()[2].split("/")[0]) for line in Path("/proc/key-users").read_text().splitlines())
    return {"inotify instances (root)": instances.get(0, 0), "inotify instances (all users)": sum(instances.values()),
            "inotify watches": watches, "tasks (processes and threads)": tasks, "keys": keys,
            "ptys": int(Path("/proc/sys/kernel/pty/nr").read_text())}


def cpu_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = os.sysconf("SC_CLK_TCK")
    busy = sum(int(f) for i, f in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
    return busy / ticks


PEAKS: list[dict[str, int]] = []


def deploy(lab: Lab, state: Path, count: int, sample: bool = False) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in KiB, summary) of one deploy of every host; with `sample`, what
    the machine uses meanwhile is sampled each second (which costs a little CPU) into PEAKS."""
    env = {**os.environ, "IPEX_FLEET_LAB_ROOT": str(lab.layout.root), "IPEX_FLEET_STATE": str(state)}
    argv = ["/usr/bin/time", "-v", str(Path(sys.executable).parent / "pyinfra"), "inventories/lab.py",
            "deploys/prod.py", "-y", "--data", "bench=false"]
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:  # what the deploy's logins, Nix and Python add, at its peak
        while sample and not done.wait(1.0):
            for key, value in in_use().items():
                peaks[key] = max(peaks.get(key, 0), value)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        done.set()
        sampler.join()
    wall = time.monotonic() - started
    PEAKS.append(peaks)
    output = proc.stdout + proc.stderr
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    unchanged = output.count(" unchanged: generation")
    if proc.returncode != 0 or unchanged != count:
        raise SystemExit(f"deploy: exit {proc.returncode}, {unchanged} of {count} hosts unchanged:\n{output[-3000:]}")
    return wall, int(rss.group(1)) if rss else -1, f"{unchanged} unchanged"


def one_size(lab: Lab, net: str, count: int) -> dict:
    lab.destroy()
    before_mem, before_cpu, before_use = meminfo(), cpu_seconds(), in_use()
    said: list[str] = []
    phases = Phases()
    t0 = time.monotonic()
    try:
        lab.up(count, net, say=said.append)
    finally:
        phases.restore()
    took = time.monotonic() - t0
    cpu = cpu_seconds() - before_cpu
    print(f"lab up {count}: {took:.1f} s from a warm cache ({cpu:.0f} CPU-seconds on {os.cpu_count()} cores)")
    phases.report(t0)
    print(f"  kernel limits: {said[0] if said else 'nothing to raise (already enough)'}")
    machine_hosts = count + container.running_hosts_elsewhere(lab.spec)
    for limit in limits.LIMITS:
        print(f"    {limit.key}: {machine_hosts} lab host(s) need {limit.needed(machine_hosts)}, "
              f"it is {limits.read(limit)}")
    time.sleep(5)  # let boots settle before measuring memory
    spec = lab.spec
    pids = [p for h in spec.hosts for p in container.host_pids(spec, h)]
    after_mem = meminfo()
    used = (before_mem["MemAvailable"] - after_mem["MemAvailable"]) / 1024
    pss = pss_mib(pids)
    print(f"  memory: {used:.0f} MiB less available on the machine; the hosts' {len(pids)} processes: "
          f"{pss:.0f} MiB PSS ({pss / count:.1f} MiB a host)")
    now = in_use()
    print("  in use on the whole machine, idle lab (before it / now): "
          + ", ".join(f"{k} {before_use[k]} / {v}" for k, v in now.items()), flush=True)
    state = lab.layout.root / "controller-state"
    first = deploy(lab, state, count, sample=True)
    print(f"  first deploy after lab up (sampled): {first[0]:.1f} s, controller peak RSS {first[1] / 1024:.0f} MiB ({first[2]})")
    again = deploy(lab, state, count)
    print(f"  no-change deploy: {again[0]:.1f} s, controller peak RSS {again[1] / 1024:.0f} MiB ({again[2]})")
    peaks = PEAKS[-2]
    print("  in use on the whole machine, at the first deploy's peak (sampled each second): "
          + ", ".join(f"{k} {v}" for k, v in peaks.items()), flush=True)
    t1 = time.monotonic()
    lab.destroy()
    print(f"  lab destroy: {time.monotonic() - t1:.1f} s", flush=True)
    return {"hosts": count, "lab_up_s": round(took, 1), "lab_up_cpu_s": round(cpu), "limits": said,
            "in_use_before": before_use, "in_use": now, "in_use_deploy_peak": peaks,
            "mem_used_mib": round(used), "hosts_pss_mib": round(pss), "first_deploy_s": round(first[0], 1),
            "first_deploy_rss_mib": round(first[1] / 1024), "nochange_deploy_s": round(again[0], 1),
            "nochange_deploy_rss_mib": round(again[1] / 1024)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[40, 100])
    parser.add_argument("--root", default="/srv/ipex-fleet-scale-bench")
    parser.add_argument("--net", default="127.0.79")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not (template.template_dir() / ".complete").exists():
        print("building the cached root filesystem first (debootstrap; not timed)", flush=True)
        template.ensure_template()
    print(f"machine: {os.cpu_count()} cores, {meminfo()['MemTotal'] / 1024 / 1024:.0f} GiB, "
          f"kernel {os.uname().release}", flush=True)
    lab = Lab(args.root)
    rows = []
    try:
        for count in args.hosts:
            rows.append(one_size(lab, args.net, count))
    finally:
        lab.destroy()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
