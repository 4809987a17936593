"""The flake's evaluation harness: every nixosConfiguration and every single module of a flake,
evaluated through the real nixpkgs `lib.evalModules` (harness.nix), judged by one check per
point of issue 10.

    python -m tests.nixeval.run --lib PATH/TO/nixpkgs.lib/lib [--flake DIR] [--as-is]

It evaluates what the deploy pushes: the flake packed as `ipex-fleet` packs it, unpacked alone in a
temporary directory (`--as-is` evaluates DIR itself). nixpkgs' lib is not part of this repository:
give its path (`--lib`, or IPEX_FLEET_NIXPKGS_LIB), for example `lib/` of a checkout of
nix-community/nixpkgs.lib. Without it the harness says so and evaluates nothing (exit 2).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LIB_ENV = "IPEX_FLEET_NIXPKGS_LIB"
# The example hosts (hosts/<name>/default.nix); the checks evaluate every host the flake has.
HOSTS = ("arc-a770-01", "arc-a770-02", "arc-b580-01", "cpu-01", "h100-01", "max-1550-01")
MODULES = ("ipex", "ollama", "comfyui", "models", "fleet", "default")
# ComfyUI's command-line flags that exist upstream today (REFERENCE.md), and --database-url.
COMFYUI_FLAGS = {"--listen", "--port", "--base-directory", "--cpu", "--oneapi-device-selector",
                 "--use-pytorch-cross-attention", "--highvram", "--disable-smart-memory", "--force-fp32",
                 "--force-fp16", "--bf16-unet", "--bf16-vae", "--database-url"}


# Where the project's workspace keeps nixpkgs' lib beside the checkout (unmodified; never copied in).
SHARED_LIB = Path(__file__).resolve().parents[2].parent / "shared" / "nixpkgs-lib" / "lib"


def lib_path(given: str | None = None) -> Path | None:
    """nixpkgs' lib/ directory: the argument, else $IPEX_FLEET_NIXPKGS_LIB, else ../shared/nixpkgs-lib/lib
    beside the checkout. None when none of them holds one (an empty variable means: use none)."""
    raw = given if given else os.environ.get(LIB_ENV, str(SHARED_LIB))
    if not raw:
        return None
    path = Path(raw)
    if (path / "lib" / "default.nix").is_file():
        path = path / "lib"  # the checkout's root was given
    return path if (path / "modules.nix").is_file() else None


@dataclass(frozen=True)
class Evaluation:
    target: str
    facts: Any = None
    error: str | None = None


@dataclass
class Harness:
    """Evaluates targets of one flake directory, each once."""

    lib: Path
    flake: Path
    seen: dict[tuple[str, bool, str | None, tuple[tuple[str, str], ...]], Evaluation] = field(default_factory=dict)
    _bare: Path | None = None
    _hosts: tuple[str, ...] | None = None

    @property
    def hosts(self) -> tuple[str, ...]:
        """The flake's hosts as its lib/hosts.nix finds them (hosts/<name>/default.nix)."""
        if self._hosts is None:
            proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                                   f"(import {self.flake}/lib/hosts.nix).names"],
                                  capture_output=True, text=True, timeout=60)
            self._hosts = tuple(json.loads(proc.stdout)) if proc.returncode == 0 else HOSTS
        return self._hosts

    def bare(self) -> Path:
        """A copy of the flake whose hosts have no hardware-configuration.nix (as a new host's folder)."""
        if self._bare is None:
            tmp = tempfile.mkdtemp(prefix="ipex-fleet-eval-bare-")
            atexit.register(shutil.rmtree, tmp, True)
            self._bare = Path(tmp) / "flake"
            shutil.copytree(self.flake, self._bare, symlinks=True)
            for hardware in (self._bare / "hosts").glob("*/hardware-configuration.nix"):
                hardware.unlink()
        return self._bare

    def eval(self, target: str, hardware: bool = True, variant: str | None = None, **extra: str) -> Evaluation:
        """`extra`: more string arguments of harness.nix (pkgsHost, intelXpu, ollamaShape, comfyuiShape).
        A host without `hardware` is evaluated from a copy of the flake without its hardware files."""
        key = (target, hardware, variant, tuple(sorted(extra.items())))
        if key not in self.seen:
            flake = self.bare() if not hardware and target.startswith("host:") else self.flake
            argv = ["nix-instantiate", "--eval", "--strict", "--json", str(HERE / "harness.nix"),
                    "--arg", "libPath", str(self.lib), "--argstr", "flakeDir", str(flake),
                    "--argstr", "target", target, "--arg", "hardware", "true" if hardware else "false"]
            if variant:
                argv += ["--argstr", "variant", variant]
            for name, value in sorted(extra.items()):
                argv += ["--argstr", name, value]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                                  env={**os.environ, LIB_ENV: str(self.lib)})
            if proc.returncode == 0:
                self.seen[key] = Evaluation(target, facts=json.loads(proc.stdout)["facts"])
            else:
                self.seen[key] = Evaluation(target, error=_first_error(proc.stderr))
        return self.seen[key]

    def host(self, name: str, **kw: Any) -> Evaluation:
        return self.eval(f"host:{name}", **kw)


