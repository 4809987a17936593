"""One host's deploy as a transaction (DESIGN.md, "One host's deploy is a transaction").

Each step is a function `(tx, host)` run at execution time through `python.call`. `run_step`
wraps them: a step that fails rolls the host back to the generation recorded at the start
(once the system was switched), writes the host result on both sides, releases the lock,
and fails the host in pyinfra so the run's exit code is not 0.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from shlex import quote
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from pyinfra import logger
from pyinfra.api.state import BaseStateCallback

from .domain import NO_GENERATION, Action, Generation, HostResult, Status
from . import flakeinputs, progress, redact, runstate
from .nix import commands as nixcmd
from .nix import journal, upkeep
from .remote import HostUnreachable, RemoteResult, SessionLost, StepTimeout, put_bytes, run, run_fresh
from .results import read_host_result, write_host_result
from .errors import UserError
from .settings import DeploySettings, from_host_data


class StepFailed(Exception):
    """A step found the host unfit to continue; the message says why."""


class LockRefused(StepFailed):
    """Another run holds the host's lock."""


class WatchdogReverted(StepFailed):
    """The host's watchdog decided (the lease ran out) and restored the recorded generation."""

    def __init__(self, message: str, final: Generation) -> None:
        super().__init__(message)
        self.final = final

    @classmethod
    def after(cls, tx: "HostTransaction", host: Any, why: str) -> "WatchdogReverted":
        final = await_revert(tx, host, why)
        return cls(f"{why}; the host's watchdog restored generation {final.number} by itself", final)


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
    finished: bool = False
    phase: str = "deploy"  # deploy | rollback | check | status: how the ledger files it
    record_on_host: bool = True  # checks and status reads leave no line in deploys.jsonl
    intent_open: bool = False  # an intent is journaled on the host: only a claim ends it
    final_status: Status | None = None  # set when the host's result is written
    fresh_connections: bool = False  # the run's SSH session is gone: use new connections
    health: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    shown_state: str | None = None  # the last state sent to the progress events
    report: dict[str, Any] | None = None  # a maintenance run's tasks (maintsteps)

    def result(self, status: Status, final: Generation, error: str | None) -> HostResult:
        return HostResult(
            host=self.host, run_id=self.run_id, status=status, previous=self.previous,
            target=self.target, final=final, health=self.health, bench=self.bench,
            timings={**self.timings, "total": round(time.monotonic() - self.started, 3)},
            error=error, reboot_required=self.reboot_required, flake_hash=self.flake_hash, report=self.report,
        )


Step = Callable[[HostTransaction, Any], None]


def transaction_for(host: Any) -> HostTransaction:
    """This run's transaction for `host` (kept on pyinfra's State: nothing leaks into another run)."""
    run = runstate.of(host.state)
    tx = run.transactions.get(host.name)
    if tx is None:
        tx = HostTransaction(host.name, run.run_id, from_host_data(host.name, host.data))
        run.transactions[host.name] = tx
    return tx


def validate_inventory(inventory: Any) -> None:
    """Check every active host's data once, before any operation runs (raises UserError)."""
    for host in inventory.iter_activated_hosts():
        from_host_data(host.name, host.data)
        requested_generation(host.data, host.name)
        planned_generation(host.data, host.name)
        read_plan(host.data, "expect_plan", host.name)
    from .modelsteps import validate as validate_models  # it imports this module

    validate_models(inventory)


def sh(tx: HostTransaction, host: Any, command: str, timeout: float | None = None) -> RemoteResult:
    runner = run_fresh if tx.fresh_connections else run
    return runner(host, command, timeout=timeout or tx.settings.command_timeout)


def run_step(state: Any, host: Any, step: Step, name: str) -> bool:
    """Run one step for one host; on failure, undo and record. Returns False to fail the host."""
    tx = transaction_for(host)
    if tx.finished:  # pyinfra's --retry runs a failed step again: the host's result stands
        return tx.final_status is not None and tx.final_status.succeeded
    if (tx.dry_run and step.__name__ != "record") or (
            (tx.unchanged or tx.boot_pending) and step.__name__ in GATES):
        return True
    started = time.monotonic()
    show_state(tx, progress.STEP_STATES.get(step.__name__, step.__name__))
    try:
        lease = STEP_LEASES.get(step.__name__)
        if tx.intent_open and lease and lease.runs(tx.settings, host.data):
            renew_lease(tx, host, step.__name__, lease.seconds(tx.settings))
        step(tx, host)
        error: BaseException | None = None
    except Exception as exc:
        error = exc
    tx.timings[step.__name__] = round(time.monotonic() - started, 3)
    if error is None:
        return True
    if isinstance(error, (HostUnreachable, StepTimeout)):
        tx.fresh_connections = True  # the run's own session may be dead: undo over new connections
    if isinstance(error, HostUnreachable):
        _finish(tx, host, Status.UNREACHABLE, NO_GENERATION, f"{name}: {error}")
    elif isinstance(error, LockRefused):
        _finish(tx, host, Status.SKIPPED, tx.previous, str(error))
    elif isinstance(error, WatchdogReverted):
        host.log(f"magic rollback: {error}", logger.warning)
        _finish(tx, host, Status.ROLLED_BACK, error.final, f"{name}: {error}")
    elif isinstance(error, (StepFailed, StepTimeout)):
        _fail(tx, host, f"{name}: {error}")
    else:  # a bug or an unexpected answer must still leave the host safe
        _fail(tx, host, f"{name}: {type(error).__name__}: {error}")
    return False


