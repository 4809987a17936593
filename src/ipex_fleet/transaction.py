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
from . import flakeinputs, heartbeat, hostagent, probation, progress, redact, runstate
from .nix import commands as nixcmd
from .nix import upkeep
from .domain import STATE_DIR
from .remote import HostUnreachable, RemoteResult, SessionLost, StepTimeout, put_bytes, run, run_fresh
from .results import read_host_result, write_host_result
from .errors import UserError
from .settings import DeploySettings, from_host_data


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

    @classmethod
    def after(cls, tx: "HostTransaction", host: Any, why: str) -> "WatchdogReverted":
        final, who, outcome = await_revert(tx, host, why)
        if not outcome.startswith("reverted"):
            return cls(f"{why}; the host's {who} tried to restore generation {tx.previous.number} and its "
                       f"revert FAILED ({outcome})", final, Status.REVERT_FAILED)
        return cls(f"{why}; the host's {who} restored generation {final.number} by itself", final,
                   Status.ROLLED_BACK)


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
    finished: bool = False
    phase: str = "deploy"  # deploy | rollback | check | status: how the ledger files it
    record_on_host: bool = True  # checks and status reads leave no line in deploys.jsonl
    intent_open: bool = False  # an intent is journaled on the host: only a claim ends it
    final_status: Status | None = None  # set when the host's result is written
    fresh_connections: bool = False  # the run's SSH session is gone: use new connections
    probation: str | None = None  # an inconclusive gate with bench_inconclusive=pause: why the host waits
    health: dict[str, Any] | None = None
    bench: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    shown_state: str | None = None  # the last state sent to the progress events
    report: dict[str, Any] | None = None  # a maintenance run's tasks (maintsteps)
    profile_at_lock: Any = None  # the profile as read in the lock's round trip (step 2 takes it)

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
            (tx.unchanged or tx.boot_pending) and step.__name__ in GATES) or (
            tx.fast_unchanged and step.__name__ != "record"):
        return True
    started = time.monotonic()
    show_state(tx, progress.STEP_STATES.get(step.__name__, step.__name__))
    try:
        step(tx, host)  # the heartbeat keeps the lease alive meanwhile; the step's own timeouts bound it
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
    elif isinstance(error, Fenced):  # the host is another run's now: write nothing there, claim nothing
        tx.record_on_host, tx.locked = False, False
        _finish(tx, host, Status.SKIPPED, NO_GENERATION, f"{name}: {error}")
    elif isinstance(error, LockRefused):
        _finish(tx, host, Status.SKIPPED, tx.previous, str(error))
    elif isinstance(error, WatchdogReverted):
        host.log(f"magic rollback: {error}", logger.warning)
        _finish(tx, host, error.status, error.final, f"{name}: {error}")
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
        # The host agent claims the revert and restores the recorded generation in a unit of its own:
        # a controller that dies or loses its session mid-rollback leaves it running; should the
        # watchdog have decided first, its outcome is awaited instead.
        got = sh(tx, host, hostagent.command("revert", "--intent", str(tx.intent_id), "--who",
                                             "reverting-controller", "--detach"))
        if not got.ok and got.returncode != hostagent.LOST:
            raise StepFailed(f"the host agent could not start the revert: {got.last_error}")
        final, who, outcome = await_revert(tx, host, "rolling back" if got.ok else "the host decided first")
    except HostUnreachable as exc:
        _finish(tx, host, Status.UNREACHABLE, NO_GENERATION, f"{error}; rollback: {exc} (the host's watchdog "
                f"restores generation {tx.previous.number} by itself when its lease runs out)")
        return
    except (StepFailed, StepTimeout) as exc:
        _finish(tx, host, Status.REVERT_FAILED, NO_GENERATION, f"{error}; rollback FAILED: {exc}")
        return
    tx.timings["rollback"] = round(time.monotonic() - started, 3)
    if not outcome.startswith("reverted"):
        _finish(tx, host, Status.REVERT_FAILED, final, f"{error}; rollback FAILED ({who}): {outcome}")
        return
    host.log(f"rolled back to generation {final.number} ({final.path}) by the {who}", logger.warning)
    from .gatesteps import recheck_after_rollback  # steps 7-8 live there; it imports this module

    recheck_after_rollback(tx, host)
    tx.timings["recheck"] = round(time.monotonic() - started, 3)
    suffix = "" if who == "reverting-controller" else f"; the host's {who} restored the generation"
    _finish(tx, host, Status.ROLLED_BACK, final, error + suffix)


