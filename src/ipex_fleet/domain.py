"""The domain, as frozen values: generations, actions, host results."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from ipex_fleet.host.nixprofile import NO_GENERATION, STATE_DIR, SYSTEM_PROFILE, Generation, ProfileState


class Action(str, enum.Enum):
    """The modes of switch-to-configuration."""

    SWITCH = "switch"
    TEST = "test"
    BOOT = "boot"
    DRY_ACTIVATE = "dry-activate"

    @property
    def activates(self) -> bool:
        """Whether this action makes the generation the running system."""
        return self in (Action.SWITCH, Action.TEST)

    @property
    def sets_profile(self) -> bool:
        return self in (Action.SWITCH, Action.BOOT)


class Status(str, enum.Enum):
    OK = "ok"
    UNCHANGED = "unchanged"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"
    REVERT_FAILED = "revert-failed"  # a revert that did not verify: loud, never a success
    PAUSED = "paused"  # on probation: intent open, lease set to the pause timeout, waiting for a person

    @property
    def succeeded(self) -> bool:
        return self in (Status.OK, Status.UNCHANGED)


@dataclass(frozen=True)
class HostResult:
    """One host's outcome of one deploy: the contract of DESIGN.md."""

    host: str
    run_id: str
    status: Status
    previous: Generation = NO_GENERATION
    target: Generation = NO_GENERATION
    final: Generation = NO_GENERATION
    health: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    reboot_required: bool = False
    flake_hash: str | None = None
    report: dict[str, Any] | None = None  # a maintenance run's: what each task did, freed and found

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        for key in ("previous", "target", "final"):
            data[key] = getattr(self, key).to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "HostResult":
        return cls(
            host=data["host"],
            run_id=data["run_id"],
            status=Status(data["status"]),
            previous=Generation.from_json(data.get("previous")),
            target=Generation.from_json(data.get("target")),
            final=Generation.from_json(data.get("final")),
            health=data.get("health"),
            bench=data.get("bench"),
            timings=data.get("timings") or {},
            error=data.get("error"),
            reboot_required=bool(data.get("reboot_required")),
            flake_hash=data.get("flake_hash"),
            report=data.get("report"),
        )