def _first_error(stderr: str) -> str:
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error:")]
    return (errors[-1] if errors else (lines[-1] if lines else "evaluation failed"))[:400]


Problems = list[str]


def _hosts(h: Harness, each: Callable[[str, dict[str, Any]], Problems], **kw: Any) -> Problems:
    out: Problems = []
    for name in h.hosts:
        ev = h.host(name, **kw)
        if ev.error:
            out.append(f"{name}: {ev.error}")
        else:
            out += [f"{name}: {p}" for p in each(name, ev.facts)]
    return out


def check_self_contained(h: Harness) -> Problems:
    """1. The probe package's source lies inside what is pushed."""
    inside = str(h.flake) + "/"

    def each(_: str, f: dict[str, Any]) -> Problems:
        src = (f.get("fleet") or {}).get("package", {}).get("source", "")
        return [] if src.startswith(inside) else [f"the probe package's source {src} is outside the pushed flake"]

    problems = _hosts(h, each)
    pkg = h.eval("package")
    if pkg.error or not str(pkg.facts.get("source", "")).startswith(inside):
        problems.append(f"packages.ipex-fleet: {pkg.error or 'source outside the pushed flake: ' + pkg.facts['source']}")
    return problems


def check_every_host_evaluates(h: Harness) -> Problems:
    """Every host evaluates with a hardware configuration, without a failed assertion."""
    return _hosts(h, lambda _, f: [f"failed assertion: {m}" for m in f["failedAssertions"]])


def check_service_users(h: Harness) -> Problems:
    """3. Ollama and ComfyUI run as DynamicUsers: no users.users entry for them."""
    return _hosts(h, lambda _, f: [f"users.users.{u} is defined" for u in f["users"] if u in ("ollama", "comfyui")]
                  + [f"failed assertion: {m}" for m in f["failedAssertions"] if "users.users" in m])


def check_single_definitions(h: Harness) -> Problems:
    """4. max-1550-01 evaluates (its precision overrides the profile's default) and runs bf16."""
    ev = h.host("max-1550-01")
    if ev.error:
        return [f"max-1550-01: {ev.error}"]
    args = shlex.split((ev.facts.get("comfyui") or {}).get("execStart", ""))
    return [] if "--bf16-unet" in args else [f"max-1550-01: ComfyUI runs without bf16: {args[1:]}"]


def check_comfyui_torch(h: Harness) -> Problems:
    """5. ComfyUI's torch runs on its accelerator (or it is told --cpu)."""
    def each(_: str, f: dict[str, Any]) -> Problems:
        c = f.get("comfyui")
        if not c:
            return ["ComfyUI is not enabled"]
        args = shlex.split(c["execStart"])
        if c["accelerator"] == "cpu":
            return [] if "--cpu" in args else ["ComfyUI on CPU without --cpu"]
        return [] if c["torch"] == c["accelerator"] else [f"ComfyUI runs on {c['accelerator']} with {c['torch']} torch"]
    return _hosts(h, each)


def check_probe_torch(h: Harness) -> Problems:
    """6. The probe package is built with the torch of the host's accelerator."""
    def each(_: str, f: dict[str, Any]) -> Problems:
        fleet = f.get("fleet") or {}
        want = {"any": "cpu"}.get(fleet.get("accelerator"), fleet.get("accelerator"))
        got = fleet.get("package", {}).get("torch")
        return [] if got == want else [f"the probe needs {want} torch and is built with {got}"]
    return _hosts(h, each)


def check_legacy_ipex(h: Harness) -> Problems:
    """7. legacyIpex gives intel-python's IPEX environment."""
    ev = h.host("arc-a770-01", variant="legacy-ipex")
    if ev.error:
        return [f"arc-a770-01 with legacyIpex: {ev.error}"]
    problems = [f"failed assertion: {m}" for m in ev.facts["failedAssertions"]]
    if not any(p.startswith("python3.13-env") for p in ev.facts["systemPackages"]):
        problems.append(f"no IPEX environment among the system packages: {ev.facts['systemPackages']}")
    return [f"arc-a770-01 with legacyIpex: {p}" for p in problems]


