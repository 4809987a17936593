"""What every step of the one-host transaction shares: its running record, its errors, the way it
runs a command on the host (one place, with a timeout), and the host's profile as read there.

The steps live in `flow` (the transaction, top to bottom) and the modules it calls; none of them
imports `flow`, so nothing here imports inside a function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from typing import Any, Callable

from pyinfra import logger

from ipex_fleet.domain import NO_GENERATION, Generation, HostResult, ProfileState, Status
from ipex_fleet.transaction import heartbeat, progress, runstate
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.remote import RemoteResult, run, run_fresh
from ipex_fleet.settings import DeploySettings, from_host_data

class StepFailed(Exception):
    """A step found the host unfit to continue; the message says why."""


class LockRefused(StepFailed):
    """Another run holds the host's lock."""


class Fenced(LockRefused):
    """This run's lock ran out and another run took the host (or moved it): nothing was switched, and
    what this run recorded before (its `previous`) no longer describes the host."""


class WatchdogReverted(StepFailed):
    """The host decided by itself (its watchdog or a recovery: the lease ran out) and restored the
    recorded generation, verified; or tried to and failed (`status` REVERT_FAILED)."""

    def __init__(self, message: str, final: Generation, status: "Status") -> None:
        super().__init__(message)
        self.final, self.status = final, status


class CommittedAfterAll(Exception):
    """Awaiting a revert, the host says this run's intent was committed: the run's own commit won and
    its answer was lost, or an approval committed a host on probation. The host's record says so. Not
    a StepFailed: no failure handler may take it for one."""


@dataclass
class HostTransaction:
    """The running record of one host's deploy (mutable: it accumulates as steps run)."""

    host: str
    run_id: str
    settings: DeploySettings
    previous: Generation = NO_GENERATION
    target: Generation = NO_GENERATION
    flake_hash: str | None = None
    dry_run: bool = False  # mode dry-activate: a report, nothing else runs
    boot_pending: bool = False  # mode boot without a reboot: the gates wait for the next boot
    unchanged: bool = False
    reboot_required: bool = False
    locked: bool = False
    lock_token: str | None = None  # the host's fencing token for this run's lock (host agent)
    intent_id: str | None = None  # this transaction's own intent (never the run id: a resumed run opens anew)
    agent_ready: bool = False  # this version of the host agent is installed on the host
    fast_unchanged: bool = False  # nothing to do, known after one round trip: no lock, no record
    looked: bool = False  # maintenance's first look ran (maintenance.look), at prepare time or in begin
    finished: bool = False
    phase: str = "deploy"  # deploy | rollback | check | status: how the ledger files it
    record_on_host: bool = True  # checks and status reads leave no line in deploys.jsonl
    intent_open: bool = False  # an intent is journaled on the host: only a claim ends it
    final_status: Status | None = None  # set when the host's result is written
    fresh_connections: bool = False  # the run's SSH session is gone: use new connections
    step_timeout: float = 60.0  # the running step's declared timeout: its longest command's bound (flow.Step)
    probation: str | None = None  # an inconclusive gate with bench_inconclusive=pause: why the host waits
    health: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    shown_state: str | None = None  # the last state sent to the progress events
    report: dict[str, Any] | None = None  # a maintenance run's tasks (maintsteps)
    profile_at_lock: ProfileState | None = None  # the profile as read in the lock's round trip (step 2 takes it)
    push_known: dict[str, Any] | None = None  # the push's state as the lock's round trip read it (agent push_state)
    unpack: str | None = None  # the pushed flake's unpacking, run in the build's round trip

    def result(self, status: Status, final: Generation, error: str | None) -> HostResult:
        return HostResult(
            host=self.host, run_id=self.run_id, status=status, previous=self.previous,
            target=self.target, final=final, health=self.health, bench=self.bench,
            timings={**self.timings, "total": round(time.monotonic() - self.started, 3)},
            error=error, reboot_required=self.reboot_required, flake_hash=self.flake_hash, report=self.report,
        )


StepFn = Callable[[HostTransaction, Any], None]

def transaction_for(host: Any) -> HostTransaction:
    """This run's transaction for `host` (kept on pyinfra's State: nothing leaks into another run)."""
    run = runstate.of(host.state)
    tx = run.transactions.get(host.name)
    if tx is None:
        settings = run.settings.get(host.name) or from_host_data(host.name, host.data)
        tx = HostTransaction(host.name, run.run_id, settings)
        run.transactions[host.name] = tx
    return tx


def sh(tx: HostTransaction, host: Any, command: str, timeout: float | None = None) -> RemoteResult:
    """Run one command on the host (over new connections once the run's session is gone), bounded by
    `timeout`: host data command_timeout unless given (a step's longest command gives tx.step_timeout)."""
    runner = run_fresh if tx.fresh_connections else run
    return runner(host, command, timeout=timeout or tx.settings.command_timeout)


def sh_fresh(tx: HostTransaction, host: Any, command: str) -> RemoteResult:
    """A command over a new SSH connection: a confirmation must prove that new logins work."""
    return run_fresh(host, command, timeout=tx.settings.command_timeout)


def profile_state(tx: HostTransaction, host: Any) -> ProfileState:
    """The system profile's generations as the host has them now (the one reader)."""
    return nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(tx.settings.profile)).stdout_lines))


def running_system(tx: HostTransaction, host: Any) -> str:
    """/run/current-system's store path ("" when missing)."""
    return sh(tx, host, nixcmd.running_system()).stdout.strip()

def show_state(tx: HostTransaction, state: str, **detail: Any) -> None:
    """One progress event when the host's state changes (ipex_fleet.transaction.progress)."""
    if state != tx.shown_state or detail:
        tx.shown_state = state
        progress.emit(tx.run_id, tx.host, state, **detail)


def heartbeat_of(host: Any) -> heartbeat.Heartbeat:
    run = runstate.of(host.state)
    if run.heartbeat is None:
        run.heartbeat = heartbeat.Heartbeat()
    return run.heartbeat



def warn(tx: HostTransaction, host: Any, text: str) -> None:
    """A maintenance run's warning: in its report and in the host's log."""
    tx.report["warnings"].append(text)
    host.log(f"warning: {text}", logger.warning)