class StoppedRunGuard(BaseStateCallback):
    """pyinfra can end a run between two steps: `--fail-percent`, a "no" at its "continue?" prompt, an
    error on another host. Each host is then disconnected; a host whose transaction started and did
    not finish is resolved here, over new connections: a switched host is rolled back (or its
    watchdog's revert awaited), a host that only holds the lock releases it. Each gets its result."""

    @staticmethod
    def host_disconnect(state: Any, host: Any) -> None:
        tx = runstate.of(state).transactions.get(host.name)
        if tx is None or tx.finished or not (tx.locked or tx.intent_open):
            return
        tx.fresh_connections = True
        why = "the run stopped before this host's transaction finished (pyinfra --fail-percent, a 'no' at " \
              "its prompt, or an error elsewhere)"
        try:
            if tx.intent_open:
                _fail(tx, host, why)
            else:
                _finish(tx, host, Status.SKIPPED, tx.previous, f"{why}; nothing was switched")
        except Exception as exc:  # the host's watchdog still holds the line
            host.log(f"could not resolve the stopped transaction: {exc}", logger.error)


def show_state(tx: HostTransaction, state: str, **detail: Any) -> None:
    """One progress event when the host's state changes (ipex_fleet.progress)."""
    if state != tx.shown_state or detail:
        tx.shown_state = state
        progress.emit(tx.run_id, tx.host, state, **detail)


def _fail(tx: HostTransaction, host: Any, error: str) -> None:
    host.log(f"failed: {error}", logger.error)
    if not tx.intent_open:
        _finish(tx, host, Status.FAILED, tx.previous, error)
        return
    started = time.monotonic()
    show_state(tx, "rolling back", to=tx.previous.number, why=redact.text(error))
    try:
        # The intent stays open (the watchdog armed) until the revert is done and verified: a
        # controller that dies mid-rollback leaves it to the host's watchdog, or to the next run.
        # The lease covers the rollback; should it run out anyway, both restore the same generation.
        renew_lease(tx, host, "rollback", tx.settings.activation_timeout + 4 * tx.settings.command_timeout)
        final = rollback_to(tx, host, tx.previous)
        if not claim(tx, host, "reverting-controller"):
            final = await_revert(tx, host, "the host's watchdog decided first")
            _finish(tx, host, Status.ROLLED_BACK, final, f"{error}; the host's watchdog restored the generation")
            return
    except WatchdogReverted as exc:
        _finish(tx, host, Status.ROLLED_BACK, exc.final, f"{error}; {exc}")
        return
    except HostUnreachable as exc:
        _finish(tx, host, Status.UNREACHABLE, NO_GENERATION, f"{error}; rollback: {exc} (the host's watchdog "
                f"restores generation {tx.previous.number} by itself when its lease runs out)")
        return
    except (StepFailed, StepTimeout) as exc:
        _finish(tx, host, Status.FAILED, NO_GENERATION, f"{error}; rollback FAILED: {exc}")
        return
    tx.timings["rollback"] = round(time.monotonic() - started, 3)
    host.log(f"rolled back to generation {final.number} ({final.path})", logger.warning)
    from .gatesteps import recheck_after_rollback  # steps 7-8 live there; it imports this module

    recheck_after_rollback(tx, host)
    tx.timings["recheck"] = round(time.monotonic() - started, 3)
    _finish(tx, host, Status.ROLLED_BACK, final, error)


