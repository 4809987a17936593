"""pyinfra facts for Nix and NixOS hosts.

Example:

    from ipex_fleet.nix.facts import NixProfileGenerations
    state = host.get_fact(NixProfileGenerations, profile="/nix/var/nix/profiles/system")
    state.current_generation.path
"""

from __future__ import annotations

from typing import Iterable

from pyinfra.api import FactBase

from ..domain import SYSTEM_PROFILE, Generation, ProfileState
from . import commands


class NixProfileGenerations(FactBase[ProfileState]):
    """Every generation of a Nix profile (number, store path, date) and the current one."""

    def command(self, profile: str = SYSTEM_PROFILE) -> str:
        return commands.profile_state(profile)

    def process(self, output: Iterable[str]) -> ProfileState:
        return commands.parse_profile_state(list(output))


class NixCurrentGeneration(FactBase[Generation]):
    """The generation a profile points at; NO_GENERATION when it has none."""

    def command(self, profile: str = SYSTEM_PROFILE) -> str:
        return commands.profile_state(profile)

    def process(self, output: Iterable[str]) -> Generation:
        return commands.parse_profile_state(list(output)).current_generation


class NixRunningSystem(FactBase[str | None]):
    """The store path of the running system (/run/current-system), or None."""

    def command(self) -> str:
        return commands.running_system()

    def process(self, output: Iterable[str]) -> str | None:
        lines = [l.strip() for l in output if l.strip()]
        return lines[0] if lines and lines[0].startswith("/nix/store/") else None


class NixHost(FactBase[dict[str, str]]):
    """os_id (nixos on NixOS), the Nix version, and free KiB on /nix."""

    def command(self) -> str:
        return commands.preflight()

    def process(self, output: Iterable[str]) -> dict[str, str]:
        return commands.parse_key_values(list(output))


class FlakePushed(FactBase[bool]):
    """Whether the flake with this content hash is already under /var/lib/ipex-fleet/flake/."""

    def command(self, flake_hash: str) -> str:
        return f"{commands.flake_present(flake_hash)} && echo yes || echo no"

    def process(self, output: Iterable[str]) -> bool:
        return "yes" in [l.strip() for l in output]
