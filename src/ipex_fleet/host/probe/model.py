"""The probe's results: each check ends pass, warn, fail or skip, with a message a person can act on."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Result(str, enum.Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Outcome:
    result: Result
    message: str
    data: dict[str, Any] = field(default_factory=dict)


def passed(message: str, **data: Any) -> Outcome:
    return Outcome(Result.PASS, message, data)


def warned(message: str, **data: Any) -> Outcome:
    return Outcome(Result.WARN, message, data)


def failed(message: str, **data: Any) -> Outcome:
    return Outcome(Result.FAIL, message, data)


def skipped(message: str, **data: Any) -> Outcome:
    return Outcome(Result.SKIP, message, data)


@dataclass(frozen=True)
class CheckResult:
    name: str
    level: int
    result: Result
    message: str
    data: dict[str, Any]
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level, "result": self.result.value, "message": self.message,
                "data": self.data, "duration_s": round(self.duration_s, 3)}


def overall(checks: list[CheckResult], required: tuple[str, ...] = ()) -> Result:
    """fail if any check failed (or a required one did not pass), else warn if any warned."""
    if any(c.result is Result.FAIL or (c.name in required and c.result is not Result.PASS) for c in checks):
        return Result.FAIL
    if any(c.result is Result.WARN for c in checks):
        return Result.WARN
    return Result.PASS
