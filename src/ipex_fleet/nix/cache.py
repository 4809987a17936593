"""Closures through a binary cache: build each distinct toplevel once on the controller, sign it,
push it (zstd), and let hosts substitute it with the signing key trusted.

Hosts refuse a path that is unsigned or signed by another key (Nix's require-sigs).
"""

from __future__ import annotations

import json
import os
from shlex import quote
from typing import Any


from ipex_fleet.common.errors import CommandFailed
from ipex_fleet.nix.flakepush import materialize
from ipex_fleet.runner import run
from ipex_fleet.settings import DeploySettings



class CacheError(Exception):
    pass


def _nix_env(settings: DeploySettings) -> dict[str, str] | None:
    return {"NIX_CONF_DIR": settings.controller_nix_conf_dir} if settings.controller_nix_conf_dir else None


def _run_nix(argv: list[str], settings: DeploySettings, timeout: float) -> str:
    try:
        return run(argv, timeout=timeout, env=_nix_env(settings)).stdout
    except CommandFailed as exc:
        raise CacheError(str(exc)) from None


def build_all(hosts: list[tuple[str, DeploySettings]], built: dict[tuple[str, str], str]) -> dict[str, str]:
    """Build the toplevels of every controller-built host in one `nix build` per flake.

    Nix builds each distinct derivation once, however many hosts share it. Then sign and push.
    """
    by_flake: dict[str, list[tuple[str, DeploySettings]]] = {}
    for name, s in hosts:
        if (s.flake, s.nixos_config) not in built:
            by_flake.setdefault(s.flake, []).append((name, s))
    for flake, members in by_flake.items():
        settings = members[0][1]
        configs = sorted({s.nixos_config for _, s in members})
        pushed = materialize(flake)  # build what the hosts would get, never the checkout
        installables = [f"path:{pushed}#nixosConfigurations.{c}.config.system.build.toplevel" for c in configs]
        out = _run_nix(["nix", "--extra-experimental-features", "nix-command flakes", "build", "--json",
                        "--no-link", "--no-write-lock-file", *installables], settings, settings.build_timeout)
        paths = [entry["outputs"]["out"] for entry in json.loads(out)]
        _run_nix(["nix", "--extra-experimental-features", "nix-command", "store", "sign", "--recursive",
                  "--key-file", str(settings.cache_secret_key), *paths], settings, settings.build_timeout)
        _run_nix(["nix", "--extra-experimental-features", "nix-command", "copy", "--to", str(settings.cache_push),
                  *paths], settings, settings.build_timeout)
        for config, path in zip(configs, paths):
            built[(flake, config)] = path
    return {name: built[(s.flake, s.nixos_config)] for name, s in hosts}


def toplevel_for(host: Any, settings: DeploySettings, inventory: Any) -> str:
    """This host's toplevel, built (once for the whole run) on the controller and pushed to the cache."""
    from ipex_fleet.transaction import runstate
    from ipex_fleet.settings import from_host_data

    run = runstate.of(host.state)
    with run.build_lock:  # the first host builds for everyone; the others find the result
        key = (settings.flake, settings.nixos_config)
        if key not in run.built:
            peers = [(h.name, from_host_data(h.name, h.data)) for h in inventory.iter_activated_hosts()]
            peers = [(n, s) for n, s in peers if s.build == "controller"]
            built = build_all(peers, run.built)
            host.log(f"built {len(set(built.values()))} toplevel(s) on the controller for {len(peers)} host(s), "
                     f"signed and pushed to {settings.cache_push}")
    return run.built[(settings.flake, settings.nixos_config)]


def substitute(path: str, settings: DeploySettings) -> str:
    """The host-side command: fetch `path` from the cache, trusting only the fleet's key."""
    return (
        f"nix-store --realise {quote(path)} --option substituters {quote(str(settings.cache))} "
        f"--option trusted-public-keys {quote(str(settings.cache_public_key))} --option require-sigs true "
        "--option narinfo-cache-negative-ttl 0"
    )


def generate_key(name: str, secret: str, public: str) -> None:
    if not os.path.exists(secret):
        run(["nix-store", "--generate-binary-cache-key", name, secret, public], timeout=60)