def check_comfyui_flags(h: Harness) -> Problems:
    """8. ComfyUI gets only flags that exist upstream, at every optimisation level it is given."""
    def flags(f: dict[str, Any]) -> Problems:
        args = shlex.split((f.get("comfyui") or {}).get("execStart", ""))
        return [f"ComfyUI has no flag {a}" for a in args if a.startswith("--") and a not in COMFYUI_FLAGS]
    problems = _hosts(h, lambda _, f: flags(f))
    ev = h.host("arc-a770-01", variant="comfyui-o0")
    problems += [f"arc-a770-01 at O0: {p}" for p in ([ev.error] if ev.error else flags(ev.facts))]
    return problems


def check_node_exporter(h: Harness) -> Problems:
    """9. node_exporter is enabled and reads the directory the metrics service writes."""
    def each(_: str, f: dict[str, Any]) -> Problems:
        fleet = f.get("fleet") or {}
        d = fleet.get("metricsDirectory")
        exporter = fleet.get("nodeExporter") or {}
        problems = [] if exporter.get("enable") else ["node_exporter is not enabled"]
        if f"--collector.textfile.directory={d}" not in exporter.get("extraFlags", []):
            problems.append(f"node_exporter does not read the textfile directory {d}")
        if f" {d}/" not in (fleet.get("metricsExecStart") or ""):
            problems.append(f"the metrics service does not write into {d}")
        return problems
    return _hosts(h, each)


def check_hardware_required(h: Harness) -> Problems:
    """10. A host without a hardware configuration is refused by an assertion that says what to add."""
    def each(name: str, f: dict[str, Any]) -> Problems:
        said = [m for m in f["failedAssertions"] if "hardware configuration" in m]
        if not said:
            return ["without a hardware configuration it is not refused (a placeholder root filesystem?)"]
        where = f"flake/hosts/{name}/hardware-configuration.nix"
        return [] if where in said[0] else [f"the refusal does not name {where}: {said[0]}"]
    return _hosts(h, each, hardware=False)


def check_single_modules(h: Harness) -> Problems:
    """11. Every single module evaluates alone."""
    problems: Problems = []
    for name in MODULES:
        ev = h.eval(f"module:{name}")
        if ev.error:
            problems.append(f"nixosModules.{name}: {ev.error}")
        else:
            problems += [f"nixosModules.{name}: failed assertion: {m}" for m in ev.facts["failedAssertions"]]
    return problems


def check_upstream_options(h: Harness) -> Problems:
    """12. No deprecated option (services.ollama.models); the smoke model is pulled; ComfyUI has a database URL."""
    def each(_: str, f: dict[str, Any]) -> Problems:
        problems = [f"warning: {w}" for w in f["warnings"]]
        o = f.get("ollama") or {}
        if o.get("smokeModel") and o["smokeModel"] not in o.get("loadModels", []):
            problems.append(f"the smoke model {o['smokeModel']} is never pulled")
        if len(o.get("loadModels", [])) != len(set(o.get("loadModels", []))):
            problems.append(f"a model is pulled twice: {o['loadModels']}")
        if "--database-url" not in shlex.split((f.get("comfyui") or {}).get("execStart", "")):
            problems.append("ComfyUI gets no --database-url")
        return problems
    return _hosts(h, each)


# (point of issue 10, name, check). Point 2 (the lock) is the deploy's refusal: tests/test_deploy.py.
CHECKS: tuple[tuple[str, str, Callable[[Harness], Problems]], ...] = (
    ("1", "self-contained", check_self_contained),
    ("-", "every-host-evaluates", check_every_host_evaluates),
    ("3", "service-users", check_service_users),
    ("4", "single-definitions", check_single_definitions),
    ("5", "comfyui-torch", check_comfyui_torch),
    ("6", "probe-torch", check_probe_torch),
    ("7", "legacy-ipex", check_legacy_ipex),
    ("8", "comfyui-flags", check_comfyui_flags),
    ("9", "node-exporter", check_node_exporter),
    ("10", "hardware-required", check_hardware_required),
    ("11", "single-modules", check_single_modules),
    ("12", "upstream-options", check_upstream_options),
)


# Issue 11: each new option with a passing and a failing configuration, the home-manager modules,
# the new package and app attributes, and the overlay's Intel names.
def _facts_or(ev: Evaluation, problems: Problems, what: str) -> dict[str, Any] | None:
    if ev.error:
        problems.append(f"{what}: {ev.error}")
        return None
    return ev.facts