def _finish(tx: HostTransaction, host: Any, status: Status, final: Generation, error: str | None) -> None:
    """Record the result on the host (when it answers) and on the controller; release the lock."""
    tx.finished = True
    tx.final_status = status
    error = redact.text(error) if error else error  # a token in a URL never reaches a record
    result = tx.result(status, final, error)
    if status != Status.UNREACHABLE:
        try:
            if tx.record_on_host:
                record = nixcmd.append_deploy_record({**result.to_json(), "phase": tx.phase})
                if tx.settings.metrics_dir:  # in the same round trip; best effort: it never fails a deploy
                    record += (f"; {tx.settings.ipex_fleet_command} metrics --textfile-dir "
                               f"{quote(tx.settings.metrics_dir)} >/dev/null 2>&1 || true")
                sh(tx, host, record)
            if tx.locked:
                sh(tx, host, nixcmd.release_lock(tx.run_id))
        except (HostUnreachable, StepTimeout) as exc:
            result = tx.result(Status.UNREACHABLE, NO_GENERATION, f"{error or status.value}; recording: {exc}")
    write_host_result(result)
    _ledger_record(result, tx.phase)
    show_state(tx, result.status.value, previous=result.previous.number, generation=result.final.number,
               error=result.error)
    line = f"{result.status.value}: generation {result.final.number}"
    if result.error:
        line += f" ({result.error})"
    host.log(line, logger.info if result.status.succeeded else logger.error)


def _ledger_record(result: HostResult, phase: str) -> None:
    from .rollout.ledger import Ledger

    ledger = Ledger()
    ledger.start_run(result.run_id, phase, None, None, {}, status="pyinfra")  # a rollout's own row wins
    ledger.record(result, phase)
    ledger.settle_plain_run(result.run_id)


# -- steps 1 to 5, and 9 --------------------------------------------------------------------


def preflight(tx: HostTransaction, host: Any) -> None:
    """Step 1: NixOS (or Nix present), enough free space on /nix, an earlier run's open intent
    resolved, then the lock."""
    # One round trip: the host's facts, and any open intent (journal.read_open's keys).
    facts = nixcmd.parse_key_values(list(sh(tx, host, f"{nixcmd.preflight()}; ( {journal.read_open()} )").stdout_lines))
    if facts.get("os_id") != "nixos" and not facts.get("nix"):
        raise StepFailed(f"not NixOS (ID={facts.get('os_id')}) and no nix on PATH")
    free_mb = int(facts.get("free_kb") or 0) // 1024
    if free_mb < tx.settings.min_free_mb:
        raise StepFailed(f"only {free_mb} MiB free on /nix, {tx.settings.min_free_mb} MiB needed "
                         "(host data min_free_mb); collect garbage with deploys/maintenance.py")
    recover_open_intent(tx, host, facts)
    take_lock(tx, host)


def recover_open_intent(tx: HostTransaction, host: Any, found: dict[str, str] | None = None) -> str | None:
    """An intent left open by a run whose lease ran out (a dead controller, and a watchdog that did not
    act: a reboot ends it) is reverted here, verified, and recorded, before anything else."""
    if found is None:
        found = nixcmd.parse_key_values(list(sh(tx, host, journal.read_open()).stdout_lines))
    run_id = found.get("run_id")
    if not run_id:
        return None
    lease, now = int(found.get("lease") or 0), int(found.get("now") or 0)
    if lease >= now and run_id != tx.run_id:
        raise LockRefused(f"run {run_id} is deploying this host (its lease runs {lease - now}s more); "
                          "if its controller died, the host reverts by itself when the lease runs out")
    host.log(f"run {run_id} left an open intent: reverting to its recorded generation", logger.warning)
    reverted = sh(tx, host, f"sh {journal.INTENT}/revert.sh recovery", tx.settings.activation_timeout)
    outcome = sh(tx, host, journal.outcome(run_id, "recovery")).stdout.strip()
    if not outcome.startswith("reverted"):
        raise StepFailed(f"recovering run {run_id}'s open intent failed ({outcome or reverted.last_error}); "
                         f"see {journal.RESOLVED}/{run_id}.recovery/revert.log on the host")
    host.log(f"run {run_id}'s intent reverted and verified")
    return run_id


def recover(tx: HostTransaction, host: Any) -> None:
    """deploys/recover.py: resolve a dead run's open intent and stale lock; change nothing else."""
    tx.phase, tx.record_on_host = "recover", False
    recovered = recover_open_intent(tx, host)
    take_lock(tx, host)
    state = nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(tx.settings.profile)).stdout_lines))
    tx.previous = tx.target = state.current_generation
    tx.unchanged = True
    host.log(f"recovered run {recovered}: back on generation {tx.previous.number}" if recovered
             else f"nothing to recover: on generation {tx.previous.number}, no open intent")


