"""pyinfra host data for a running lab, for inventories/lab.py."""

from __future__ import annotations

import sys
from typing import Any

from ipex_fleet.lab.fleet import Lab


def lab_hosts(root: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) for every lab host, with SSH pinned to the lab's key and known_hosts."""
    lab = Lab(root)
    layout, spec = lab.layout, lab.spec
    secret, public = layout.cache_keys
    cache_host, cache_port = spec.cache_address
    # For `--data build=controller`: the lab's cache, served over HTTP on loopback, and its keys.
    cache = {
        "cache": f"http://{cache_host}:{cache_port}",
        "cache_public_key": public.read_text().strip() if public.exists() else None,
        "cache_secret_key": str(secret),
        "cache_push": f"file://{layout.cache_dir}?compression=zstd",
        "controller_nix_conf_dir": str(layout.nix_conf_dir),
    }
    return [
        (host.name, {
            "ssh_hostname": host.address,
            "ssh_user": spec.deploy_user or "root",
            # A deploy user gets root through sudo, as pyinfra's own `_sudo` does it.
            **({"_sudo": True} if spec.deploy_user else {}),
            "ssh_key": str(layout.client_key),
            "ssh_known_hosts_file": str(layout.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            # The lab's ssh_config carries ServerAliveInterval: pyinfra then sends keepalives.
            "ssh_config_file": str(layout.ssh_config),
            "flake": str(layout.flake_dir),
            "lab_root": str(layout.root),
            # The generation's own ipex-fleet, as on NixOS: built from the pushed source, run with this
            # virtual environment's Python (hosts see it read-only at the same path, with torch).
            "ipex_fleet_command": "/run/current-system/sw/bin/ipex-fleet",
            "accelerator": "cpu",
            # Lab hosts share two cores: their benchmarks take turns. Other labs and test runs share
            # them too: an inconclusive benchmark is a warning here (production's default: fail).
            "bench_lock": str(layout.shared_dir / "bench.lock"),
            "bench_inconclusive": "warn",
            **cache,
        })
        for host in spec.hosts
    ]


def split_waves(hosts: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """canary (1 host), wave1 (about 2/5 of the rest), wave2 (the remainder)."""
    canary, rest = hosts[:1], hosts[1:]
    first = max(1, len(rest) * 2 // 5) if len(rest) >= 2 else len(rest)
    return canary, rest[:first], rest[first:]
