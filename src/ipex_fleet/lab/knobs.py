"""The lab's per-host settings (`ipex-fleet lab config HOST KEY=VALUE`), read by the lab flake.

They take effect at the next deploy, because they change the host's toplevel derivation.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ipex_fleet.common.errors import UserError
from ipex_fleet.lab.hardware import GPUS

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
SERVICES = ("ollama", "comfyui")
BOOLEAN_KNOBS = {
    "fail_activation": "the activation script fails (switch-to-configuration exits 2)",
    "fail_reactivation": "the generation activates once; activating it again (a revert to it) exits 2",
    "hide_accelerator": "the generation's environment hides the accelerator from torch and services",
    "cpu_hog": "the generation runs a CPU hog beside the services, starving benchmarks",
    "lock_ssh": "activation cuts SSH off, as a broken network or sshd config would",
    "reboot_required": "switch-to-configuration exits 100 (reboot required)",
    "fail_boot": "the generation's boot never completes: each boot uses a try, then the previous entry boots",
    "comfyui_cpu": "ComfyUI runs with --cpu, as on a CPU host: it reports cpu whatever hides the accelerator",
    "fail_comfyui_jobs": "every ComfyUI job fails when it runs (execution_error at its sampler or first node)",
}
KNOBS = {
    "version": "a label; a different version makes a different generation",
    "kernel": "the generation's kernel version (a kernel, initrd and modules of their own: a reboot is needed)",
    "slow_activation": "seconds the activation script takes (0-600), as a slow one does",
    "slow_ollama": "Ollama generates each token with this many times the work (1-20, e.g. 3), as a model that "
                   "lost its accelerator or a slower build does: fewer tokens/s",
    "fail_service": f"a service ({'|'.join(SERVICES)}) that fails to start",
    "gpu": f"the PCI devices and render nodes the host shows from its next boot ({'|'.join(GPUS)}), as that "
           f"box does (for enroll); unset: the machine's own",
    **BOOLEAN_KNOBS,
}
DEFAULTS: dict[str, Any] = {"version": "1"}


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse KEY=VALUE; an empty VALUE resets the knob to its default."""
    key, sep, value = text.partition("=")
    if not sep:
        raise UserError(f"{text!r} is not KEY=VALUE; known keys: {', '.join(KNOBS)}")
    if key not in KNOBS:
        raise UserError(f"unknown lab setting {key!r}; known keys: {', '.join(KNOBS)}")
    if value == "":
        return key, None
    if key in ("version", "kernel"):
        if not _VERSION_RE.fullmatch(value):
            raise UserError(f"{key} {value!r} must be 1-64 of [A-Za-z0-9._+-], starting alphanumeric")
        return key, value
    if key == "slow_activation":
        if not value.isdigit() or int(value) > 600:
            raise UserError(f"slow_activation={value!r}: give whole seconds from 0 to 600")
        return key, int(value) or None
    if key == "slow_ollama":
        try:
            factor = float(value)
        except ValueError:
            factor = 0.0
        if not 1 <= factor <= 20:
            raise UserError(f"slow_ollama={value!r}: give a factor from 1 to 20, e.g. 3")
        return key, None if factor == 1 else factor
    if key == "gpu":
        if value not in GPUS:
            raise UserError(f"gpu={value!r}: the lab's boxes are {', '.join(GPUS)}")
        return key, value
    if key == "fail_service":
        if value not in SERVICES:
            raise UserError(f"fail_service={value!r}: the lab's services are {', '.join(SERVICES)}")
        return key, value
    if value.lower() in ("true", "1", "yes", "on"):
        return key, True
    if value.lower() in ("false", "0", "no", "off"):
        return key, None
    raise UserError(f"{key}={value!r}: use true or false")


def read_settings(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def write_settings(path: Path, settings: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def apply(settings: dict[str, Any], assignments: list[tuple[str, Any]]) -> dict[str, Any]:
    new = dict(settings)
    for key, value in assignments:
        if value is None:
            new.pop(key, None)
            if key in DEFAULTS:
                new[key] = DEFAULTS[key]
        else:
            new[key] = value
    return new
