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

from ipex_fleet.host import fleetconfig

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


def _host_names(flake: Path) -> list[str]:
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                           f"(import {flake}/lib/hosts.nix).names"], capture_output=True, text=True, timeout=60)
    assert_ok(proc)
    return json.loads(proc.stdout)


def test_hosts_are_folders_and_nothing_else_makes_a_host(tmp_path):
    """hosts/<name>/default.nix makes a host; a stray file (the old advice's `<h>-hardware.nix`), a
    folder without default.nix, or a hardware file alone make none."""
    import shutil

    flake = tmp_path / "flake"
    shutil.copytree(FLAKE, flake)
    hosts = flake / "hosts"
    (hosts / "arc-a770-01-hardware.nix").write_text("{ }\n")
    (hosts / "notes").mkdir()
    (hosts / "notes" / "README.md").write_text("not a host\n")
    (hosts / "half").mkdir()
    (hosts / "half" / "hardware-configuration.nix").write_text("{ }\n")
    (hosts / "new-01").mkdir()
    (hosts / "new-01" / "default.nix").write_text("{ }\n")
    assert sorted(_host_names(flake)) == sorted(_inventory_hosts() | {"new-01"})
    proc = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                           f"map toString (import {flake}/lib/hosts.nix).modules.new-01"],
                          capture_output=True, text=True, timeout=60)
    assert_ok(proc)
    assert json.loads(proc.stdout) == [f"{flake}/hosts/new-01/default.nix"]  # no hardware file: the assertion says so


def test_every_example_host_has_a_marked_example_hardware_file():
    for name in _host_names(FLAKE):
        default = (FLAKE / "hosts" / name / "default.nix").read_text()
        hardware = (FLAKE / "hosts" / name / "hardware-configuration.nix").read_text()
        assert hardware.startswith("# EXAMPLE hardware configuration, not this host's"), name
        assert 'fileSystems."/"' in hardware and "boot.loader.systemd-boot.enable = true;" in default, name


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