def _refused(ev: Evaluation, what: str, says: str) -> Problems:
    """The failing configuration: refused by an assertion (or a type) that says `says`."""
    said = ev.error or " | ".join(ev.facts["failedAssertions"])
    return [] if says in said else [f"{what} is not refused with {says!r} ({said or 'it evaluates cleanly'})"]


def check_devices(h: Harness) -> Problems:
    """services.ipex.devices: GPU and CPU make the device selector; none is refused."""
    problems: Problems = []
    f = _facts_or(h.host("max-1550-01", variant="devices-gpu-cpu"), problems, "devices = [gpu cpu]")
    if f and f["environment"].get("ONEAPI_DEVICE_SELECTOR") != "level_zero:gpu;opencl:cpu":
        problems.append(f"devices = [gpu cpu] gives ONEAPI_DEVICE_SELECTOR={f['environment'].get('ONEAPI_DEVICE_SELECTOR')}")
    return problems + _refused(h.host("max-1550-01", variant="devices-none"), "devices = []", "services.ipex.devices is empty")


def check_jit_compile(h: Harness) -> Problems:
    """jitCompile: off evaluates; on is refused, saying it is not available."""
    problems: Problems = []
    f = _facts_or(h.host("arc-a770-01", variant="jit-off"), problems, "jitCompile = false")
    if f and f["failedAssertions"]:
        problems.append(f"jitCompile = false: {f['failedAssertions']}")
    return problems + _refused(h.host("arc-a770-01", variant="jit-on"), "jitCompile = true", "jitCompile is not available")


def check_models_path(h: Harness) -> Problems:
    """models.path: elsewhere, the fleet config names it and dataDir/models links to it; relative is refused."""
    problems: Problems = []
    f = _facts_or(h.host("cpu-01", variant="models-path"), problems, "models.path = /srv/models/comfyui")
    if f:
        if f["comfyui"]["modelsPath"] != "/srv/models/comfyui":
            problems.append(f"the fleet config names {f['comfyui']['modelsPath']}")
        if "L+ /var/lib/comfyui/models - - - - /srv/models/comfyui" not in f["tmpfiles"]:
            problems.append("dataDir/models does not link to models.path")
    return problems + _refused(h.host("cpu-01", variant="models-path-relative"), "models.path = models", "is not of type")


def check_nodes(h: Harness) -> Problems:
    """nodes.enable: known nodes are linked in; an unknown one is refused with the known list."""
    problems: Problems = []
    f = _facts_or(h.host("arc-a770-01", variant="nodes-known"), problems, "nodes.enable")
    if f and f["comfyui"]["customNodes"] != ["comfyui-controlnet-aux", "comfyui-ultimate-sd-upscale"]:
        problems.append(f"nodes.enable links {f['comfyui']['customNodes']}")
    return problems + _refused(h.host("arc-a770-01", variant="nodes-unknown"), "an unknown node",
                               "unknown node package(s) animatediff; known: controlnet-aux, upscaling")


def check_auto_download(h: Harness) -> Problems:
    """autoDownload: the installer runs before ComfyUI, from a plan, with no store link; SRI digests are refused."""
    problems: Problems = []
    f = _facts_or(h.host("arc-a770-01", variant="autodownload"), problems, "autoDownload")
    if f:
        models = f["services"].get("ipex-fleet-models") or {}
        if "models install --plan /etc/ipex-fleet/models-plan.json" not in (models.get("execStart") or ""):
            problems.append("no ipex-fleet-models service running the installer")
        if "ipex-fleet-models.service" not in f["services"]["comfyui"]["requires"]:
            problems.append("ComfyUI does not wait for the models")
        if "ipex-fleet/models-plan.json" not in f["etc"]:
            problems.append("no /etc/ipex-fleet/models-plan.json")
        if any("sd15.safetensors" in r for r in f["tmpfiles"]):
            problems.append("the file is also linked from the store")
    store = _facts_or(h.host("arc-a770-01", variant="store-models"), problems, "models fetched into the store")
    if store and not any("/checkpoints/sd15.safetensors" in r for r in store["tmpfiles"]):
        problems.append("without autoDownload the file is not linked from the store")
    return problems + _refused(h.host("arc-a770-01", variant="autodownload-sri"), "autoDownload with an SRI digest",
                               "give sd15.safetensors as 64 hex digits")


