"""/etc/ipex-fleet/config.json: what the flake's fleet module tells the host-side tools.

One source of truth for service URLs, model paths and health policy. DEFAULTS mirrors
flake/lib/defaults.json, which the Nix modules read; a test keeps the two equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILE = "/etc/ipex-fleet/config.json"
ACCELERATORS = ("xpu", "cuda", "cpu", "any")

DEFAULTS: dict[str, Any] = {
    "schema": 1,
    "config_file": CONFIG_FILE,
    "ollama": {"host": "127.0.0.1", "port": 11434, "models": "/var/lib/ollama/models", "unit": "ollama.service"},
    "comfyui": {"host": "127.0.0.1", "port": 8188, "models": "/var/lib/comfyui/models", "unit": "comfyui.service"},
    "health": {"levels": [1, 2], "bench_tolerance": 0.15, "memory_fraction": 0.5, "required_checks": []},
    "render_group": "render",
}


class FleetConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServiceConfig:
    url: str
    models: str
    unit: str
    accelerator: str = "cpu"
    smoke_model: str | None = None


@dataclass(frozen=True)
class HealthPolicy:
    levels: tuple[int, ...] = tuple(DEFAULTS["health"]["levels"])
    bench_tolerance: float = DEFAULTS["health"]["bench_tolerance"]
    memory_fraction: float = DEFAULTS["health"]["memory_fraction"]
    required_checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class FleetConfig:
    host: str
    accelerator: str = "any"
    min_devices: int = 1
    render_group: str = DEFAULTS["render_group"]
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    health: HealthPolicy = HealthPolicy()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FleetConfig":
        if data.get("schema") != DEFAULTS["schema"]:
            raise FleetConfigError(f"schema {data.get('schema')!r}, expected {DEFAULTS['schema']}")
        accelerator = data.get("accelerator", "any")
        if accelerator not in ACCELERATORS:
            raise FleetConfigError(f"accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}")
        health = data.get("health") or {}
        try:
            services = {name: ServiceConfig(**svc) for name, svc in (data.get("services") or {}).items()}
            policy = HealthPolicy(
                levels=tuple(int(l) for l in health.get("levels", DEFAULTS["health"]["levels"])),
                bench_tolerance=float(health.get("bench_tolerance", DEFAULTS["health"]["bench_tolerance"])),
                memory_fraction=float(health.get("memory_fraction", DEFAULTS["health"]["memory_fraction"])),
                required_checks=tuple(health.get("required_checks", ())),
            )
        except TypeError as exc:
            raise FleetConfigError(str(exc)) from None
        return cls(host=str(data.get("host", "")), accelerator=accelerator,
                   min_devices=int(data.get("min_devices", 1)),
                   render_group=str(data.get("render_group", DEFAULTS["render_group"])),
                   services=services, health=policy)


def load(path: str | Path = CONFIG_FILE) -> FleetConfig | None:
    """The host's fleet config, or None where the fleet module is not installed."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise FleetConfigError(f"{path}: {exc}") from None
    return FleetConfig.from_json(data)