def _finish(tx: HostTransaction, host: Any, status: Status, final: Generation, error: str | None,
            result: HostResult | None = None) -> None:
    """Record the result on the host (when it answers) and on the controller; release the lock.
    A decision already taken (a won commit, a verified revert) stands if recording fails. `result`:
    the one the commit already recorded on the host (commit), the same on both sides."""
    tx.finished = True
    tx.final_status = status
    _heartbeat(host).stop(host.name)
    error = redact.text(error) if error else error  # a token in a URL never reaches a record
    result = result or tx.result(status, final, error)
    if status != Status.UNREACHABLE:
        parts = []
        if tx.record_on_host:
            parts.append(nixcmd.append_deploy_record(_host_record(tx, result)))
            if tx.settings.metrics_dir:  # in the same round trip; best effort: it never fails a deploy
                parts.append(_metrics_command(tx))
        if tx.locked and tx.lock_token and status is not Status.PAUSED:  # probation keeps the lock
            parts.append(f"{{ {hostagent.command('lock-release', '--token', tx.lock_token)} >/dev/null || true; }}")
        for attempt in range(3):  # the record is retried; the decision does not depend on it
            try:
                if parts:
                    sh(tx, host, "; ".join(parts))
                break
            except (HostUnreachable, StepTimeout) as exc:
                if attempt == 2:
                    host.log(f"warning: could not record the result on the host ({exc}); it stands as "
                             f"{status.value} (the host's lock frees itself within {tx.settings.lease_grace:g}s)",
                             logger.warning)
                    result = tx.result(status, final, f"{error + '; ' if error else ''}not recorded on the host: {exc}")
                else:
                    time.sleep(1)
    write_host_result(result)
    _ledger_record(result, tx.phase)
    show_state(tx, result.status.value, previous=result.previous.number, generation=result.final.number,
               error=result.error)
    line = f"{result.status.value}: generation {result.final.number}"
    if result.error:
        line += f" ({result.error})"
    host.log(line, logger.info if result.status.succeeded else logger.error)


def _host_record(tx: HostTransaction, result: HostResult) -> dict[str, Any]:
    return {**result.to_json(), "phase": tx.phase, "nixos_config": tx.settings.nixos_config}


def _metrics_command(tx: HostTransaction) -> str:
    assert tx.settings.metrics_dir
    return (f"{{ {tx.settings.ipex_fleet_command} metrics --textfile-dir "
            f"{quote(tx.settings.metrics_dir)} >/dev/null 2>&1 || true; }}")


def _heartbeat(host: Any) -> heartbeat.Heartbeat:
    run = runstate.of(host.state)
    if run.heartbeat is None:
        run.heartbeat = heartbeat.Heartbeat()
    return run.heartbeat


def _ledger_record(result: HostResult, phase: str) -> None:
    from .rollout.ledger import Ledger

    Ledger().record_plain(result, phase)  # a rollout's own row wins; one commit


# -- steps 1 to 5, and 9 --------------------------------------------------------------------