def check_home_ipex(h: Harness) -> Problems:
    """homeManagerModules.ipex: Python with the accelerator's torch and the tools; editor settings only on request."""
    problems: Problems = []
    xpu = _facts_or(h.eval("home:ipex", variant="ipex-xpu"), problems, "programs.ipex")
    if xpu:
        if xpu["failedAssertions"]:
            problems.append(f"programs.ipex: {xpu['failedAssertions']}")
        if ["xpu"] not in xpu["torch"] or not any(p.startswith("ipex-fleet") for p in xpu["packages"]):
            problems.append(f"programs.ipex (xpu) gives {xpu['packages']} with torch {xpu['torch']}")
        if xpu["sessionVariables"].get("ONEAPI_DEVICE_SELECTOR") != "level_zero:gpu" or xpu["vscode"] is not None:
            problems.append("programs.ipex (xpu): wrong Intel variables, or editor settings nobody asked for")
    cpu = _facts_or(h.eval("home:ipex", variant="ipex-cpu"), problems, "programs.ipex (cpu)")
    if cpu and (["cpu"] not in cpu["torch"] or cpu["sessionVariables"]):
        problems.append(f"programs.ipex (cpu): torch {cpu['torch']}, variables {cpu['sessionVariables']}")
    dev = _facts_or(h.eval("home:ipex", variant="ipex-dev"), problems, "programs.ipex.development")
    if dev and "python.defaultInterpreterPath" not in (dev["vscode"] or {}):
        problems.append("development.enable gives no editor settings")
    extra = _facts_or(h.eval("home:ipex", variant="ipex-extra"), problems, "programs.ipex.extraPythonPackages")
    if extra and ("numpy" not in extra["pythonPackages"]
                  or extra["sessionVariables"].get("ONEAPI_DEVICE_SELECTOR") != "level_zero:1"):
        problems.append(f"extraPythonPackages / deviceSelector not applied: {extra['pythonPackages']}")
    problems += _refused(h.eval("home:ipex", variant="ipex-bad-extra"), "extraPythonPackages = \"numpy\"", "is not of type")
    problems += _refused(h.eval("home:ipex", variant="ipex-bad-selector"), "deviceSelector = 1", "is not of type")
    return problems + _refused(h.eval("home:ipex", variant="ipex-cuda-no-support"), "accelerator = cuda without cudaSupport",
                               "needs nixpkgs.config.cudaSupport")


def check_home_comfyui(h: Harness) -> Problems:
    """homeManagerModules.comfyui-ipex: the workspace, its linked model folders and the example workflows."""
    problems: Problems = []
    f = _facts_or(h.eval("home:comfyui-ipex", variant="comfyui"), problems, "programs.comfyui-ipex")
    if f:
        want = {"comfyui-workspace/models/checkpoints": "outOfStore:/home/dev/ai-models/checkpoints",
                "comfyui-workspace/models/controlnet": "outOfStore:/srv/models/controlnet"}
        for name, source in want.items():
            if (f["files"].get(name) or {}).get("source") != source:
                problems.append(f"{name} does not link to {source}: {f['files'].get(name)}")
        for wf in ("txt2img.json", "controlnet-canny.json"):
            if not str((f["files"].get(f"comfyui-workspace/workflows/{wf}") or {}).get("source", "")).endswith(f"/workflows/{wf}"):
                problems.append(f"the example workflow {wf} is not in the workspace")
        if f["failedAssertions"] or not any(p.startswith("comfyui") for p in f["packages"]):
            problems.append(f"programs.comfyui-ipex: {f['failedAssertions']} {f['packages']}")
    bare = _facts_or(h.eval("home:comfyui-ipex", variant="comfyui-no-workflows"), problems, "workflows.enable = false")
    if bare and any("/workflows/" in name for name in bare["files"]):
        problems.append("workflows.enable = false still links the workflows")
    problems += _refused(h.eval("home:comfyui-ipex", variant="comfyui-bad-workflows"), "workflows.enable = \"yes\"",
                         "is not of type")
    problems += _refused(h.eval("home:comfyui-ipex", variant="comfyui-bad-kind"), "an unknown model folder",
                         "unknown model folder(s) checkpoint")
    return problems + _refused(h.eval("home:comfyui-ipex", variant="comfyui-outside-home"), "a workspace outside home",
                               "give a path inside the home directory")


def check_new_outputs(h: Harness) -> Problems:
    """The benchmark package and app, and the custom node packages (fixed revision and hash)."""
    problems: Problems = []
    bench = _facts_or(h.eval("output:packages.x86_64-linux.ipex-benchmark"), problems, "packages.ipex-benchmark")
    if bench and bench["mainProgram"] != "ipex-benchmark":
        problems.append(f"packages.ipex-benchmark runs {bench['mainProgram']}")
    app = _facts_or(h.eval("output:apps.x86_64-linux.ipex-benchmark"), problems, "apps.ipex-benchmark")
    if app and not (app["type"] == "app" and app["program"].endswith("/bin/ipex-benchmark")):
        problems.append(f"apps.ipex-benchmark is {app}")
    for node in ("controlnet-aux", "upscaling"):
        f = _facts_or(h.eval(f"output:packages.x86_64-linux.comfyui-nodes-{node}"), problems, f"comfyui-nodes-{node}")
        if f and not (f["src"] and len(f["src"]) == 40 and str(f["outputHash"]).startswith("sha256-")):
            problems.append(f"comfyui-nodes-{node} is not fetched by a fixed revision and hash: {f}")
    return problems