def take_lock(tx: HostTransaction, host: Any) -> None:
    lease = tx.settings.command_timeout * 4 + tx.settings.build_timeout + tx.settings.activation_timeout
    owner = {"run_id": tx.run_id, "controller": socket.gethostname(), "pid": os.getpid(),
             "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "lease_until": _lease_until(tx, lease)}
    got = sh(tx, host, nixcmd.acquire_lock(owner))
    if got.ok:
        tx.locked = True
        return
    if got.returncode != 75:
        raise StepFailed(f"could not take the lock: {got.last_error}")
    try:
        holder = json.loads(got.stdout_lines[-1])
    except (ValueError, IndexError):
        holder = {}
    holder_run = holder.get("run_id")
    # Ours (a resumed run), a run whose result is recorded here, a holder whose lease ran out (no
    # intent of it is open: that was resolved above), or forced: take it.
    lease_spent = holder.get("lease_until") is not None and int(holder["lease_until"]) < time.time()
    if holder_run == tx.run_id or tx.settings.break_lock or lease_spent or (
        holder_run and read_host_result(holder_run, host.name) is not None
    ):
        sh(tx, host, nixcmd.force_lock(owner))
        tx.locked = True
        return
    raise LockRefused(
        f"locked by run {holder_run or '?'} (controller {holder.get('controller', '?')}, since "
        f"{holder.get('since', '?')}): another deploy holds {nixcmd.LOCK_FILE}; wait for it, or, "
        "if that run is dead, rerun with --data break_lock=true"
    )


def record_previous(tx: HostTransaction, host: Any) -> None:
    """Step 2: the generation to return to on failure."""
    state = nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(tx.settings.profile)).stdout_lines))
    tx.previous = state.current_generation
    if tx.previous.number is None:
        raise StepFailed(f"{tx.settings.profile} has no generation: is this an installed NixOS host?")


def push_flake(tx: HostTransaction, host: Any) -> None:
    """Step 3a: push the flake by content hash, unless the host has it already, and the locked inputs
    the host lacks, from the controller's store, so that it builds the locked revisions without network
    (flakeinputs says why this way). One round trip asks for both."""
    run = runstate.of(host.state)
    digest = run.flake_hash(tx.settings.flake)
    tx.flake_hash = digest
    if tx.settings.build == "controller":
        return  # the host substitutes the built closure from the cache: it needs no flake
    conf = tx.settings.controller_nix_conf_dir
    try:
        inputs = run.flake_inputs(tx.settings.flake, conf).store_paths
    except flakeinputs.InputsError as exc:
        raise StepFailed(str(exc)) from None
    check = f"{flakeinputs.missing_command(inputs)} || echo {_INPUTS_UNCHECKED}; " if inputs else ""
    asked = sh(tx, host, f"mkdir -p {nixcmd.FLAKE_ROOT}; {check}{nixcmd.flake_present(digest)}")
    if _INPUTS_UNCHECKED in asked.stdout_lines:
        raise StepFailed(f"checking the host's store for the flake's inputs failed: {asked.last_error}")
    pushed = 0
    if not asked.ok:
        upload = f"{nixcmd.FLAKE_ROOT}/.upload-{digest}-{tx.run_id}.tar.gz"
        tarball = run.flake_tarball(tx.settings.flake)
        put_bytes(host, tarball, upload, timeout=tx.settings.command_timeout)
        unpacked = sh(tx, host, nixcmd.unpack_flake(upload, digest))
        if not unpacked.ok:
            raise StepFailed(f"unpacking the flake failed: {unpacked.last_error}")
        pushed = len(tarball)
    missing = tuple(sorted(line for line in asked.stdout_lines if line in inputs))
    carried = carry_inputs(tx, host, missing) if missing else 0
    host.log(f"pushed the flake ({pushed} bytes) and its locked inputs ({carried} bytes)")
    sh(tx, host, f"{nixcmd.prune_flakes(tx.settings.keep_flakes, digest)}; {upkeep.root_inputs(digest, inputs)}")


_INPUTS_UNCHECKED = "ipex-fleet: inputs unchecked"


def carry_inputs(tx: HostTransaction, host: Any, missing: tuple[str, ...]) -> int:
    """Step 3a, continued: send and import the missing input store paths. Returns bytes sent."""
    try:
        data = runstate.of(host.state).inputs_export(missing, tx.settings.controller_nix_conf_dir)
    except flakeinputs.InputsError as exc:
        raise StepFailed(str(exc)) from None
    upload = f"{nixcmd.FLAKE_ROOT}/.inputs-{tx.run_id}.gz"
    put_bytes(host, data, upload, timeout=tx.settings.command_timeout)
    imported = sh(tx, host, flakeinputs.import_command(upload), tx.settings.build_timeout)
    if not imported.ok:
        raise StepFailed(f"importing the flake's inputs failed: {imported.last_error}")
    return len(data)