def preflight(tx: HostTransaction, host: Any) -> None:
    """Step 1: NixOS (or Nix present), enough free space on /nix, the host agent in place, an earlier
    run's open intent resolved, then the lock."""
    # One round trip: the host's facts, the agent's view of the lock and any open intent, and what
    # the last deploy left (for the no-change fast path).
    fast = _fast_path_possible(tx, host)
    agent = hostagent.status_unless_quiet() if fast else hostagent.status_or_missing()
    command = f"{nixcmd.preflight()}; {agent}"
    if fast:
        command += f"; {nixcmd.deployed_state(tx.settings.profile)}"
    facts = nixcmd.parse_key_values(list(sh(tx, host, command).stdout_lines))
    if facts.get("os_id") != "nixos" and not facts.get("nix"):
        raise StepFailed(f"not NixOS (ID={facts.get('os_id')}) and no nix on PATH")
    free_mb = int(facts.get("free_kb") or 0) // 1024
    if free_mb < tx.settings.min_free_mb:
        raise StepFailed(f"only {free_mb} MiB free on /nix, {tx.settings.min_free_mb} MiB needed "
                         "(host data min_free_mb); collect garbage with deploys/maintenance.py")
    # Quiet: this agent is installed and nothing is open (hostagent.status_unless_quiet), what its own
    # status would have said; the lock is then taken by the agent, atomically, as always.
    quiet = facts.get("agent") == hostagent.QUIET
    status = _NOTHING_OPEN if quiet else hostagent.parse_status(facts.get("agent"))
    if fast and status is not None and _nothing_to_do(tx, host, facts, status):
        return  # unchanged, after this one round trip
    if status is None:
        status = install_agent(tx, host)
    tx.agent_ready = True
    recover_open_intent(tx, host, status)
    take_lock(tx, host, read_profile=True)


_NOTHING_OPEN: dict[str, Any] = {"lock": None, "intent": None, "unfinished": []}  # what hostagent.QUIET stands for


def _fast_path_possible(tx: HostTransaction, host: Any) -> bool:
    """Only a plain switch built on the target, with no models to verify, may skip the full path."""
    s = tx.settings
    return (tx.phase == "deploy" and s.mode == Action.SWITCH and s.build == "target"
            and not (host.data.get("models") or host.data.get("models_manifest"))
            and host.data.get("rollback_plan") is None and host.data.get("generation") in (None, ""))


def _nothing_to_do(tx: HostTransaction, host: Any, facts: dict[str, str], status: dict[str, Any]) -> bool:
    """The pushed flake (by content hash) and this host's configuration are what its last committed
    deploy built, and the host runs exactly that, with nothing open: `unchanged`, without evaluating
    the flake, taking the lock or writing a record. Any doubt takes the full path."""
    try:
        record = json.loads(facts.get("last_deploy") or "null")
    except ValueError:
        return False
    if not isinstance(record, dict) or status.get("intent") or status.get("lock") or status.get("unfinished"):
        return False
    digest = runstate.of(host.state).flake_hash(tx.settings.flake)
    final = Generation.from_json(record.get("final"))
    if not (record.get("status") in (Status.OK.value, Status.UNCHANGED.value) and record.get("flake_hash") == digest
            and record.get("nixos_config") == tx.settings.nixos_config and final.path
            and facts.get("profile") == facts.get("running") == final.path):
        return False
    tx.previous = tx.target = final
    tx.flake_hash = digest
    tx.unchanged = tx.fast_unchanged = True
    tx.record_on_host = False
    return True


def install_agent(tx: HostTransaction, host: Any) -> dict[str, Any]:
    """Copy this version of the host agent to the host (by content hash); returns its status."""
    upload = f"{hostagent.SCRIPT}.upload-{uuid.uuid4().hex[:8]}"
    sh(tx, host, f"mkdir -p {quote(hostagent.DIR)}")
    put_bytes(host, hostagent.SOURCE, upload, timeout=tx.settings.command_timeout)
    got = sh(tx, host, f"{hostagent.install(upload)}; {hostagent.command('status')}")
    if not got.ok:
        raise StepFailed(f"could not install the host agent: {got.last_error}")
    tx.agent_ready = True
    return hostagent.parse(got.stdout_lines)


