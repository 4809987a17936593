"""Deploy settings from pyinfra host data, validated before any host is touched."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from typing import Any

from .domain import SYSTEM_PROFILE, Action
from .errors import UserError
from .fleetconfig import ACCELERATORS

_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9._@/-]{0,252}$")
_CONFIG_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/+-]+$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}(:[A-Za-z0-9_.-]+)?$")


@dataclass(frozen=True)
class DeploySettings:
    """What one host's deploy needs, from host data (documented in inventories/group_data/all.py)."""

    flake: str
    nixos_config: str
    mode: Action
    profile: str
    min_free_mb: int
    keep_flakes: int
    command_timeout: float
    build_timeout: float
    activation_timeout: float
    break_lock: bool
    magic_rollback: bool
    # Where toplevels are built: on each target, or once on the controller and pushed to a cache.
    build: str
    cache: str | None
    cache_public_key: str | None
    cache_secret_key: str | None
    cache_push: str | None
    controller_nix_conf_dir: str | None
    confirm_timeout: float
    # The watchdog's lease is each step's own bound plus this margin: a dead controller's host
    # returns by itself within (the step's timeout + lease_grace).
    lease_grace: float
    models_timeout: float
    models_verify: bool  # re-hash every declared model file, not only its marker
    # Mode boot: reboot into the new generation, then run the gates (within reboot_timeout).
    reboot: bool
    reboot_timeout: float
    # Health and benchmark gate (transaction steps 7 and 8).
    ipex_fleet_command: str
    accelerator: str
    min_devices: int
    smoke_model: str | None
    health_levels: tuple[int, ...]
    health_timeout: float
    bench: bool
    bench_tolerance: float
    bench_timeout: float
    bench_lock: str | None
    bench_threads: int | None


