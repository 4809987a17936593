"""The probe's checks, by level (DCGM / xpu-smi style): 1 software, 2 functional, 3 performance.

Each check takes the expectations and a shared scratch dict (torch, the device) and returns an
Outcome. A check that cannot run says `skip` and why, never a false `pass`.
"""

from __future__ import annotations

import glob
import grp
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from ipex_fleet.host.device import current_device, device_count, device_properties, synchronize
from ipex_fleet.host.fleetconfig import FleetConfig
from ipex_fleet.host.probe import comfyui, tokens
from ipex_fleet.host.probe.httpjson import HTTPProblem, request
from ipex_fleet.host.probe.journal import systemd_is_init, unit_tail
from ipex_fleet.host.probe.model import Outcome, failed, passed, skipped, warned

INTEL_ENV = ("ONEAPI_DEVICE_SELECTOR", "SYCL_CACHE_PERSISTENT", "ZES_ENABLE_SYSMAN", "ZE_AFFINITY_MASK")
CUDA_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")


@dataclass(frozen=True)
class Expectations:
    accelerator: str = "any"  # xpu | cuda | cpu | any
    min_devices: int = 1
    config: FleetConfig | None = None
    expect_system: str | None = None
    smoke_model: str | None = None
    memory_fraction: float = 0.5
    min_free_mb: int = 1024
    # The tokens/s gate (probe/tokens.py): its baseline under bench_dir/ollama (None: no gate), the
    # allowed slowdown, a new baseline asked for, and the lock hosts sharing a machine measure under.
    bench_dir: str | None = None
    tolerance: float = 0.15
    rebaseline: bool = False
    lock: str | None = None


Scratch = dict[str, Any]
CheckFn = Callable[[Expectations, Scratch], Outcome]


def _torch(scratch: Scratch) -> Any:
    if "torch" not in scratch:
        raise RuntimeError("torch did not import")
    return scratch["torch"]


# -- level 1: software -----------------------------------------------------------------------


def check_torch(exp: Expectations, scratch: Scratch) -> Outcome:
    started = time.monotonic()
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken native library
        return failed(f"torch does not import: {type(exc).__name__}: {exc}; install the host's torch build")
    scratch["torch"] = torch
    return passed(f"torch {torch.__version__} imports in {time.monotonic() - started:.1f}s",
                  version=torch.__version__)