def ensure_agent(tx: HostTransaction, host: Any) -> dict[str, Any]:
    """The agent's status, installing it first where this version is missing."""
    facts = nixcmd.parse_key_values(list(sh(tx, host, hostagent.status_or_missing()).stdout_lines))
    status = hostagent.parse_status(facts.get("agent"))
    if status is None:
        return install_agent(tx, host)
    tx.agent_ready = True
    return status


def recover_open_intent(tx: HostTransaction, host: Any, status: dict[str, Any] | None = None) -> str | None:
    """What dead runs left is resolved before anything else: a revert a crash interrupted is finished,
    an open intent whose lease ran out (by the host's clock) is reverted, both detached on the host
    and verified there. An intent whose lease is alive belongs to a live controller: skip the host.
    Returns the resolved intent's run id, if any."""
    if status is None:
        status = ensure_agent(tx, host)
    intent, unfinished = status.get("intent"), list(status.get("unfinished") or [])
    if intent and intent.get("left", 0) > 0:
        if intent.get("run_id") != tx.run_id:
            raise LockRefused(f"run {intent.get('run_id')} is deploying this host (its lease runs "
                              f"{intent['left']:.0f}s more); if its controller died, the host reverts by "
                              "itself when the lease runs out")
        # This run's own earlier attempt (a resumed run): its lease runs out within one lease_grace.
        def spent() -> bool:  # one round trip per look
            now = _agent_status(tx, host).get("intent") or {}
            return now.get("intent_id") != intent["intent_id"] or now.get("left", 1) <= 0

        wait_until(spent, intent["left"] + 5, f"run {tx.run_id}'s earlier intent to run out")
        status = _agent_status(tx, host)
        intent, unfinished = status.get("intent"), list(status.get("unfinished") or [])
    if not intent and not unfinished:
        return None
    ids = unfinished + ([intent["intent_id"]] if intent else [])
    run_id = intent.get("run_id") if intent else None
    host.log(f"a dead run left intent(s) {', '.join(ids)}: reverting to the recorded generation", logger.warning)
    got = sh(tx, host, hostagent.command("recover"))
    if not got.ok:
        raise StepFailed(f"recovering the open intent failed: {got.last_error}")
    for intent_id in ids:
        found = wait_for_outcome(tx, host, intent_id)
        if found.get("outcome") != "reverted":
            raise StepFailed(f"recovering intent {intent_id}: the revert ended {found.get('outcome')}; "
                             f"see {STATE_DIR}/resolved/{intent_id}.*.log on the host")
    host.log(f"intent(s) {', '.join(ids)} reverted and verified")
    return run_id or ids[0]


def _agent_status(tx: HostTransaction, host: Any) -> dict[str, Any]:
    return hostagent.parse(sh(tx, host, hostagent.command("status")).stdout_lines)


def wait_for_outcome(tx: HostTransaction, host: Any, intent_id: str, bound: float | None = None) -> dict[str, Any]:
    """An intent's decision once final: who decided, and a revert's outcome once it ended (over new
    connections when the run's session is gone). Raises HostUnreachable when none comes in time."""
    found: dict[str, Any] = {}

    def decided() -> bool:
        try:
            got = sh(tx, host, hostagent.command("outcome", "--intent", intent_id))
        except (HostUnreachable, StepTimeout):
            tx.fresh_connections = True
            return False
        if got.returncode in (0, hostagent.FAILED):
            found.update(hostagent.parse(got.stdout_lines))
            return got.ok or "error" in found
        return False

    bound = bound or tx.settings.activation_timeout + tx.settings.confirm_timeout + tx.settings.lease_grace + 30
    if not wait_until(decided, bound, f"intent {intent_id}'s decision"):
        raise HostUnreachable(f"the host did not report intent {intent_id}'s decision within {bound:g}s")
    if "error" in found and "decided_by" not in found:
        raise StepFailed(found["error"])
    return found


def wait_until(predicate: Callable[[], bool], bound: float, what: str, interval: float = 1.0) -> bool:
    """The one polling loop: True once `predicate` holds, False when `bound` seconds passed."""
    deadline = time.monotonic() + bound
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


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


