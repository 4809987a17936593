"""What a deploy would do to each host, found without changing what runs there.

`ipex-fleet plan INVENTORY` (deploys/plan.py) and `pyinfra INVENTORY deploys/prod.py --dry` both
run this for every host: the flake is pushed and the toplevel built (as `nixos-rebuild
dry-build` would: the store grows, no profile, boot entry or running system changes), and then
it reads, against the host's current generation:
- unchanged or not;
- the closure difference (`nix store diff-closures`), summarised, and the bytes new to the host;
- whether a reboot is needed: kernel, initrd, kernel modules or firmware differ from the booted
  system's;
- the units `switch-to-configuration dry-activate` would stop, restart and start;
- the declared model files the host lacks.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from shlex import quote
from typing import Any

from ipex_fleet.domain import Action, Generation
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.transaction import hostagent
from ipex_fleet.common.files import write_json_atomic
from ipex_fleet.ledger.results import run_dir
from ipex_fleet.transaction.core import HostTransaction, StepFailed, sh, show_state
from ipex_fleet.transaction.models import PLAN_DIR, plan_for
from ipex_fleet.transaction.system import build, push_flake, record_previous

_DIFF_LINE = re.compile(r"^(?P<name>[^:]+): (?P<rest>.*)$")
_DRY_UNITS = re.compile(r"^would (?P<verb>stop|restart|start|reload) the following units: (?P<units>.*)$")


@dataclass(frozen=True)
class ClosureChange:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # "name: 1.0 → 1.1" as diff-closures says it
    bytes_new: int = 0  # store paths of the target's closure that the current one lacks

    @property
    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed, "
                f"{_size(self.bytes_new)} new")


@dataclass(frozen=True)
class HostPlan:
    host: str
    unchanged: bool
    current: Generation
    target: str | None
    mode: str
    closure: ClosureChange = ClosureChange()
    reboot: tuple[str, ...] = ()  # the boot links that differ from the booted system's
    units: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dry-activate: verb -> units
    models: tuple[str, ...] = ()  # declared model files the host lacks
    open_intent: str | None = None  # a dead run's intent that the deploy would resolve first

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["current"] = self.current.to_json()
        data["closure"]["summary"] = self.closure.summary
        data["reboot_needed"] = bool(self.reboot)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "HostPlan":
        c = data.get("closure") or {}
        return cls(host=data["host"], unchanged=bool(data["unchanged"]), current=Generation.from_json(data["current"]),
                   target=data.get("target"), mode=data.get("mode", "switch"),
                   closure=ClosureChange(tuple(c.get("added", ())), tuple(c.get("removed", ())),
                                         tuple(c.get("changed", ())), int(c.get("bytes_new", 0))),
                   reboot=tuple(data.get("reboot", ())),
                   units={k: tuple(v) for k, v in (data.get("units") or {}).items()},
                   models=tuple(data.get("models", ())), open_intent=data.get("open_intent"))

    def change_key(self) -> str:
        """Hosts with equal keys get the same change (their own toplevels aside)."""
        if self.unchanged:
            return "unchanged"
        return json.dumps([self.closure.added, self.closure.removed, self.closure.changed, self.reboot,
                           self.units, self.models, self.mode, self.open_intent])

    def lines(self) -> list[str]:
        if self.unchanged:
            return [f"unchanged: generation {self.current.number}"]
        out = [f"change: generation {self.current.number} -> {self.target} ({self.mode})",
               f"closure: {self.closure.summary}"]
        out += [f"  {line}" for line in self.closure.changed[:20]]
        out += [f"  + {name}" for name in self.closure.added[:20]]
        out += [f"  - {name}" for name in self.closure.removed[:20]]
        out.append(f"reboot needed: {', '.join(self.reboot)} differ from the booted system" if self.reboot
                   else "reboot needed: no")
        out += [f"would {verb}: {', '.join(units)}" for verb, units in self.units.items() if units]
        if self.models:
            out.append(f"models to fetch: {', '.join(self.models)}")
        if self.open_intent:
            out.append(f"run {self.open_intent} left an open intent: the deploy reverts it first")
        return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def parse_closure(sections: dict[str, list[str]]) -> ClosureChange:
    added, removed, changed = [], [], []
    for line in sections.get("diff", []):
        m = _DIFF_LINE.match(line.strip())
        if not m or line.startswith(("error", "warning")):
            continue
        name, rest = m["name"], m["rest"]
        versions = rest.split(",")[0]
        if "→" not in versions:
            continue  # a size-only change: counted in bytes_new
        before, after = (v.strip() for v in versions.split("→", 1))
        if before == "∅":
            added.append(f"{name} {after}")
        elif after == "∅":
            removed.append(f"{name} {before}")
        else:
            changed.append(f"{name}: {before} → {after}")
    current = {p.strip() for p in sections.get("current", []) if p.strip()}
    try:
        target = json.loads("".join(sections.get("target", [])) or "[]")
    except ValueError:
        target = []
    if isinstance(target, dict):  # newer Nix: {path: info}
        target = [{"path": p, **(info or {})} for p, info in target.items()]
    bytes_new = sum(int(i.get("narSize") or 0) for i in target if i.get("path") not in current)
    return ClosureChange(tuple(added), tuple(removed), tuple(changed), bytes_new)


def parse_reboot(sections: dict[str, list[str]]) -> tuple[str, ...]:
    differ = []
    for line in sections.get("boot", []):
        parts = line.split()
        if len(parts) == 3 and parts[0] in nixcmd.BOOT_LINKS and parts[1] != parts[2]:
            differ.append(parts[0])
    return tuple(differ)


def parse_dry_activate(lines: list[str] | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    units: dict[str, tuple[str, ...]] = {}
    for line in lines:
        m = _DRY_UNITS.match(line.strip())
        if m:
            units[m["verb"]] = tuple(u.strip() for u in m["units"].split(",") if u.strip())
    return units


def plan_host(tx: HostTransaction, host: Any) -> HostPlan:
    """Push, build and compare: nothing that runs on the host changes."""
    found = nixcmd.parse_key_values(list(sh(tx, host, hostagent.read_intent()).stdout_lines))
    open_run = json.loads(found["intent"]).get("run_id") if found.get("intent") else None
    record_previous(tx, host)
    push_flake(tx, host)
    build(tx, host)
    current = tx.previous
    if tx.unchanged:
        return HostPlan(host.name, True, current, current.path, tx.settings.mode.value,
                        open_intent=open_run)
    target = tx.target.path
    assert target is not None and current.path is not None
    report = sh(tx, host, nixcmd.change_report(current.path, target), tx.settings.build_timeout)
    sections = nixcmd.split_sections(report.stdout_lines)
    units: dict[str, tuple[str, ...]] = {}
    if tx.settings.mode.activates:
        dry = sh(tx, host, nixcmd.activate(target, Action.DRY_ACTIVATE), tx.settings.activation_timeout)
        if not dry.ok:
            raise StepFailed(f"dry-activate exited {dry.returncode}: {dry.last_error}")
        units = parse_dry_activate(dry.stdout_lines)
    return HostPlan(host.name, False, current, target, tx.settings.mode.value, parse_closure(sections),
                    parse_reboot(sections), units, models_to_fetch(tx, host), open_run)


def models_to_fetch(tx: HostTransaction, host: Any) -> tuple[str, ...]:
    from ipex_fleet.remote import put_bytes

    plan = plan_for(host)
    if plan is None or not plan.files:
        return ()
    path = f"{PLAN_DIR}/plan-{tx.run_id}.json"
    sh(tx, host, f"mkdir -p {quote(PLAN_DIR)}")
    put_bytes(host, json.dumps(plan.to_json()).encode(), path, timeout=tx.settings.command_timeout)
    try:
        out = sh(tx, host, f"{tx.settings.ipex_fleet_command} models needs --plan {quote(path)}")
    finally:  # the plan holds URLs as given, tokens included
        sh(tx, host, f"rm -f {quote(path)}")
    if not out.ok:
        raise StepFailed(f"models: cannot list what the host lacks: {out.last_error}")
    return tuple(f"{m['kind']}/{m['name']}" for m in json.loads(out.stdout_lines[-1])["missing"])


def plan_step(tx: HostTransaction, host: Any) -> None:
    """deploys/plan.py's one step: the host's plan, written beside the run's results and logged."""
    tx.phase, tx.record_on_host = "plan", False
    found = plan_host(tx, host)
    write_plan(tx.run_id, found)
    for line in found.lines():
        host.log(line)
    tx.finished = True
    show_state(tx, "planned", note="unchanged" if found.unchanged else
               "changes" + (", reboot needed" if found.reboot else ""))


def write_plan(run_id: str, found: HostPlan) -> None:
    write_json_atomic(run_dir(run_id) / "plans" / f"{found.host.replace('/', '_')}.json", found.to_json())


def read_plans(run_id: str) -> list[HostPlan]:
    folder = run_dir(run_id) / "plans"
    return [HostPlan.from_json(json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))] \
        if folder.is_dir() else []


def group(plans: list[HostPlan]) -> list[list[HostPlan]]:
    """Hosts grouped by identical change, changes first, unchanged hosts last."""
    groups: dict[str, list[HostPlan]] = {}
    for p in plans:
        groups.setdefault(p.change_key(), []).append(p)
    return sorted(groups.values(), key=lambda g: (g[0].unchanged, g[0].host))