def build(tx: HostTransaction, host: Any) -> None:
    """Step 3b and 4: build the toplevel on the target; equal to the current one means unchanged."""
    if tx.settings.build == "controller":
        path = _substitute_from_cache(tx, host)
    else:
        ref = f"path:{nixcmd.FLAKE_ROOT}/{tx.flake_hash}"
        built = sh(tx, host, nixcmd.build_toplevel(ref, tx.settings.nixos_config), tx.settings.build_timeout)
        if not built.ok:
            raise StepFailed(f"nix build failed: {built.last_error}")
        path = nixcmd.parse_build_output(built.stdout)
    tx.target = Generation(None, path)
    running = sh(tx, host, nixcmd.running_system()).stdout.strip()
    if path == tx.previous.path and (running == path or not tx.settings.mode.activates):
        tx.unchanged = True
        tx.target = tx.previous


def _substitute_from_cache(tx: HostTransaction, host: Any) -> str:
    """Build once on the controller (shared by every host of the run), then substitute on the host."""
    from pyinfra import state

    from .cache import CacheError, substitute, toplevel_for

    try:
        path = toplevel_for(host, tx.settings, state.inventory)
    except CacheError as exc:
        raise StepFailed(f"building on the controller failed: {exc}") from None
    fetched = sh(tx, host, substitute(path, tx.settings), tx.settings.build_timeout)
    if not fetched.ok:
        raise StepFailed(f"substituting {path} from {tx.settings.cache} failed: {fetched.last_error}")
    return path


def switch(tx: HostTransaction, host: Any) -> None:
    """Step 5: journal the intent and arm the watchdog, set the profile (per mode), activate detached,
    confirm over a new connection; in mode boot with host data reboot, boot into it and check."""
    if tx.unchanged:
        return
    mode, profile, path = tx.settings.mode, tx.settings.profile, tx.target.path
    assert path is not None
    if mode == Action.DRY_ACTIVATE:
        dry = sh(tx, host, nixcmd.activate(path, mode), tx.settings.activation_timeout)
        if not dry.ok:
            raise StepFailed(f"dry-activate exited {dry.returncode}: {_activation_error(dry)}")
        for line in dry.stdout_lines:
            host.log(line)
        tx.unchanged = tx.dry_run = True  # a report only: nothing else runs
        return
    open_intent(tx, host, lease=tx.settings.activation_timeout + tx.settings.confirm_timeout)
    if mode.sets_profile:
        set_ = sh(tx, host, nixcmd.set_profile(profile, path))
        if not set_.ok:
            raise StepFailed(f"setting {profile} failed: {set_.last_error}")
        state = nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(profile)).stdout_lines))
        tx.target = state.current_generation
    else:  # test: the generation runs without entering the profile
        tx.target = Generation(None, path)
    started = time.monotonic()
    call_id = uuid.uuid4().hex[:12]
    try:
        try:
            activated = sh(tx, host, nixcmd.activate(path, mode, call_id), tx.settings.activation_timeout)
        except SessionLost as exc:
            activated = reattach_activation(tx, host, call_id, started, exc)
    except (HostUnreachable, StepTimeout) as exc:
        raise WatchdogReverted.after(tx, host, f"the host stopped answering during activation ({exc})")
    check_activation(tx, host, activated)
    if mode.activates:
        # From here on only a new login proves the generation: a short lease until one renews it.
        renew_lease(tx, host, "activated", tx.settings.confirm_timeout)
        if tx.settings.magic_rollback:
            confirm(tx, host)
    elif mode == Action.BOOT and tx.settings.reboot:
        reboot_into_target(tx, host)
    elif mode == Action.BOOT:
        tx.boot_pending = tx.reboot_required = True
        host.log("boot: the new generation runs after the next reboot; its gates run then "
                 "(host data reboot=true reboots now)")