def take_lock(tx: HostTransaction, host: Any, read_profile: bool = False) -> None:
    """The host's deploy lock, taken atomically by the host agent and kept alive by this controller's
    heartbeat: a dead controller's lock frees itself within one lease (host data lease_grace), by
    the host's clock. Ours from an earlier attempt of the same run (a resume) is taken over.
    `read_profile`: once the lock is ours, the profile is read in the same round trip (for step 2)."""
    if not tx.agent_ready:
        ensure_agent(tx, host)
    owner = {"run_id": tx.run_id, "controller": socket.gethostname(), "pid": os.getpid(),
             "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args = ["lock-take", "--owner", json.dumps(owner, sort_keys=True), "--for", f"{tx.settings.lease_grace:g}",
            "--reboot-grace", f"{_reboot_grace(tx):g}", "--adopt-run"]
    if tx.settings.break_lock:
        args.append("--force")
    take = hostagent.command(*args)
    got = sh(tx, host, nixcmd.then_if_ok(take, nixcmd.profile_state(tx.settings.profile)) if read_profile else take)
    answer = hostagent.parse(got.stdout_lines)
    if got.ok:
        tx.locked, tx.lock_token = True, str(answer["token"])
        if read_profile:
            tx.profile_at_lock = nixcmd.parse_profile_state([l for l in got.stdout_lines if not l.startswith("{")])
        _heartbeat(host).keep(host, tx.lock_token, tx.settings.lease_grace)
        return
    if got.returncode != hostagent.BUSY:
        raise StepFailed(f"could not take the lock: {answer.get('error') or got.last_error}")
    holder = answer.get("holder") or {}
    finished = read_host_result(str(holder["run_id"]), host.name) if holder.get("run_id") else None
    if finished is not None and finished.status is not Status.PAUSED:  # probation keeps its lock
        # A run of this controller that already finished with this host (it was cut off before it
        # could release): its heartbeat stopped with it, so its lock is ours to take over now.
        got = sh(tx, host, hostagent.command(*args, "--force"))
        if got.ok:
            tx.locked, tx.lock_token = True, str(hostagent.parse(got.stdout_lines)["token"])
            _heartbeat(host).keep(host, tx.lock_token, tx.settings.lease_grace)
            return
    raise LockRefused(
        f"locked by run {holder.get('run_id', '?')} (controller {holder.get('controller', '?')} pid "
        f"{holder.get('pid', '?')}, since {holder.get('since', '?')}; its lease runs {answer.get('left', 0):.0f}s "
        f"more, renewed while that controller lives); wait for it, or, if that run is dead, its lock frees "
        f"itself within {tx.settings.lease_grace:g}s (or rerun with --data break_lock=true)"
    )


def _reboot_grace(tx: HostTransaction) -> float:
    """How long a lease lives after a reboot, counted from the new boot: long enough for the controller
    to see the boot and renew (a reboot it asked for), short enough that a crash ends on time."""
    return tx.settings.reboot_timeout + tx.settings.lease_grace


