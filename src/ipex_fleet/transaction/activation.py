"""Step 5's parts on the host: the activation's outcome (an SSH session lost mid-activation is
re-attached, never acted on while the activation runs), what switch-to-configuration's exit says,
and a reboot into the target (mode boot with host data reboot).
"""

from __future__ import annotations

import time
from typing import Any

from pyinfra import logger

from ipex_fleet.transaction import hostagent
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.remote import HostUnreachable, RemoteResult, SessionLost, StepTimeout
from ipex_fleet.common.waiting import wait_until
from ipex_fleet.transaction.core import HostTransaction, StepFailed, running_system, sh, show_state

def reattach_activation(tx: HostTransaction, host: Any, call_id: str, started: float,
                        lost: SessionLost) -> RemoteResult:
    """The session died mid-activation, but the activation runs on in its own unit: wait for it over
    new connections and take its own recorded exit code, never act while it still runs. A unit seen
    ended without an exit code twice in a row (the host crashed or rebooted, the unit was killed, or
    the command never reached the host) is a failed activation at once, not a wait for
    activation_timeout: the revert that follows claims the intent, so the fence refuses any copy of
    the command delivered later."""
    host.log(f"{lost}; waiting for the activation over a new connection", logger.warning)
    tx.fresh_connections = True
    found: list[RemoteResult] = []  # the answers that were not a recorded exit code, in a row
    recorded: list[RemoteResult] = []

    def ended() -> bool:
        try:
            outcome = sh(tx, host, nixcmd.activation_outcome(tx.settings.mode, call_id))
        except (HostUnreachable, StepTimeout):
            found.clear()  # gone twice means twice in a row
            return False
        own, stdout = nixcmd.take_recorded(outcome.stdout_lines)
        if own:  # the unit's exit code, whatever it is (75 and 76 included)
            recorded.append(RemoteResult(outcome.returncode, stdout, outcome.stderr_lines))
            return True
        found.append(outcome)
        if outcome.returncode == nixcmd.ACTIVATION_GONE:
            return len(found) >= 2 and found[-2].returncode == nixcmd.ACTIVATION_GONE
        return outcome.returncode != nixcmd.ACTIVATION_RUNNING

    left = started + tx.settings.activation_timeout - time.monotonic()
    if not wait_until(ended, max(left, 0.0), "the activation's recorded exit code", interval=0.5):
        raise StepTimeout(f"the activation did not finish within {tx.settings.activation_timeout:g}s after "
                          "the SSH session was lost")
    if recorded:
        return recorded[-1]
    if found[-1].returncode == nixcmd.ACTIVATION_GONE:
        raise StepFailed(found[-1].last_error.removeprefix("ipex-fleet: "))
    return found[-1]


def accepted_activation_codes(tx: HostTransaction) -> tuple[int, ...]:
    """The exit codes of switch-to-configuration that check_activation lets on: 0, 100 (a reboot is
    required) and, where health checks follow to name the unit, 4 (units failed to start)."""
    return (0, 100, 4) if tx.settings.health_levels != () else (0, 100)


def check_activation(tx: HostTransaction, host: Any, activated: RemoteResult) -> None:
    mode, path = tx.settings.mode, tx.target.path
    stdout, running = nixcmd.take_running(activated.stdout_lines)
    activated = RemoteResult(activated.returncode, stdout, activated.stderr_lines)
    if activated.returncode == 100:
        tx.reboot_required = True
        host.log("switch-to-configuration: reboot required", logger.warning)
    elif activated.returncode == 4 and 4 in accepted_activation_codes(tx):
        # Units failed to start: the health checks that follow name which service and why.
        host.log(f"switch-to-configuration: {activation_error(activated)}", logger.warning)
    elif not activated.ok:
        raise StepFailed(f"switch-to-configuration {mode.value} exited {activated.returncode}: "
                         f"{activation_error(activated)}")
    if mode.activates:
        if running is None:  # the activation's own round trip did not say (reattached after a lost session)
            running = running_system(tx, host)
        if running != path:
            raise StepFailed(f"after activation /run/current-system is {running or 'missing'}, not {path}")


def activation_error(activated: RemoteResult) -> str:
    return nixcmd.activation_error(activated.stdout_lines + activated.stderr_lines) or activated.last_error


def reboot_into_target(tx: HostTransaction, host: Any) -> None:
    """Mode boot with host data reboot: reboot, wait for a new boot id within reboot_timeout, and check
    that the target booted. A host that booted the previous generation fell back."""
    show_state(tx, "rebooting")
    before = sh(tx, host, nixcmd.boot_id()).stdout.strip()
    sh(tx, host, nixcmd.schedule_reboot(tx.run_id))
    tx.fresh_connections = True  # this session ends with the boot
    seen: dict[str, Any] = {"boot_id": None, "settled": 0, "booted": ""}

    def booted_and_settled() -> bool:
        try:
            now = nixcmd.parse_key_values(list(sh(tx, host, nixcmd.boot_state(), timeout=10).stdout_lines))
        except (HostUnreachable, StepTimeout):
            seen["settled"] = 0
            return False
        # A boot counts once it finished (twice in a row): a boot whose check fails reboots again.
        done = now.get("boot_id") not in ("", before) and now.get("state") in ("running", "degraded")
        seen["settled"] = seen["settled"] + 1 if done and now.get("boot_id") == seen["boot_id"] else int(done)
        seen["boot_id"], seen["booted"] = now.get("boot_id"), now.get("booted", "")
        return seen["settled"] >= 2

    if not wait_until(booted_and_settled, tx.settings.reboot_timeout, "a completed boot", first_wait=True):
        raise StepFailed(f"no completed boot within {tx.settings.reboot_timeout:g}s (host data reboot_timeout)")
    booted = seen["booted"]
    host.log(f"rebooted into {booted}")
    # The boot unit re-armed the watchdog from the new boot; arm it here too, for a booted generation
    # that lacks the unit (idempotent).
    sh(tx, host, hostagent.command("rearm", "--intent", str(tx.intent_id)))
    if booted != tx.target.path:
        raise StepFailed(f"fell back: booted {booted or 'nothing'}, not the target {tx.target.path} "
                         "(its boot did not complete, so the boot loader chose the previous entry)")
