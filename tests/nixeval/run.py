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
import json
import os
import shlex
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
HOSTS = ("arc-a770-01", "arc-a770-02", "arc-b580-01", "cpu-01", "h100-01", "max-1550-01")
MODULES = ("ipex", "ollama", "comfyui", "models", "fleet", "default")
# ComfyUI's command-line flags that exist upstream today (REFERENCE.md), and --database-url.
COMFYUI_FLAGS = {"--listen", "--port", "--base-directory", "--cpu", "--oneapi-device-selector",
                 "--use-pytorch-cross-attention", "--highvram", "--disable-smart-memory", "--force-fp32",
                 "--force-fp16", "--bf16-unet", "--bf16-vae", "--database-url"}


def lib_path(given: str | None = None) -> Path | None:
    """nixpkgs' lib/ directory, from the argument or the environment; None when neither names one."""
    raw = given or os.environ.get(LIB_ENV)
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
    seen: dict[tuple[str, bool, str | None], Evaluation] = field(default_factory=dict)

    def eval(self, target: str, hardware: bool = True, variant: str | None = None) -> Evaluation:
        key = (target, hardware, variant)
        if key not in self.seen:
            argv = ["nix-instantiate", "--eval", "--strict", "--json", str(HERE / "harness.nix"),
                    "--arg", "libPath", str(self.lib), "--argstr", "flakeDir", str(self.flake),
                    "--argstr", "target", target, "--arg", "hardware", "true" if hardware else "false"]
            if variant:
                argv += ["--argstr", "variant", variant]
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
    for name in HOSTS:
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
    def each(_: str, f: dict[str, Any]) -> Problems:
        said = [m for m in f["failedAssertions"] if "hardware configuration" in m]
        return [] if said else ["without a hardware configuration it is not refused (a placeholder root filesystem?)"]
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


def run_checks(h: Harness) -> dict[str, Problems]:
    return {name: check(h) for _, name, check in CHECKS}


def pushed_copy(flake: Path, dest: Path) -> Path:
    """What the deploy pushes, unpacked alone in a directory under `dest`."""
    sys.path.insert(0, str(REPO / "src"))
    from ipex_fleet.flakepush import materialize

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
              "directory of nix-community/nixpkgs.lib (it is not part of this repository)", file=sys.stderr)
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
            for point, name, _ in CHECKS:
                problems = results[name]
                print(f"{'ok  ' if not problems else 'FAIL'} point {point:>2} {name}")
                for p in problems:
                    print(f"       {p}")
            print(f"{len(harness.seen)} evaluations of {'the pushed copy of ' if not args.as_is else ''}{args.flake} "
                  f"with lib {lib}: {elapsed:.1f} s")
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