def check_overlay_names(h: Harness) -> Problems:
    """intel-xpu.{python, ipex, mkl, ollama, comfyui} and comfyui-ipex resolve to something real (XPU where
    it matters), or, from an input that lacks them, to a throw that says why."""
    problems: Problems = []
    want = {"intel-xpu.python": "xpu", "intel-xpu.comfyui": "xpu", "comfyui-ipex": "xpu",
            "intel-xpu.ipex": None, "intel-xpu.mkl": None, "intel-xpu.ollama": None}
    for attr, torch in want.items():
        f = _facts_or(h.eval(f"pkgs:{attr}"), problems, attr)
        if f and (not f["name"] or (torch and f["torch"] != torch)):
            problems.append(f"pkgs.{attr} is {f}")
    for attr in ("intel-xpu.python", "intel-xpu.ipex", "intel-xpu.mkl"):
        ev = h.eval(f"pkgs:{attr}", intelXpu="bare")
        if not (ev.error and "is unavailable: the intel-xpu input" in ev.error):
            problems.append(f"pkgs.{attr} from an input without it: {ev.error or ev.facts}")
    return problems


CHECKS_11: tuple[tuple[str, str, Callable[[Harness], Problems]], ...] = (
    ("11.5", "ipex-devices", check_devices),
    ("11.5", "comfyui-jit-compile", check_jit_compile),
    ("11.5", "comfyui-models-path", check_models_path),
    ("11.2", "comfyui-nodes", check_nodes),
    ("11.5", "models-auto-download", check_auto_download),
    ("11.1", "home-ipex", check_home_ipex),
    ("11.1", "home-comfyui-ipex", check_home_comfyui),
    ("11.3", "benchmark-and-node-outputs", check_new_outputs),
    ("11.4", "overlay-names", check_overlay_names),
)
def check_controller(h: Harness) -> Problems:
    """nixosModules.controller: a timer runs `ipex-fleet maintain` from the repository, under a lock, as
    a system user; its arguments are the user's; a relative repository is refused."""
    problems: Problems = []
    f = _facts_or(h.eval("module:controller"), problems, "the controller module")
    if f:
        c = f.get("controller") or {}
        timer, service = c.get("timer") or {}, c.get("serviceConfig") or {}
        if timer.get("wantedBy") != ["timers.target"] or timer.get("timerConfig", {}).get("OnCalendar") != "Sun 03:00" \
                or timer.get("timerConfig", {}).get("Persistent") is not True:
            problems.append(f"the timer is {timer}")
        start = service.get("ExecStart") or ""
        if "flock --nonblock /var/lib/ipex-fleet-controller/maintain.lock" not in start \
                or not start.endswith("/bin/ipex-fleet maintain inventories/prod.py --lock-wait 600"):
            problems.append(f"ExecStart is {start!r}")
        if service.get("WorkingDirectory") != "/srv/fleet" or service.get("Type") != "oneshot" or c.get("user") is not True:
            problems.append(f"the service is {service}, system user {c.get('user')}")
        if f["failedAssertions"]:
            problems.append(f"assertions: {f['failedAssertions']}")
    w = _facts_or(h.eval("module:controller", variant="controller-waves"), problems, "the controller with arguments")
    if w:
        start = (w.get("controller") or {}).get("serviceConfig", {}).get("ExecStart") or ""
        if not start.endswith("maintain inventories/prod.py --waves 1,50% --restart"):
            problems.append(f"with maintainArgs, ExecStart is {start!r}")
    return problems + _refused(h.eval("module:controller", variant="controller-relative"), "repository = fleet",
                               "is not of type")


CHECKS_12: tuple[tuple[str, str, Callable[[Harness], Problems]], ...] = (
    ("12.8", "controller-timer", check_controller),
)

# Issue 24: the nixpkgs a user pins. services.ollama before and after `models` became `modelsDir`,
# and pkgs.comfyui taking python3 or python3Packages (both seen), or absent (before 2026-07).
OLLAMA_SHAPES = ("models", "modelsDir")
COMFYUI_SHAPES = ("python3", "python3Packages")