def _number(name: str, host: str, value: Any, minimum: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"host {host}: {name}={value!r} is not a number; fix it in host or group data") from None
    if number < minimum:
        raise UserError(f"host {host}: {name}={value!r} must be at least {minimum:g}")
    return number


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def flag(name: str, host: str, value: Any) -> bool:
    """A yes/no host data value: booleans, 0/1, and the words true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise UserError(f"host {host}: {name}={value!r} is not yes or no; use true/false, yes/no or on/off")


def _command(key: str, host: str, value: Any) -> str:
    """A command given as words (a string split like a shell would, or a list), quoted once for the host."""
    try:
        words = [str(w) for w in value] if isinstance(value, (list, tuple)) else shlex.split(str(value))
    except ValueError as exc:
        raise UserError(f"host {host}: {key}={value!r} cannot be split into words ({exc})") from None
    if not words or any(not w or "\n" in w or "\0" in w for w in words):
        raise UserError(f"host {host}: {key}={value!r}: give the command's words, like "
                        "'/run/current-system/sw/bin/ipex-fleet'")
    return shlex.join(words)


def check_host_name(name: str) -> str:
    if not _HOST_NAME_RE.match(name):
        raise UserError(f"host {name!r}: the name may hold only letters, digits and . _ - @ /; "
                        "rename it in the inventory (set ssh_hostname for the address)")
    return name


def from_host_data(name: str, data: Any) -> DeploySettings:
    """Validate `data` (pyinfra HostData or a dict) and return the settings; raise UserError."""
    check_host_name(name)
    get = data.get
    flake = get("flake")
    if not flake:
        raise UserError(f"host {name}: no flake set; set host data flake=PATH (a directory with flake.nix)")
    flake_path = os.path.abspath(str(flake))
    if not os.path.isfile(os.path.join(flake_path, "flake.nix")):
        raise UserError(f"host {name}: flake {flake!r} has no flake.nix (looked in {flake_path}); "
                        "fix host data flake=PATH")
    config = str(get("nixos_config") or name)
    if not _CONFIG_NAME_RE.match(config):
        raise UserError(f"host {name}: nixos_config {config!r} is not a plain attribute name; "
                        "set host data nixos_config to the flake's nixosConfigurations name")
    mode_text = str(get("mode") or Action.SWITCH.value)
    try:
        mode = Action(mode_text)
    except ValueError:
        raise UserError(f"host {name}: unknown mode {mode_text!r}; use one of "
                        f"{', '.join(a.value for a in Action)}") from None
    if flag("reboot", name, get("reboot", False)) and mode != Action.BOOT:
        raise UserError(f"host {name}: reboot=true goes with mode=boot (switch and test activate without one)")
    profile = str(get("nix_profile") or SYSTEM_PROFILE)
    if not _PATH_RE.match(profile):
        raise UserError(f"host {name}: nix_profile {profile!r} must be an absolute path of plain characters")
    return DeploySettings(
        flake=flake_path,
        nixos_config=config,
        mode=mode,
        profile=profile,
        min_free_mb=int(_number("min_free_mb", name, get("min_free_mb", 1024), 0)),
        keep_flakes=int(_number("keep_flakes", name, get("keep_flakes", 5), 1)),
        command_timeout=_number("command_timeout", name, get("command_timeout", 60), 1),
        build_timeout=_number("build_timeout", name, get("build_timeout", 3600), 1),
        activation_timeout=_number("activation_timeout", name, get("activation_timeout", 600), 1),
        break_lock=flag("break_lock", name, get("break_lock", False)),
        magic_rollback=flag("magic_rollback", name, get("magic_rollback", True)),
        **_build_settings(name, get),
        confirm_timeout=_number("confirm_timeout", name, get("confirm_timeout", 30), 1),
        lease_grace=_number("lease_grace", name, get("lease_grace", 30), 2),
        models_timeout=_number("models_timeout", name, get("models_timeout", 3600), 1),
        models_verify=flag("models_verify", name, get("models_verify", False)),
        reboot=flag("reboot", name, get("reboot", False)),
        reboot_timeout=_number("reboot_timeout", name, get("reboot_timeout", 600), 5),
        **_health_settings(name, get),
    )


def _health_settings(name: str, get: Any) -> dict[str, Any]:
    accelerator = str(get("accelerator", "any"))
    if accelerator not in ACCELERATORS:
        raise UserError(f"host {name}: accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}")
    levels = get("health_levels", [1, 2])
    if isinstance(levels, (int, str)):
        levels = [levels]
    try:
        parsed = tuple(sorted({int(l) for l in levels}))
    except (TypeError, ValueError):
        parsed = (0,)
    if any(l not in (1, 2, 3) for l in parsed):
        raise UserError(f"host {name}: health_levels={levels!r}: use levels 1, 2 and 3 (or [] for none)")
    tolerance = _number("bench_tolerance", name, get("bench_tolerance", 0.15), 0.01)
    if tolerance >= 1:
        raise UserError(f"host {name}: bench_tolerance={tolerance:g} must be below 1 (0.15 means 15% slower)")
    smoke = get("smoke_model")
    if smoke is not None and not _MODEL_RE.match(str(smoke)):
        raise UserError(f"host {name}: smoke_model {smoke!r} is not an Ollama model name")
    lock = get("bench_lock")
    if lock is not None and not _PATH_RE.match(str(lock)):
        raise UserError(f"host {name}: bench_lock {lock!r} must be an absolute path of plain characters")
    return {
        "ipex_fleet_command": _command("ipex_fleet_command", name, get("ipex_fleet_command", "ipex-fleet")),
        "accelerator": accelerator,
        "min_devices": int(_number("min_devices", name, get("min_devices", 1), 1)),
        "smoke_model": str(smoke) if smoke is not None else None,
        "health_levels": parsed,
        "health_timeout": _number("health_timeout", name, get("health_timeout", 300), 1),
        "bench": flag("bench", name, get("bench", True)),
        "bench_tolerance": tolerance,
        "bench_timeout": _number("bench_timeout", name, get("bench_timeout", 300), 1),
        "bench_lock": str(lock) if lock is not None else None,
        "bench_threads": int(_number("bench_threads", name, get("bench_threads"), 1))
        if get("bench_threads") is not None else None,
    }


def _build_settings(name: str, get: Any) -> dict[str, Any]:
    build = str(get("build", "target"))
    if build not in ("target", "controller"):
        raise UserError(f"host {name}: build={build!r}: use target (build on the host) or controller (build once, "
                        "push to the binary cache)")
    values = {k: (str(get(k)) if get(k) is not None else None)
              for k in ("cache", "cache_public_key", "cache_secret_key", "cache_push", "controller_nix_conf_dir")}
    if build == "controller":
        missing = [k for k in ("cache", "cache_public_key", "cache_secret_key", "cache_push") if not values[k]]
        if missing:
            raise UserError(f"host {name}: build=controller needs host data {', '.join(missing)} "
                            "(the cache hosts read, its signing keys, and where the controller pushes)")
        if not os.path.isfile(values["cache_secret_key"] or ""):
            raise UserError(f"host {name}: cache_secret_key {values['cache_secret_key']} does not exist; "
                            "make one with nix-store --generate-binary-cache-key")
    return {"build": build, **values}
