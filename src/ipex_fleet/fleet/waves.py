"""Waves: inventory groups in order (canary, wave1, ...), named groups, or an Ansible-like spec."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ipex_fleet.common.errors import UserError
from ipex_fleet.fleet.inventory import InventoryView

_GROUP_WAVE = re.compile(r"^wave(\d+)$")


@dataclass(frozen=True)
class Wave:
    index: int
    name: str
    hosts: tuple[str, ...]
    max_fail: str  # "N" or "P%"


@dataclass(frozen=True)
class Budget:
    spec: str

    @classmethod
    def parse(cls, text: str, flag: str = "--max-fail") -> "Budget":
        if not re.fullmatch(r"\d+%?", text or ""):
            raise UserError(f"{flag} {text!r}: give a host count (2) or a percentage (10%)")
        if text.endswith("%") and int(text[:-1]) > 100:
            raise UserError(f"{flag} {text}: a percentage is at most 100%")
        return cls(text)

    def exceeded(self, failed: int, size: int) -> bool:
        """Spent only when exceeded, not when equalled (Ansible's max_fail_percentage)."""
        if self.spec.endswith("%"):
            return size > 0 and failed * 100 > int(self.spec[:-1]) * size
        return failed > int(self.spec)


def from_groups(view: InventoryView, names: list[str] | None) -> list[tuple[str, tuple[str, ...]]]:
    if names is None:
        ordered = ["canary"] if "canary" in view.groups else []
        numbered = sorted((int(m.group(1)), g) for g in view.groups if (m := _GROUP_WAVE.match(g)))
        names = ordered + [g for _, g in numbered]
        if not names:
            raise UserError(f"{view.path} has no canary/wave1/... groups; give --waves canary,wave1 or --waves 1,10%,100%")
    missing = [n for n in names if n not in view.groups]
    if missing:
        raise UserError(f"no group {', '.join(missing)} in {view.path} (groups: {', '.join(sorted(view.groups))})")
    return [(n, view.groups[n]) for n in names]


def from_spec(view: InventoryView, spec: str) -> list[tuple[str, tuple[str, ...]]]:
    """Ansible's serial: sizes in order, the last one repeating; every batch has at least one host."""
    sizes = []
    total = len(view.hosts)
    for part in spec.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+%", part) and 0 < int(part[:-1]) <= 100:
            sizes.append(max(1, total * int(part[:-1]) // 100))
        elif re.fullmatch(r"\d+", part) and int(part) > 0:
            sizes.append(int(part))
        else:
            raise UserError(f"--waves {spec!r}: each part is a host count (3) or a percentage (10%)")
    batches, start, i = [], 0, 0
    while start < total:
        size = sizes[min(i, len(sizes) - 1)]
        batches.append((f"batch{i + 1}", view.hosts[start:start + size]))
        start += size
        i += 1
    return batches


def plan(view: InventoryView, waves: str | None, max_fail: str, canary_max_fail: str) -> list[Wave]:
    Budget.parse(max_fail)
    Budget.parse(canary_max_fail)
    if waves and all(re.fullmatch(r"\s*\d+%?\s*", p) for p in waves.split(",")):
        groups = from_spec(view, waves)
    else:
        groups = from_groups(view, [w.strip() for w in waves.split(",")] if waves else None)
    seen: set[str] = set()
    out = []
    for index, (name, hosts) in enumerate(groups):
        hosts = tuple(h for h in hosts if h not in seen)  # a host deploys once, in its first wave
        seen.update(hosts)
        if hosts:
            out.append(Wave(len(out), name, hosts, canary_max_fail if not out else max_fail))
    return out
