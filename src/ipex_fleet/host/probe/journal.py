"""A service unit's state and the last lines its process wrote, for a check whose service does not
answer: a ComfyUI that stopped at start says why in its journal, not over HTTP."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

TAIL = 10


@dataclass(frozen=True)
class UnitTail:
    unit: str
    state: str  # systemctl is-active: active, failed, activating, inactive, ...
    lines: tuple[str, ...]  # the last lines of its latest run, oldest first

    def summary(self) -> str:
        """`comfyui.service failed: <its last line>` (or the state alone when it wrote nothing)."""
        last = next((line for line in reversed(self.lines) if line.strip()), "")
        return f"{self.unit} {self.state}" + (f"; its journal ends: {last.strip()}" if last else "")


def systemd_is_init() -> bool:
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


def _out(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def unit_tail(unit: str, lines: int = TAIL) -> UnitTail | None:
    """The unit's state and its latest run's last lines; None where systemd is not PID 1."""
    if not systemd_is_init():
        return None
    state = _out(["systemctl", "is-active", unit]).strip() or "unknown"
    invocation = _out(["systemctl", "show", "-p", "InvocationID", "--value", unit]).strip()
    # The process's own lines of its latest run (systemd's lines about the unit carry no _SYSTEMD_ fields).
    where = [f"_SYSTEMD_INVOCATION_ID={invocation}"] if invocation else [f"_SYSTEMD_UNIT={unit}"]
    text = _out(["journalctl", "--no-pager", "-q", "-o", "cat", "-n", str(lines), *where])
    return UnitTail(unit, state, tuple(text.splitlines()[-lines:]))