def open_intent(tx: HostTransaction, host: Any, lease: float) -> None:
    """Before anything changes: the intent, with its own way back, and the watchdog that enforces it."""
    record = tx.result(Status.ROLLED_BACK, tx.previous, "reverted: __OUTCOME__").to_json()
    record["phase"] = "revert"
    script = journal.revert_script(tx.run_id, tx.settings.profile, tx.settings.mode, tx.previous, record)
    intent = {"run_id": tx.run_id, "previous": tx.previous.to_json(), "target": {"path": tx.target.path},
              "mode": tx.settings.mode.value, "profile": tx.settings.profile,
              "opened": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    # One round trip: the intent, then (only once it is written) its watchdog; exit 90 says which failed.
    opened = sh(tx, host, f"{journal.open_intent(tx.run_id, intent, script, _lease_until(tx, lease))} || exit 90; "
                          f"{journal.arm_watchdog(tx.run_id)}")
    if opened.returncode == 90:
        raise StepFailed(f"could not journal the intent on the host: {opened.last_error}")
    tx.intent_open = True
    if not opened.ok:
        raise StepFailed(f"could not arm the rollback watchdog: {opened.last_error}")


def _lease_until(tx: HostTransaction, seconds: float) -> int:
    return int(time.time() + seconds + tx.settings.lease_grace)


def renew_lease(tx: HostTransaction, host: Any, step: str, seconds: float, fresh: bool = False) -> None:
    """Extend the watchdog's lease for the next step; a lease already spent means the watchdog decided."""
    command = journal.renew(tx.run_id, _lease_until(tx, seconds), step)
    renewed = run_fresh(host, command, timeout=tx.settings.command_timeout) if fresh else sh(tx, host, command)
    if renewed.returncode == journal.LOST:
        raise WatchdogReverted.after(tx, host, "the lease ran out before the controller renewed it")
    if not renewed.ok:
        raise StepFailed(f"could not renew the watchdog's lease: {renewed.last_error}")


def confirm(tx: HostTransaction, host: Any) -> None:
    """Confirm over a new SSH connection (a generation that breaks new logins must not be confirmed
    through an old session): it renews the lease for the next step. Without one the watchdog reverts."""
    try:
        renew_lease(tx, host, "confirmed", tx.settings.command_timeout, fresh=True)
    except HostUnreachable as exc:
        raise WatchdogReverted.after(tx, host, f"no new SSH connection after activation ({exc})")


def claim(tx: HostTransaction, host: Any, who: str) -> bool:
    """Claim the decision for this run (commit or revert). False: another claimant decided first."""
    got = sh(tx, host, journal.claim(tx.run_id, who))
    if got.ok:
        tx.intent_open = False
        return True
    if got.returncode == journal.LOST:
        tx.intent_open = False
        return False
    raise StepFailed(f"could not claim the decision on the host: {got.last_error}")


def await_revert(tx: HostTransaction, host: Any, why: str) -> Generation:
    """Wait (over new connections) for the host's watchdog to finish restoring the recorded generation,
    then check it there. Raises HostUnreachable when it does not come back in time."""
    host.log(f"{why}; waiting for the host's watchdog", logger.warning)
    tx.fresh_connections = True
    started = time.monotonic()
    deadline = started + tx.settings.activation_timeout + tx.settings.confirm_timeout + tx.settings.lease_grace + 30
    outcome = ""
    while time.monotonic() < deadline:
        try:
            got = sh(tx, host, journal.outcome(tx.run_id, "watchdog"))
            if got.ok:
                outcome = got.stdout.strip()
                break
        except (HostUnreachable, StepTimeout):
            pass
        time.sleep(1)
    else:
        raise HostUnreachable(f"{why}; the host did not report its watchdog's revert in time")
    tx.intent_open = False
    tx.timings["watchdog_revert"] = round(time.monotonic() - started, 3)
    state = nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(tx.settings.profile)).stdout_lines))
    running = sh(tx, host, nixcmd.running_system()).stdout.strip()
    if not outcome.startswith("reverted") or state.current_generation.path != tx.previous.path or (
            tx.settings.mode != Action.BOOT and running != tx.previous.path):
        raise StepFailed(f"{why}; the watchdog's revert ended {outcome.split()[0] if outcome else '?'}, and the host "
                         f"is on {running}, not {tx.previous.path}")
    return state.current_generation


def reattach_activation(tx: HostTransaction, host: Any, call_id: str, started: float,
                        lost: SessionLost) -> RemoteResult:
    """The session died mid-activation, but the activation runs on in its own unit: wait for it over
    new connections and take its own recorded exit code, never act while it still runs."""
    host.log(f"{lost}; waiting for the activation over a new connection", logger.warning)
    tx.fresh_connections = True
    deadline = started + tx.settings.activation_timeout
    while time.monotonic() < deadline:
        try:
            outcome = sh(tx, host, nixcmd.activation_outcome(tx.settings.mode, call_id))
            if outcome.returncode != 75:
                return outcome
        except (HostUnreachable, StepTimeout):
            pass
        time.sleep(0.5)
    raise StepTimeout(f"the activation did not finish within {tx.settings.activation_timeout:g}s after "
                      "the SSH session was lost")


