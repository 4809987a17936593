"""The NixOS flake: every file parses, hosts match the inventory, both sides read one policy.

nixpkgs cannot be fetched on these machines, so full evaluation (`nix flake check`) cannot run
here; these checks use real Nix on what can be evaluated without it.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import json
import subprocess
from pathlib import Path

import pytest

from ipex_fleet import fleetconfig

from .conftest import REPO, assert_ok

FLAKE = REPO / "flake"
NIX_FILES = sorted([*FLAKE.rglob("*.nix"), *(REPO / "src/ipex_fleet/lab").rglob("*.nix"),
                    *(REPO / "tests/nixeval").rglob("*.nix")])


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_nix_file_parses(path: Path):
    proc = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True, text=True, timeout=60)
    assert_ok(proc)


def _inventory_hosts() -> set[str]:
    tree = ast.parse((REPO / "inventories/prod.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and node.elts and isinstance(node.elts[0], ast.Constant) \
                and isinstance(node.elts[0].value, str) and isinstance(node.elts[1], ast.Dict):
            names.add(node.elts[0].value)
    return names


def test_prod_inventory_and_nixos_configurations_match():
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                           f"(import {FLAKE}/lib/hosts.nix).names"], capture_output=True, text=True, timeout=60)
    assert_ok(proc)
    configurations = set(json.loads(proc.stdout))
    inventory = _inventory_hosts()
    assert inventory, "no hosts found in inventories/prod.py"
    assert configurations == inventory, (
        f"only in the inventory: {sorted(inventory - configurations)}; "
        f"only in flake/hosts: {sorted(configurations - inventory)}")


def test_inventory_nixos_config_names_exist():
    text = (REPO / "inventories/prod.py").read_text()
    for name in _inventory_hosts():
        assert f'"nixos_config": "{name}"' in text


def test_python_defaults_equal_the_flake_defaults():
    assert json.loads((FLAKE / "lib/defaults.json").read_text()) == fleetconfig.DEFAULTS


def _attr_names(nix: str, start: str, end: str) -> set[str]:
    """Attribute names assigned or inherited between two markers of a Nix file."""
    block = nix[nix.index(start):nix.index(end, nix.index(start))]
    names = set(re.findall(r"\b([a-z_]+) =", block))
    for inherited in re.findall(r"inherit \([^)]*\) ([^;]+);", block):
        names.update(inherited.split())
    return names


def test_fleet_module_writes_every_key_the_python_side_reads():
    module = (FLAKE / "modules/fleet.nix").read_text()
    written = _attr_names(module, "fleetConfig = {", "\nin\n")
    read = {f.name for f in dataclasses.fields(fleetconfig.FleetConfig)} | {"schema"}
    read |= {f.name for f in dataclasses.fields(fleetconfig.HealthPolicy)}
    read |= {f.name for f in dataclasses.fields(fleetconfig.ServiceConfig)}
    assert read <= written, f"read by Python, never written by fleet.nix: {sorted(read - written)}"
    assert 'environment.etc."ipex-fleet/config.json"' in module


def test_modules_use_the_module_system_idioms():
    modules = {p.name: p.read_text() for p in (FLAKE / "modules").glob("*.nix")}
    for name in ("ipex.nix", "ollama.nix", "comfyui.nix", "fleet.nix"):
        assert "mkEnableOption" in modules[name] and "mkIf" in modules[name], name
        assert "description =" in modules[name] and "types." in modules[name]
    assert "acceleration = xpu needs services.ipex.enable" in modules["ollama.nix"]
    assert "acceleration = xpu needs services.ipex.enable" in modules["comfyui.nix"]
    # Ollama is built on nixpkgs' services.ollama, not a copy of it.
    assert "services.ollama = {" in modules["ollama.nix"] and "systemd.services.ollama.serviceConfig" in modules["ollama.nix"]
    for hardening in ("ProtectSystem = \"strict\"", "PrivateTmp = true", "NoNewPrivileges = true", "DeviceAllow",
                      "DynamicUser = true", "MemoryMax"):
        assert hardening in modules["comfyui.nix"], hardening


def test_flake_outputs_are_declared():
    flake = (FLAKE / "flake.nix").read_text()
    for output in ("nixosModules", "overlays.intel-xpu", "packages.${system}", "nixosConfigurations",
                   "devShells.${system}.default", "checks.${system}"):
        assert output in flake, output
    for module in ("ipex", "ollama", "comfyui", "models", "fleet", "default"):
        assert f"{module} =" in flake


def test_lab_host_config_json_is_read_by_the_python_side(tmp_path):
    """The lab's generation writes the same schema: build one and load its config.json."""
    from ipex_fleet.lab.fleet import FLAKE_SOURCE, LABPKGS_SOURCE, LABPKGS_URL_MARK
    import shutil

    flake = tmp_path / "flake"
    shutil.copytree(FLAKE_SOURCE, flake, ignore=shutil.ignore_patterns("__pycache__"))
    # The lab serves its input over HTTP; here the same source as a path input.
    nix = flake / "flake.nix"
    nix.write_text(nix.read_text().replace(LABPKGS_URL_MARK, f"path:{LABPKGS_SOURCE}"))
    (flake / "hosts").mkdir()
    (flake / "hosts" / "hostx.json").write_text(json.dumps({"version": "1", "address": "127.0.99.1"}))
    env = {"NIX_CONFIG": "experimental-features = nix-command flakes", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(["nix", "flake", "lock", f"path:{flake}"], check=True, capture_output=True, timeout=120, env=env)
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                           f"(builtins.getFlake \"path:{flake}\").nixosConfigurations.hostx.config.system.build.toplevel.fleetConfigJson"],
                          capture_output=True, text=True, timeout=120,
                          env={"NIX_CONFIG": "experimental-features = nix-command flakes", "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path)})
    assert_ok(proc)
    config = fleetconfig.FleetConfig.from_json(json.loads(json.loads(proc.stdout)))
    assert config.host == "hostx" and config.services["ollama"].url == "http://127.0.99.1:11434"
    assert config.health.bench_tolerance == fleetconfig.DEFAULTS["health"]["bench_tolerance"]
