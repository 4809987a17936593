"""A Nix profile as a host reads it (standard library only): ipex-fleet's state directory, the system profile,
its generations and the one it points at, the boot links whose change needs a reboot. The controller's
domain and nix.commands import these from here (the controller may import the host side, never the reverse).
The paths, a profile link's number and the boot links are the host agent's (a lone file that imports nothing
of the package): one copy, read here from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ipex_fleet.host.agent import BOOT_LINKS, STATE_DIR, SYSTEM_PROFILE, generation_of

__all__ = ["BOOT_LINKS", "NO_GENERATION", "STATE_DIR", "SYSTEM_PROFILE", "Generation", "ProfileState",
           "parse_profile_state"]


@dataclass(frozen=True)
class Generation:
    """One generation of a Nix profile."""

    number: int | None
    path: str | None
    date: int | None = None  # unix time of the profile link

    def to_json(self) -> dict[str, Any]:
        return {"generation": self.number, "path": self.path}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "Generation":
        data = data or {}
        return cls(number=data.get("generation"), path=data.get("path"))


NO_GENERATION = Generation(None, None)


@dataclass(frozen=True)
class ProfileState:
    """Every generation of a profile, and the one it points at."""

    generations: tuple[Generation, ...]
    current: int | None

    @property
    def current_generation(self) -> Generation:
        for gen in self.generations:
            if gen.number == self.current:
                return gen
        return NO_GENERATION

    def by_number(self, number: int) -> Generation | None:
        return next((g for g in self.generations if g.number == number), None)

    def by_path(self, path: str) -> Generation | None:
        """The newest generation whose store path is `path`."""
        matches = [g for g in self.generations if g.path == path]
        return max(matches, key=lambda g: g.number or 0) if matches else None


def parse_profile_state(lines: list[str]) -> ProfileState:
    generations: list[Generation] = []
    current: int | None = None
    for line in lines:
        parts = line.split()
        if parts and parts[0] == "current":
            current = generation_of(parts[1]) if len(parts) > 1 else None
        elif len(parts) == 3 and (number := generation_of(parts[0])) is not None:
            generations.append(Generation(number, parts[2], int(parts[1])))
    generations.sort(key=lambda g: g.number or 0)
    return ProfileState(tuple(generations), current)