def record_previous(tx: HostTransaction, host: Any) -> None:
    """Step 2: the generation to return to on failure (as read under the lock, in its round trip)."""
    state, tx.profile_at_lock = tx.profile_at_lock, None
    if state is None or state.current is None:
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
    open_intent(tx, host)
    if mode.sets_profile:  # set, then read back, in one round trip
        set_ = sh(tx, host, nixcmd.then_if_ok(nixcmd.set_profile(profile, path), nixcmd.profile_state(profile)))
        if not set_.ok:
            raise StepFailed(f"setting {profile} failed: {set_.last_error}")
        tx.target = nixcmd.parse_profile_state(list(set_.stdout_lines)).current_generation
    else:  # test: the generation runs without entering the profile
        tx.target = Generation(None, path)
    started = time.monotonic()
    call_id = uuid.uuid4().hex[:12]
    try:
        try:  # the running system comes back in the same round trip (check_activation)
            activated = sh(tx, host, nixcmd.then_running(nixcmd.activate(path, mode, call_id)),
                           tx.settings.activation_timeout)
        except SessionLost as exc:
            activated = reattach_activation(tx, host, call_id, started, exc)
    except (HostUnreachable, StepTimeout) as exc:
        raise WatchdogReverted.after(tx, host, f"the host stopped answering during activation ({exc})")
    check_activation(tx, host, activated)
    if mode.activates:
        # From here on only a new login proves the generation: a short lease until one renews it.
        mark(tx, host, "activated", tx.settings.confirm_timeout)
        if tx.settings.magic_rollback:
            confirm(tx, host)
    elif mode == Action.BOOT and tx.settings.reboot:
        reboot_into_target(tx, host)
    elif mode == Action.BOOT:
        tx.boot_pending = tx.reboot_required = True
        host.log("boot: the new generation runs after the next reboot; its gates run then "
                 "(host data reboot=true reboots now)")


def open_intent(tx: HostTransaction, host: Any) -> None:
    """Before anything changes: the intent, with its own id, fenced by this run's lock and by the
    generation recorded in step 2 (compare and swap on the host), and the watchdog that enforces it."""
    tx.intent_id = f"{tx.run_id[:24]}-{uuid.uuid4().hex[:10]}"
    record = tx.result(Status.ROLLED_BACK, tx.previous, "reverted").to_json()
    intent = {"intent_id": tx.intent_id, "run_id": tx.run_id, "previous": tx.previous.to_json(),
              "target": {"path": tx.target.path}, "mode": tx.settings.mode.value, "profile": tx.settings.profile,
              "activation_timeout": tx.settings.activation_timeout, "record": record,
              "opened": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    assert tx.lock_token is not None, "an intent is opened only under this run's lock"
    opened = sh(tx, host, hostagent.command("open", "--intent-json", json.dumps(intent, sort_keys=True),
                                            "--token", tx.lock_token, "--for", f"{tx.settings.lease_grace:g}",
                                            "--reboot-grace", f"{_reboot_grace(tx):g}"))
    answer = hostagent.parse(opened.stdout_lines)
    if opened.returncode == hostagent.FENCED:
        raise Fenced(f"nothing was switched: {answer.get('error') or opened.last_error}")
    if not opened.ok:
        raise StepFailed(f"could not journal the intent on the host: {answer.get('error') or opened.last_error}")
    tx.intent_open = True
    _heartbeat(host).keep(host, tx.lock_token, tx.settings.lease_grace, tx.intent_id)





def mark(tx: HostTransaction, host: Any, phase: str, seconds: float, fresh: bool = False) -> None:
    """Tell the agent the intent is `activated` (from now on only a confirmation over a new login
    renews it) or `confirmed`; a lease already spent means the host decided."""
    command = hostagent.command(phase, "--intent", str(tx.intent_id), "--for", f"{seconds:g}")
    marked = run_fresh(host, command, timeout=tx.settings.command_timeout) if fresh else sh(tx, host, command)
    if marked.returncode == hostagent.LOST:
        raise WatchdogReverted.after(tx, host, "the lease ran out before the controller renewed it")
    if not marked.ok:
        raise StepFailed(f"could not mark the intent {phase}: {marked.last_error}")


def confirm(tx: HostTransaction, host: Any) -> None:
    """Confirm over a new SSH connection (a generation that breaks new logins must not be confirmed
    through an old session); from then on the heartbeat keeps the intent. Without it the watchdog reverts."""
    try:
        mark(tx, host, "confirm", tx.settings.lease_grace, fresh=True)
    except HostUnreachable as exc:
        raise WatchdogReverted.after(tx, host, f"no new SSH connection after activation ({exc})")


def claim(tx: HostTransaction, host: Any, who: str) -> bool:
    """Claim the decision on this transaction's intent. False: another claimant decided first."""
    got = sh(tx, host, hostagent.command("claim", "--intent", str(tx.intent_id), "--who", who))
    if got.ok:
        tx.intent_open = False
        return True
    if got.returncode == hostagent.LOST:
        tx.intent_open = False
        return False
    raise StepFailed(f"could not claim the decision on the host: {got.last_error}")


def await_revert(tx: HostTransaction, host: Any, why: str) -> tuple[Generation, str, str]:
    """Wait (over new connections if need be) for whoever claimed this intent's revert (the controller's
    own detached revert, the watchdog, a recovery) to finish; the agent verified the result.
    Returns (the generation the host is on, who reverted, the outcome)."""
    host.log(f"{why}; waiting for the host's revert", logger.warning)
    started = time.monotonic()
    found = wait_for_outcome(tx, host, str(tx.intent_id))
    tx.intent_open = False
    tx.timings["revert_wait"] = round(time.monotonic() - started, 3)
    who = str(found.get("decided_by") or "?")
    if who == hostagent.COMMITTED:
        raise StepFailed(f"{why}; but intent {tx.intent_id} was committed")
    state = nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(tx.settings.profile)).stdout_lines))
    outcome = str(found.get("outcome") or "?")
    if found.get("problems"):
        outcome += f" ({'; '.join(found['problems'])})"
    return state.current_generation, who, outcome


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
    stdout, running = nixcmd.take_running(activated.stdout_lines)
    activated = RemoteResult(activated.returncode, stdout, activated.stderr_lines)
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
        if running is None:  # the activation's own round trip did not say (reattached after a lost session)
            running = sh(tx, host, nixcmd.running_system()).stdout.strip()
        if running != path:
            raise StepFailed(f"after activation /run/current-system is {running or 'missing'}, not {path}")