def check_activation(tx: HostTransaction, host: Any, activated: RemoteResult) -> None:
    mode, path = tx.settings.mode, tx.target.path
    if activated.returncode == 100:
        tx.reboot_required = True
        host.log("switch-to-configuration: reboot required", logger.warning)
    elif activated.returncode == 4 and tx.settings.health_levels != ():
        # Units failed to start: the health checks that follow name which service and why.
        host.log(f"switch-to-configuration: {_activation_error(activated)}", logger.warning)
    elif not activated.ok:
        raise StepFailed(f"switch-to-configuration {mode.value} exited {activated.returncode}: "
                         f"{_activation_error(activated)}")
    if mode.activates:
        running = sh(tx, host, nixcmd.running_system()).stdout.strip()
        if running != path:
            raise StepFailed(f"after activation /run/current-system is {running or 'missing'}, not {path}")


def _activation_error(activated: RemoteResult) -> str:
    return nixcmd.activation_error(activated.stdout_lines + activated.stderr_lines) or activated.last_error


def reboot_into_target(tx: HostTransaction, host: Any) -> None:
    """Mode boot with host data reboot: reboot, wait for a new boot id within reboot_timeout, and check
    that the target booted. A host that booted the previous generation fell back."""
    renew_lease(tx, host, "rebooting", tx.settings.reboot_timeout)
    show_state(tx, "rebooting")
    before = sh(tx, host, nixcmd.boot_id()).stdout.strip()
    sh(tx, host, nixcmd.schedule_reboot(tx.run_id))
    tx.fresh_connections = True  # this session ends with the boot
    booted_id = None
    deadline = time.monotonic() + tx.settings.reboot_timeout
    booted, settled = "", 0
    while time.monotonic() < deadline:
        time.sleep(1)
        try:
            now = nixcmd.parse_key_values(list(sh(tx, host, nixcmd.boot_state(), timeout=10).stdout_lines))
        except (HostUnreachable, StepTimeout):
            settled = 0
            continue
        # A boot counts once it finished (twice in a row): a boot whose check fails reboots again.
        done = now.get("boot_id") not in ("", before) and now.get("state") in ("running", "degraded")
        settled = settled + 1 if done and now.get("boot_id") == booted_id else int(done)
        booted_id = now.get("boot_id")
        if settled >= 2:
            booted = now.get("booted", "")
            break
    else:
        raise StepFailed(f"no completed boot within {tx.settings.reboot_timeout:g}s (host data reboot_timeout)")
    host.log(f"rebooted into {booted}")
    sh(tx, host, journal.arm_watchdog(tx.run_id))  # the old watchdog ended with the old boot
    if booted != tx.target.path:
        raise StepFailed(f"fell back: booted {booted or 'nothing'}, not the target {tx.target.path} "
                         "(its boot did not complete, so the boot loader chose the previous entry)")


def rollback_to(tx: HostTransaction, host: Any, gen: Generation) -> Generation:
    """Return the host to `gen` (its number and path), then check it on the host itself."""
    profile, mode = tx.settings.profile, tx.settings.mode
    assert gen.path is not None and gen.number is not None
    state = nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(profile)).stdout_lines))
    existing = state.by_number(gen.number)
    if existing is not None and existing.path == gen.path:
        moved = sh(tx, host, nixcmd.switch_generation(profile, gen.number))
    else:  # the generation was deleted meanwhile: its store path still makes it whole again
        moved = sh(tx, host, nixcmd.set_profile(profile, gen.path))
    if not moved.ok:
        raise StepFailed(f"could not set {profile} back: {moved.last_error}")
    running = sh(tx, host, nixcmd.running_system()).stdout.strip()
    # Activate the old generation wherever the new one runs; a boot-mode deploy that never rebooted
    # only needs its boot entry back.
    if mode == Action.TEST:
        action = Action.TEST
    else:
        action = Action.BOOT if mode == Action.BOOT and running == gen.path else Action.SWITCH
    activated = sh(tx, host, nixcmd.activate(gen.path, action), tx.settings.activation_timeout)
    state = nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(profile)).stdout_lines))
    running = sh(tx, host, nixcmd.running_system()).stdout.strip()
    current = state.current_generation
    if current.path != gen.path or running != gen.path:
        raise StepFailed(f"host is on {current.path} (running {running}), not {gen.path}")
    if not activated.ok and activated.returncode != 100:
        host.log(f"the old generation's activation exited {activated.returncode}: {activated.last_error}",
                 logger.warning)
    return current