def check_nixpkgs_shapes(h: Harness) -> Problems:
    """Every host evaluates on every shape: no failed assertion, no warning (a deprecated alias), Ollama's
    models where the fleet config says, ComfyUI's torch on its accelerator."""
    problems: Problems = []
    for ollama in OLLAMA_SHAPES:
        for comfyui in COMFYUI_SHAPES:
            def each(_: str, f: dict[str, Any]) -> Problems:
                out = [f"failed assertion: {m}" for m in f["failedAssertions"]] + [f"warning: {w}" for w in f["warnings"]]
                o, c = f.get("ollama") or {}, f.get("comfyui") or {}
                if o.get("modelsDir") != "/var/lib/ollama/models":
                    out.append(f"OLLAMA_MODELS is {o.get('modelsDir')}")
                backend = {"xpu": "vulkan"}.get(o.get("fleetAccelerator"), o.get("fleetAccelerator"))
                if o.get("execStart") != f"{o.get('execPackage')} serve" or o.get("accelerator") != backend:
                    out.append(f"Ollama on {o.get('fleetAccelerator')} runs {o.get('execStart')!r} "
                               f"({o.get('accelerator')}), not its {backend} package")
                if c.get("accelerator") not in (None, "cpu") and c.get("torch") != c.get("accelerator"):
                    out.append(f"ComfyUI runs on {c.get('accelerator')} with {c.get('torch')} torch")
                return out
            problems += [f"ollama {ollama}, comfyui({comfyui}): {p}"
                         for p in _hosts(h, each, ollamaShape=ollama, comfyuiShape=comfyui)]
    return problems


def check_comfyui_absent(h: Harness) -> Problems:
    """A nixpkgs without comfyui: every host is refused by one assertion that names the pin needed."""
    def each(_: str, f: dict[str, Any]) -> Problems:
        said = [m for m in f["failedAssertions"] if "needs pkgs.comfyui" in m]
        if len(said) != 1 or len(f["failedAssertions"]) != 1:
            return [f"not one clear assertion: {f['failedAssertions']}"]
        return [] if "nix flake update nixpkgs --flake ./flake" in said[0] else [f"the assertion names no pin: {said[0]}"]
    problems = _hosts(h, each, comfyuiShape="absent")
    home = h.eval("home:comfyui-ipex", variant="comfyui", comfyuiShape="absent")
    said = home.error or " | ".join(home.facts["failedAssertions"])
    if "programs.comfyui-ipex needs pkgs.comfyui" not in said:
        problems.append(f"homeManagerModules.comfyui-ipex without pkgs.comfyui: {said or 'no assertion'}")
    return problems


def check_metrics_reachable(h: Harness) -> Problems:
    """metrics.allowFrom opens the node exporter's port to those addresses only (iptables or nftables);
    empty: closed, with a warning; a name instead of an address is refused."""
    def each(_: str, f: dict[str, Any]) -> Problems:
        fleet = f.get("fleet") or {}
        fw, port = fleet.get("firewall") or {}, (fleet.get("nodeExporter") or {}).get("port")
        want = f"iptables -A nixos-fw -p tcp -s 10.40.9.10 --dport {port} -j nixos-fw-accept\n"
        out = [] if fw.get("extraCommands") == want else [f"the exporter's port is opened by {fw.get('extraCommands')!r}"]
        return out + ([f"port {port} is open to everyone"] if port in fw.get("allowedTCPPorts", []) else [])
    problems = _hosts(h, each)
    closed = _facts_or(h.host("cpu-01", variant="metrics-closed"), problems, "allowFrom = []")
    if closed:
        if closed["fleet"]["firewall"]["extraCommands"] or closed["fleet"]["firewall"]["extraInputRules"]:
            problems.append(f"allowFrom = [] opens {closed['fleet']['firewall']}")
        if not any("metrics.allowFrom is empty" in w for w in closed["warnings"]):
            problems.append(f"allowFrom = [] gives no warning: {closed['warnings']}")
    nft = _facts_or(h.host("cpu-01", variant="metrics-nftables"), problems, "allowFrom with nftables")
    if nft and nft["fleet"]["firewall"]["extraInputRules"] != (
            "ip saddr { 10.40.9.10 } tcp dport 9100 accept\nip6 saddr { fd00:40::/64 } tcp dport 9100 accept"):
        problems.append(f"with nftables the rules are {nft['fleet']['firewall']['extraInputRules']!r}")
    return problems + _refused(h.host("cpu-01", variant="metrics-bad"), "allowFrom = [ prometheus.example ]",
                               "is not of type")