def _activation_error(activated: RemoteResult) -> str:
    return nixcmd.activation_error(activated.stdout_lines + activated.stderr_lines) or activated.last_error


def reboot_into_target(tx: HostTransaction, host: Any) -> None:
    """Mode boot with host data reboot: reboot, wait for a new boot id within reboot_timeout, and check
    that the target booted. A host that booted the previous generation fell back."""
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
    # The boot unit re-armed the watchdog from the new boot; arm it here too, for a booted generation
    # that lacks the unit (idempotent).
    sh(tx, host, hostagent.command("rearm", "--intent", str(tx.intent_id)))
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
    """Step 9, the commit: claim the decision, which disarms the watchdog; record; release the lock.
    A host whose gates were inconclusive (bench_inconclusive=pause) is held on probation instead."""
    if tx.intent_open and tx.probation:
        hold_on_probation(tx, host)
        return
    status = Status.UNCHANGED if tx.unchanged else Status.OK
    final = tx.previous if tx.unchanged or tx.target.path is None else tx.target
    if tx.intent_open and not commit(tx, host, status, final):
        reverted = WatchdogReverted.after(tx, host, "the lease ran out before the commit")
        _finish(tx, host, reverted.status, reverted.final, f"{reverted} (the controller was cut off or too slow "
                "to renew its lease)")
        return
    if not tx.finished:
        _finish(tx, host, status, final, None)


def commit(tx: HostTransaction, host: Any, status: Status, final: Generation) -> bool:
    """The claim, the host's record and the lock's release in one agent call, and the metrics, in one
    round trip. False: another claimant decided first. The claim is the decision; what follows it on
    the host cannot change it: a record the host could not write is written again by _finish. A
    connection lost on the way is asked again once, over a new one: the agent answers for a commit it
    already won as for a new one, and writes the record once."""
    result = tx.result(status, final, None)
    command = hostagent.commit(str(tx.intent_id), tx.lock_token, _host_record(tx, result))
    if tx.settings.metrics_dir:
        command = f"{command}; r=$?; if [ $r = 0 ]; then {_metrics_command(tx)}; fi; exit $r"
    try:
        got = sh(tx, host, command)
    except (HostUnreachable, StepTimeout):
        tx.fresh_connections = True
        got = sh(tx, host, command)
    answer = hostagent.parse(got.stdout_lines)
    if got.returncode == hostagent.LOST:
        tx.intent_open = False
        return False
    if not got.ok:
        raise StepFailed(f"could not claim the decision on the host: {answer.get('error') or got.last_error}")
    tx.intent_open = False
    tx.locked = not answer.get("released")
    if answer.get("recorded"):
        tx.record_on_host = False
        _finish(tx, host, status, final, None, result=result)
    else:
        host.log(f"warning: the host did not write the record ({answer.get('record_error', '?')}); again", logger.warning)
        _finish(tx, host, status, final, None)
    return True