def record(tx: HostTransaction, host: Any) -> None:
    """Step 9, the commit: claim the decision, which disarms the watchdog; record; release the lock."""
    if tx.intent_open and not claim(tx, host, journal.COMMITTED):
        final = await_revert(tx, host, "the lease ran out before the commit")
        _finish(tx, host, Status.ROLLED_BACK, final, "the host's watchdog reverted before the commit "
                "(its lease ran out: the controller was too slow or cut off)")
        return
    status = Status.UNCHANGED if tx.unchanged else Status.OK
    final = tx.previous if tx.unchanged or tx.target.path is None else tx.target
    _finish(tx, host, status, final, None)


@dataclass(frozen=True)
class StepLease:
    """What a gate needs of the watchdog's lease: its own bound, renewed only when the gate runs."""

    seconds: Callable[[DeploySettings], float]
    runs: Callable[[DeploySettings, Any], bool]


STEP_LEASES: dict[str, StepLease] = {
    "install_models": StepLease(lambda s: s.models_timeout,
                                lambda s, data: bool(data.get("models") or data.get("models_manifest"))),
    "health": StepLease(lambda s: s.health_timeout, lambda s, data: s.health_levels != ()),
    "bench_gate": StepLease(lambda s: s.bench_timeout, lambda s, data: s.bench),
}
# Gates that have nothing to check where nothing changed (or in a dry run).
GATES = ("health", "bench_gate")


# -- deploys/rollback.py ------------------------------------------------------------------


def requested_generation(data: Any, host_name: str) -> int | None:
    """`--data generation=N` for deploys/rollback.py, checked before any host is touched."""
    value = data.get("generation")
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise UserError(f"host {host_name}: generation={value!r} is not a generation number; "
                        "give --data generation=N with N from `nix-env --list-generations`")
    return number


def read_plan(data: Any, key: str, host_name: str) -> dict[str, Any] | None:
    """A per-host plan file (`--data KEY=FILE`, written by the rollout engine): this host's entry."""
    path = data.get(key)
    if not path:
        return None
    try:
        plan = json.loads(open(str(path)).read())
    except (OSError, ValueError) as exc:
        raise UserError(f"{key} {path}: cannot be read ({exc}); it is written by `ipex-fleet rollout`") from None
    entry = plan.get(host_name)
    if entry is None:
        raise UserError(f"{key} {path} has no entry for host {host_name}; limit the run to the hosts it lists")
    return entry


def planned_generation(data: Any, host_name: str) -> Generation | None:
    entry = read_plan(data, "rollback_plan", host_name)
    return Generation(int(entry["generation"]), str(entry["path"])) if entry else None


def rollback_requested(tx: HostTransaction, host: Any) -> None:
    """Return to --data generation=N, or to the generation before the last deploy that changed it."""
    profile = tx.settings.profile
    state = nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(profile)).stdout_lines))
    tx.previous = state.current_generation
    tx.phase = "rollback"
    planned = planned_generation(host.data, host.name)
    wanted = requested_generation(host.data, host.name)
    if planned is not None:
        goal = planned
    elif wanted is not None:
        goal = state.by_number(wanted)
        if goal is None:
            have = ", ".join(str(g.number) for g in state.generations)
            raise StepFailed(f"{profile} has no generation {wanted} (it has {have})")
    else:
        goal = _before_last_deploy(tx, host, state)
    tx.target = goal
    running = sh(tx, host, nixcmd.running_system()).stdout.strip()
    if goal.number == state.current and running == goal.path:
        tx.unchanged = True
        host.log(f"already on generation {goal.number}")
        return
    tx.target = rollback_to(tx, host, goal)
    host.log(f"now on generation {tx.target.number}")


def _before_last_deploy(tx: HostTransaction, host: Any, state: Any) -> Generation:
    lines = sh(tx, host, nixcmd.last_deploy_records(200)).stdout_lines
    for line in reversed(lines):
        try:
            record = HostResult.from_json(json.loads(line))
        except (ValueError, KeyError):
            continue
        if json.loads(line).get("phase", "deploy") != "deploy":
            continue  # a rollback's record is no deploy to undo: a second rollback goes further back
        if record.status == Status.OK and record.final.path == tx.previous.path and record.previous.number:
            goal = state.by_number(record.previous.number)
            if goal is not None and goal.path == record.previous.path:
                return goal
            raise StepFailed(f"generation {record.previous.number} of the previous deploy is gone; "
                             "give --data generation=N")
    raise StepFailed("no deploy record leads to the current generation; give --data generation=N")