def _pyproject_dependencies(flake: Path, extra: str | None = None) -> set[str]:
    """The package's declared requirements by name (the host side's, or an extra's such as the
    controller's), from the pyproject.toml the flake builds from."""
    import re
    import tomllib

    candidates = (flake / "_source" / "pyproject.toml", flake.parent / "pyproject.toml", REPO / "pyproject.toml")
    source = next(c for c in candidates if c.is_file())
    project = tomllib.loads(source.read_text())["project"]
    deps = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for d in deps}


def check_host_package(h: Harness) -> Problems:
    """Every host runs the host package: none of the controller's dependencies in its closure, and its
    metadata drops every requirement it does not carry (nixpkgs' runtime-deps check passes)."""
    declared = _pyproject_dependencies(h.flake)
    controller_only = _pyproject_dependencies(h.flake, "controller")  # what the host side never imports

    def lean(what: str, pkg: dict[str, Any]) -> Problems:
        deps = set(pkg.get("dependencies", []))
        out = [f"{what} depends on {sorted(deps & controller_only)}"] if deps & controller_only else []
        unmet = declared - deps - set(pkg.get("removedDependencies", []))
        out += [f"{what}: pyproject requires {sorted(unmet)}, neither carried nor removed"] if unmet else []
        return out + ([] if "torch" in deps else [f"{what} has no torch"])

    problems = _hosts(h, lambda _, f: lean("the host package", (f.get("fleet") or {}).get("package") or {})
                      + ([] if (f.get("fleet") or {}).get("package", {}).get("pname") == "ipex-fleet-host"
                         else ["the fleet module does not install ipex-fleet-host"]))
    for name in ("ipex-fleet-host", "ipex-benchmark"):
        out = _facts_or(h.eval(f"package:{name}"), problems, f"packages.{name}")
        problems += lean(f"packages.{name}", out) if out is not None else []
    controller = _facts_or(h.eval("package"), problems, "packages.ipex-fleet")
    if controller is not None and not controller_only <= set(controller["dependencies"]):
        problems.append(f"packages.ipex-fleet (the controller) lacks {sorted(controller_only - set(controller['dependencies']))}")
    return problems


CHECKS_24: tuple[tuple[str, str, Callable[[Harness], Problems]], ...] = (
    ("24.5", "host-package-lean", check_host_package),
    ("24.3", "metrics-reachable", check_metrics_reachable),
    ("24.2", "nixpkgs-shapes", check_nixpkgs_shapes),
    ("24.2", "comfyui-absent", check_comfyui_absent),
)
ALL_CHECKS = CHECKS + CHECKS_11 + CHECKS_12 + CHECKS_24


def run_checks(h: Harness, checks: tuple = ALL_CHECKS) -> dict[str, Problems]:
    return {name: check(h) for _, name, check in checks}


def pushed_copy(flake: Path, dest: Path) -> Path:
    """What the deploy pushes, unpacked alone in a directory under `dest`."""
    sys.path.insert(0, str(REPO / "src"))
    from ipex_fleet.nix.flakepush import materialize

    return Path(materialize(str(flake), str(dest)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.nixeval.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", help=f"nixpkgs' lib/ directory (default: ${LIB_ENV})")
    parser.add_argument("--flake", default=str(REPO / "flake"), help="the flake directory (default: flake/)")
    parser.add_argument("--as-is", action="store_true", help="evaluate the directory itself, not what is pushed")
    parser.add_argument("--json", action="store_true", help="print the facts and problems as JSON")
    args = parser.parse_args(argv)
    lib = lib_path(args.lib)
    if lib is None:
        print(f"flake evaluation skipped: no nixpkgs lib given; pass --lib or set {LIB_ENV} to the lib/ "
              f"directory of nix-community/nixpkgs.lib (it is not part of this repository; {SHARED_LIB} is not there)", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ipex-fleet-eval-") as tmp:
        flake = Path(args.flake).resolve() if args.as_is else pushed_copy(Path(args.flake).resolve(), Path(tmp))
        harness = Harness(lib, flake)
        results = run_checks(harness)
        elapsed = time.monotonic() - started
        if args.json:
            print(json.dumps({"problems": results, "seconds": round(elapsed, 2),
                              "facts": {f"{k[0]}{'' if k[1] else ' (no hardware)'}{' +' + k[2] if k[2] else ''}":
                                        ev.facts if ev.error is None else {"error": ev.error}
                                        for k, ev in harness.seen.items()}}, indent=2))
        else:
            for point, name, _ in ALL_CHECKS:
                problems = results[name]
                print(f"{'ok  ' if not problems else 'FAIL'} point {point:>2} {name}")
                for p in problems:
                    print(f"       {p}")
            print(f"{len(harness.seen)} evaluations of {'the pushed copy of ' if not args.as_is else ''}{args.flake} "
                  f"with lib {lib}: {elapsed:.1f} s")
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