def hold_on_probation(tx: HostTransaction, host: Any) -> None:
    """Neither commit nor revert: stop the heartbeat, set the intent's and the lock's leases to the
    pause timeout (on the host's clock, so the host decides alone if nobody does: its watchdog
    reverts), keep what a decision needs on the controller, and end this run's part as `paused`."""
    assert tx.intent_id is not None and tx.lock_token is not None
    _heartbeat(host).stop(host.name)
    timeout = tx.settings.pause_timeout
    held = sh(tx, host, hostagent.command("renew", "--token", tx.lock_token, "--for", f"{timeout:g}",
                                          "--intent", tx.intent_id))
    if held.returncode == hostagent.LOST:
        reverted = WatchdogReverted.after(tx, host, "the lease ran out before the host was put on probation")
        _finish(tx, host, reverted.status, reverted.final, str(reverted))
        return
    if not held.ok:
        raise StepFailed(f"could not put the host on probation: {held.last_error}")
    probation.write(probation.Probation(
        host=host.name, run_id=tx.run_id, intent_id=tx.intent_id, lock_token=tx.lock_token, why=tx.probation or "",
        previous=tx.previous.to_json(), target=tx.target.to_json(), pause_timeout=timeout, flake_hash=tx.flake_hash,
        health=tx.health, bench=tx.bench))
    tx.record_on_host = False  # nothing final happened on the host: its open intent says what is pending
    _finish(tx, host, Status.PAUSED, tx.target,
            f"{tx.probation}; on probation: decide with `ipex-fleet rollout --resume {tx.run_id} --approve` "
            f"or `--abort`; without a decision the host reverts by itself in {timeout:g}s")


def decide_probation(tx: HostTransaction, host: Any) -> None:
    """deploys/decide.py: a person's decision on a host left on probation by this run (--data
    decision=approve|abort). Approve claims the commit; abort reverts like a failed gate. If the pause
    timed out first, the host's watchdog already reverted it, and the result says so."""
    decision = str(host.data.get("decision") or "")
    held = probation.read(tx.run_id, host.name)
    if decision not in probation.DECISIONS or held is None:
        tx.record_on_host = False  # nothing was decided: the host's own records stay as they are
        raise StepFailed(f"--data decision={decision or '?'}: give approve or abort" if held else
                         f"run {tx.run_id} left no probation for {host.name}; nothing to decide")
    tx.intent_id, tx.lock_token, tx.locked, tx.intent_open = held.intent_id, held.lock_token, True, True
    tx.previous, tx.target, tx.flake_hash = held.previous_generation, held.target_generation, held.flake_hash
    tx.health, tx.bench = held.health, held.bench
    tx.probation = None
    if decision == "abort":
        _fail(tx, host, f"aborted on probation ({held.why})")
    elif claim(tx, host, hostagent.COMMITTED):
        host.log(f"approved on probation: generation {tx.target.number} committed")
        _finish(tx, host, Status.OK, tx.target, None)
    else:
        reverted = WatchdogReverted.after(tx, host, f"the pause ({held.pause_timeout:g}s) ran out before the approval")
        _finish(tx, host, reverted.status, reverted.final, str(reverted))
    probation.decided(tx.run_id, host.name)


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