def check_ipex(exp: Expectations, scratch: Scratch) -> Outcome:
    """IPEX is optional and end-of-life; where present it must match torch's major.minor."""
    if importlib.util.find_spec("intel_extension_for_pytorch") is None:
        return skipped("IPEX is not installed (optional: upstream torch.xpu serves Intel GPUs)")
    try:
        ipex_version = importlib.metadata.version("intel-extension-for-pytorch")
    except importlib.metadata.PackageNotFoundError:
        ipex_version = "unknown"
    torch_version = _torch(scratch).__version__
    scratch["ipex"] = ipex_version
    if ipex_version.split("+")[0].split(".")[:2] != torch_version.split("+")[0].split(".")[:2]:
        return failed(f"IPEX {ipex_version} needs torch {'.'.join(ipex_version.split('.')[:2])}.*, but torch is "
                      f"{torch_version}: pin a matching torch or remove IPEX (upstream torch.xpu needs no IPEX)",
                      ipex=ipex_version, torch=torch_version)
    # Import it in a child process: a broken IPEX can kill the interpreter that imports it.
    proc = subprocess.run([sys.executable, "-c", "import intel_extension_for_pytorch"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return failed(f"IPEX {ipex_version} fails to import beside torch {torch_version}: {tail}",
                      ipex=ipex_version, torch=torch_version)
    return passed(f"IPEX {ipex_version} matches torch {torch_version}", ipex=ipex_version, torch=torch_version)


def check_accelerator(exp: Expectations, scratch: Scratch) -> Outcome:
    torch = _torch(scratch)
    device = current_device(torch)
    scratch["device"] = device
    count = device_count(torch, device)
    props = device_properties(torch, device)
    scratch["devices"] = props
    data = {"type": device.type, "count": count, "devices": props}
    if exp.accelerator in ("xpu", "cuda") and device.type != exp.accelerator:
        hint = ("check the driver, the render group and ONEAPI_DEVICE_SELECTOR" if exp.accelerator == "xpu"
                else "check the NVIDIA driver and CUDA_VISIBLE_DEVICES")
        return failed(f"expected a {exp.accelerator} device, torch sees {device.type}: {hint}", **data)
    if exp.accelerator in ("xpu", "cuda") and count < exp.min_devices:
        return failed(f"expected at least {exp.min_devices} {exp.accelerator} devices, torch sees {count}", **data)
    names = ", ".join(str(p.get("name")) for p in props)
    return passed(f"{count} {device.type} device(s): {names}", **data)


def check_render_nodes(exp: Expectations, scratch: Scratch) -> Outcome:
    if exp.accelerator != "xpu":
        return skipped("not an Intel GPU host")
    nodes = sorted(glob.glob("/dev/dri/renderD*"))
    if not nodes:
        return failed("no /dev/dri/renderD* render nodes: the i915/xe driver is not loaded")
    group = exp.config.render_group if exp.config else "render"
    try:
        gid = grp.getgrnam(group).gr_gid
        members = grp.getgrnam(group).gr_mem
    except KeyError:
        return failed(f"group {group!r} does not exist; enable services.ipex")
    wrong = [n for n in nodes if os.stat(n).st_gid != gid or not os.stat(n).st_mode & 0o060 == 0o060]
    if wrong:
        return failed(f"{', '.join(wrong)} not read-writable by group {group}", nodes=nodes)
    return passed(f"{len(nodes)} render node(s), group {group}: {', '.join(members) or 'no listed members'}",
                  nodes=nodes, members=members)


def check_environment(exp: Expectations, scratch: Scratch) -> Outcome:
    names = INTEL_ENV if exp.accelerator == "xpu" else CUDA_ENV if exp.accelerator == "cuda" else INTEL_ENV + CUDA_ENV
    env = {k: os.environ[k] for k in names if k in os.environ}
    if exp.accelerator == "cuda" and env.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return failed(f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r} hides every GPU", env=env)
    if exp.accelerator == "xpu" and "ONEAPI_DEVICE_SELECTOR" in env and "level_zero" not in env["ONEAPI_DEVICE_SELECTOR"]:
        return warned(f"ONEAPI_DEVICE_SELECTOR={env['ONEAPI_DEVICE_SELECTOR']!r} selects no Level Zero device", env=env)
    return passed(", ".join(f"{k}={v}" for k, v in env.items()) or "no device variables set", env=env)


def check_units(exp: Expectations, scratch: Scratch) -> Outcome:
    if not systemd_is_init():
        return skipped("systemd is not PID 1 here; services are checked over HTTP instead")
    failed_units = subprocess.run(["systemctl", "--failed", "--no-legend", "--plain"], capture_output=True,
                                  text=True, timeout=20).stdout.split()
    failed_units = [u for u in failed_units if "." in u]
    units = [s.unit for s in (exp.config.services.values() if exp.config else [])]
    inactive = [u for u in units if subprocess.run(["systemctl", "is-active", "--quiet", u], timeout=20).returncode]
    if failed_units or inactive:
        return failed(f"failed units: {', '.join(failed_units) or 'none'}; inactive: {', '.join(inactive) or 'none'}",
                      failed=failed_units, inactive=inactive)
    return passed(f"no failed units; active: {', '.join(units) or 'none expected'}")


def _service(exp: Expectations, name: str):
    return exp.config.services.get(name) if exp.config else None


def check_ollama(exp: Expectations, scratch: Scratch) -> Outcome:
    svc = _service(exp, "ollama")
    if svc is None:
        return skipped("no Ollama service configured on this host")
    try:
        version = request(f"{svc.url}/api/version")["version"]
        models = request(f"{svc.url}/api/tags").get("models", [])
    except (HTTPProblem, KeyError, TypeError) as exc:
        return _not_answering("Ollama", svc, exc)
    return passed(f"Ollama {version}, {len(models)} model(s)", version=version,
                  models=[m.get("name") for m in models])


def _not_answering(name: str, svc: Any, exc: Exception) -> Outcome:
    """A service that does not answer, with what its unit's journal says (a ComfyUI that stopped at
    start, as on a GPU host whose accelerator is hidden, says why there and nowhere else)."""
    tail = unit_tail(svc.unit)
    if tail is None or tail.state == "active":
        return failed(f"{name}: {exc}; check the {svc.unit} unit")
    return failed(f"{name}: {exc}; {tail.summary()}", unit=svc.unit, state=tail.state, journal=list(tail.lines))


def check_comfyui(exp: Expectations, scratch: Scratch) -> Outcome:
    svc = _service(exp, "comfyui")
    if svc is None:
        return skipped("no ComfyUI service configured on this host")
    try:
        stats = request(f"{svc.url}/system_stats")
    except HTTPProblem as exc:
        return _not_answering("ComfyUI", svc, exc)
    devices = stats.get("devices") or []
    expected = svc.accelerator if exp.accelerator == "any" else exp.accelerator
    if not devices:
        return failed(f"ComfyUI reports no device; expected {expected}", system=stats.get("system", {}))
    kind = devices[0].get("type")
    if expected not in ("any", kind):
        return failed(f"ComfyUI runs on {kind} ({devices[0].get('name')}), expected {expected}", device=devices[0])
    return passed(f"ComfyUI {stats.get('system', {}).get('comfyui_version', '?')} on {kind}", device=devices[0])


def check_disk(exp: Expectations, scratch: Scratch) -> Outcome:
    paths = [s.models for s in exp.config.services.values()] if exp.config else []
    if not paths:
        return skipped("no model paths configured")
    report, low = {}, []
    for path in paths:
        probe = path
        while not os.path.exists(probe) and probe != "/":
            probe = os.path.dirname(probe)
        free_mb = shutil.disk_usage(probe).free // (1 << 20)
        report[path] = free_mb
        if free_mb < exp.min_free_mb:
            low.append(f"{path} ({free_mb} MiB)")
    if low:
        return failed(f"low free space on {', '.join(low)}; need {exp.min_free_mb} MiB", free_mb=report)
    return passed(", ".join(f"{p}: {mb} MiB free" for p, mb in report.items()), free_mb=report)


def check_generation(exp: Expectations, scratch: Scratch) -> Outcome:
    running = os.path.realpath("/run/current-system") if os.path.exists("/run/current-system") else None
    if exp.expect_system is None:
        return skipped(f"no deployed generation given (running {running})")
    if running != exp.expect_system:
        return failed(f"running {running}, but {exp.expect_system} was deployed", running=running)
    return passed(f"running the deployed generation {running}", running=running)


# -- level 2: functional ---------------------------------------------------------------------

TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2, "fp16": 1e-2}


def check_matmul(exp: Expectations, scratch: Scratch) -> Outcome:
    torch, device = _torch(scratch), scratch["device"]
    torch.manual_seed(0)
    a32, b32 = torch.randn(256, 256), torch.randn(256, 256)
    reference = a32 @ b32
    errors, bad = {}, []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        out = (a32.to(device.torch_device, dtype) @ b32.to(device.torch_device, dtype)).float().cpu()
        err = float(((out - reference).abs().max() / reference.abs().max()))
        errors[name] = round(err, 6)
        if not err <= TOLERANCE[name]:
            bad.append(f"{name} error {err:.2e} > {TOLERANCE[name]:.0e}")
    if bad:
        return failed(f"matmul on {device.type} disagrees with the CPU reference: {'; '.join(bad)}", errors=errors)
    return passed(f"matmul on {device.type} matches the CPU reference (fp32, bf16, fp16)", errors=errors)


def check_memory(exp: Expectations, scratch: Scratch) -> Outcome:
    torch, device = _torch(scratch), scratch["device"]
    if device.type == "cpu":
        budget = min(int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * exp.memory_fraction), 256 << 20)
        block = torch.ones(budget // 4, dtype=torch.float32)
        ok = float(block[-1]) == 1.0
        del block
        return passed(f"allocated and freed {budget >> 20} MiB of host memory") if ok else failed("memory readback failed")
    module = getattr(torch, device.type)
    try:
        free, total = module.mem_get_info()
    except Exception as exc:  # raises on some drivers and integrated GPUs
        free, total = None, device_properties(torch, device)[0]["total_memory"]
        scratch["mem_note"] = f"mem_get_info unavailable ({type(exc).__name__})"
    budget = int((free if free is not None else total * 0.5) * exp.memory_fraction)
    try:
        block = torch.empty(budget // 4, dtype=torch.float32, device=device.torch_device)
        block.fill_(1.0)
        synchronize(torch, device)
        ok = float(block[-1].cpu()) == 1.0
        del block
        module.empty_cache()
    except RuntimeError as exc:
        return failed(f"could not allocate {budget >> 20} MiB ({exp.memory_fraction:.0%} of free): {exc}")
    if not ok:
        return failed("device memory readback gave a wrong value")
    return passed(f"allocated, wrote and freed {budget >> 20} MiB of {total >> 20} MiB",
                  bytes=budget, total=total, note=scratch.get("mem_note"))


def check_transfer(exp: Expectations, scratch: Scratch) -> Outcome:
    torch, device = _torch(scratch), scratch["device"]
    if device.type == "cpu":
        return skipped("no separate device memory on a CPU host")
    n = 64 << 20
    host = torch.empty(n // 4, dtype=torch.float32).pin_memory()
    dev = torch.empty(n // 4, dtype=torch.float32, device=device.torch_device)
    rates = {}
    for direction, fn in (("h2d", lambda: dev.copy_(host, non_blocking=True)),
                          ("d2h", lambda: host.copy_(dev, non_blocking=True))):
        fn()
        synchronize(torch, device)
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        synchronize(torch, device)
        rates[direction] = round(5 * n / (time.perf_counter() - t0) / 1e9, 2)
    if min(rates.values()) < 1.0:
        return warned(f"host-device copies are slow: {rates} GB/s (a x1 link or a fallback path?)", gbps=rates)
    return passed(f"h2d {rates['h2d']} GB/s, d2h {rates['d2h']} GB/s", gbps=rates)


def check_ollama_generate(exp: Expectations, scratch: Scratch) -> Outcome:
    svc = _service(exp, "ollama")
    model = exp.smoke_model or (svc.smoke_model if svc else None)
    if svc is None or not model:
        return skipped("no smoke model configured for Ollama (host data smoke_model)")
    try:
        out = request(f"{svc.url}/api/generate", {"model": model, "prompt": "Say hi.", "stream": False,
                                                   "options": {"num_predict": 8, "seed": 1, "temperature": 0}},
                      timeout=120)
        loaded = request(f"{svc.url}/api/ps").get("models", [])
    except HTTPProblem as exc:
        return failed(f"Ollama generation with {model}: {exc}")
    # Tokens/s as Ollama's own figures give it (REFERENCE.md): eval_count / eval_duration (ns) x 1e9.
    count, took = out.get("eval_count"), out.get("eval_duration")
    if not isinstance(count, int) or not isinstance(took, int) or count <= 0 or took <= 0:
        return failed(f"Ollama generation with {model} reported no eval_count/eval_duration "
                      f"({count!r}/{took!r}): it generated nothing")
    rate = count / took * 1e9
    figures = {"tokens_per_s": round(rate, 2), "eval_count": count, "eval_duration_ns": took}
    entry = next((m for m in loaded if m.get("name") == out.get("model", model)), None)
    if exp.accelerator in ("xpu", "cuda") and entry is not None and not entry.get("size_vram"):
        return failed(f"Ollama runs {model} on the CPU (size_vram 0), expected {exp.accelerator}", **figures)
    if exp.bench_dir is None:
        return passed(f"{model}: {rate:.1f} tokens/s ({count} tokens in {took / 1e6:.0f} ms)", **figures)
    # Slower than this host's recorded tokens/s? Judged as the benchmark is judged (probe/tokens.py).
    try:
        gated = tokens.judge(model, tokens.ollama_generate(svc.url, model), bench_dir=exp.bench_dir,
                             device=tokens.device_of(scratch, bool(entry and entry.get("size_vram"))),
                             tolerance=exp.tolerance, digest=(entry or {}).get("digest"), unit=svc.unit,
                             rebaseline=exp.rebaseline, lock=exp.lock, healthy=not scratch.get("failed"))
    except (HTTPProblem, ValueError) as exc:
        return failed(f"Ollama generation with {model} (tokens/s samples): {exc}", **figures)
    return Outcome(gated.result, gated.message, {**figures, **gated.data})


def check_comfyui_history(exp: Expectations, scratch: Scratch) -> Outcome:
    return comfyui.check_recent(_service(exp, "comfyui"))


def check_comfyui_run(exp: Expectations, scratch: Scratch) -> Outcome:
    return comfyui.check_run(_service(exp, "comfyui"))


# name, level, function, time limit (s)
CHECKS: tuple[tuple[str, int, CheckFn, float], ...] = (
    ("torch", 1, check_torch, 60),
    ("ipex", 1, check_ipex, 90),
    ("accelerator", 1, check_accelerator, 30),
    ("render_nodes", 1, check_render_nodes, 5),
    ("environment", 1, check_environment, 5),
    ("units", 1, check_units, 30),
    ("ollama", 1, check_ollama, 15),
    ("comfyui", 1, check_comfyui, 15),
    ("disk", 1, check_disk, 10),
    ("generation", 1, check_generation, 5),
    ("matmul", 2, check_matmul, 60),
    ("memory", 2, check_memory, 60),
    ("transfer", 2, check_transfer, 60),
    ("ollama_generate", 2, check_ollama_generate, 240),  # with the tokens/s gate's rounds and retests
    ("comfyui_history", 2, check_comfyui_history, 15),  # before the probe's own prompt joins the history
    ("comfyui_run", 2, check_comfyui_run, 90),
)
