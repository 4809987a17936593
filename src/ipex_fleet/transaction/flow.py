"""One host's deploy as a transaction (DESIGN.md, "One host's deploy is a transaction"), top to bottom.

The steps are declared below, each with the timeout of its longest command and the lease the
heartbeat keeps while it runs; `roles/` hands them to pyinfra (one operation per step, or one per
host with pace=host). `run_step` runs every step the same way: a step that fails rolls the host
back to the generation recorded at the start (once an intent is open), writes the host's result on
both sides, releases the lock, and fails the host in pyinfra so the run's exit code is not 0.

    preflight        the host is fit, the agent in place, dead runs resolved, the lock taken
    record_previous  the generation to return to
    push_flake       the flake by content hash, with the locked inputs the host lacks
    build            the toplevel, on the target (or substituted from the controller's cache)
    switch           intent journaled, profile set, activated detached, confirmed over a new login
    install_models   the declared models, verified, never half-written where a service sees them
    health           the probe at the host's levels
    bench_gate       the quick benchmark against the baseline, judged by the gate's statistics
    record           the commit: claim the decision, record, release the lock

The parts of each step that talk to the host agent are in `agentcalls`, the activation's in
`activation`, steps 2 to 4 in `system`, the gates in `gates`, the models in `models`; other
deploys' steps (rollback, recover, check, status, plan, maintenance) are declared here too.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from shlex import quote
from typing import Any, Callable

from pyinfra import logger
from pyinfra.api.state import BaseStateCallback

from ipex_fleet.common import redact
from ipex_fleet.domain import NO_GENERATION, Action, Generation, HostResult, Status
from ipex_fleet.fleet import probation
from ipex_fleet.fleet.plan import plan_step
from ipex_fleet.ledger.results import write_host_result
from ipex_fleet.ledger.runs import Ledger
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.remote import HostUnreachable, RemoteResult, SessionLost, StepTimeout
from ipex_fleet.settings import DeploySettings, from_host_data
from ipex_fleet.transaction import gates, hostagent, maintenance, models, progress, runstate
from ipex_fleet.transaction.activation import (accepted_activation_codes, activation_error, check_activation,
                                               reattach_activation, reboot_into_target)
from ipex_fleet.transaction.agentcalls import (await_revert, claim, confirm, install_agent, mark, open_intent,
                                               recover_open_intent, take_lock, watchdog_reverted)
from ipex_fleet.transaction.core import (CommittedAfterAll, Fenced, HostTransaction, LockRefused, StepFailed, StepFn,
                                         WatchdogReverted, heartbeat_of, sh, sh_fresh, show_state, transaction_for)
from ipex_fleet.transaction.rollback import (planned_generation, read_plan, recover, requested_generation,
                                             rollback_requested)
from ipex_fleet.transaction.system import build, push_flake, push_probe, record_previous

Seconds = Callable[[DeploySettings], float]


def _always(tx: HostTransaction, host: Any) -> bool:
    return True


@dataclass(frozen=True)
class Step:
    """One step of a host's transaction: what pyinfra calls it, what runs, how long its longest
    command may take, and the lease the heartbeat keeps on the host while it runs."""

    title: str
    run: StepFn
    timeout: Seconds
    lease: Seconds = lambda s: s.lease_grace
    gate: bool = False  # a check with nothing to check where nothing changed (or in a dry run)
    wanted: Callable[[HostTransaction, Any], bool] = _always  # False: the host gets no operation at all

    @property
    def name(self) -> str:
        """The step's name in timings, progress events and results: its function's."""
        return self.run.__name__


def _command(s: DeploySettings) -> float:
    return s.command_timeout


def validate_inventory(inventory: Any) -> None:
    """Check every active host's data once, before any operation runs (raises UserError)."""
    for host in inventory.iter_activated_hosts():
        # Kept for the host's transaction: reading pyinfra's layered host data is not free.
        runstate.of(host.state).settings[host.name] = from_host_data(host.name, host.data)
        requested_generation(host.data, host.name)
        planned_generation(host.data, host.name)
        read_plan(host.data, "expect_plan", host.name)
    models.validate(inventory)


def run_step(state: Any, host: Any, step: Step) -> bool:
    """Run one step for one host; on failure, undo and record. Returns False to fail the host."""
    tx = transaction_for(host)
    if tx.finished:  # pyinfra's --retry runs a failed step again: the host's result stands
        return tx.final_status is not None and tx.final_status.succeeded
    if (tx.dry_run and step.name != "record") or ((tx.unchanged or tx.boot_pending) and step.gate) or (
            tx.fast_unchanged and step.name != "record"):
        return True
    name = step.title
    started = time.monotonic()
    show_state(tx, progress.STEP_STATES.get(step.name, step.name))
    tx.step_timeout = step.timeout(tx.settings)
    if tx.locked and tx.lock_token:  # the step's lease, kept by the heartbeat while the step runs
        heartbeat_of(host).keep(host, tx.lock_token, step.lease(tx.settings), tx.intent_id if tx.intent_open else None)
    try:
        step.run(tx, host)
        error: BaseException | None = None
    except Exception as exc:
        error = exc
    tx.step_timeout = tx.settings.command_timeout
    tx.timings[step.name] = round(time.monotonic() - started, 3)
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
    elif isinstance(error, CommittedAfterAll):
        _finish_committed(tx, host, f"committed after all: {error}")
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
    except CommittedAfterAll as exc:
        _finish_committed(tx, host, f"committed after all: {exc}")
        return
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
    gates.recheck_after_rollback(tx, host)
    tx.timings["recheck"] = round(time.monotonic() - started, 3)
    suffix = "" if who == "reverting-controller" else f"; the host's {who} restored the generation"
    _finish(tx, host, Status.ROLLED_BACK, final, error + suffix)


def _finish_committed(tx: HostTransaction, host: Any, why: str, status: Status = Status.OK,
                      final: Generation | None = None, result: HostResult | None = None) -> None:
    """The host committed this run's intent though the controller did not hear it (the commit's answer
    was lost, or an approval came): the record was written with the commit, on the target."""
    host.log(why, logger.warning)
    tx.intent_open, tx.record_on_host = False, False
    _finish(tx, host, status, final or tx.target, None, result=result)


def _finish(tx: HostTransaction, host: Any, status: Status, final: Generation, error: str | None,
            result: HostResult | None = None) -> None:
    """Record the result on the host (when it answers) and on the controller; release the lock.
    A decision already taken (a won commit, a verified revert) stands if recording fails. `result`:
    the one the commit already recorded on the host (commit), the same on both sides."""
    tx.finished = True
    tx.final_status = status
    heartbeat_of(host).stop(host.name)
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
    """The deployment metrics, best effort: written by the host agent (no second interpreter, as the
    commit's own call does); by `ipex-fleet metrics` only where this agent may not be installed yet (a
    run that ended before the preflight installed it)."""
    assert tx.settings.metrics_dir
    if tx.agent_ready:
        write = hostagent.command("metrics", "--textfile-dir", tx.settings.metrics_dir)
    else:
        write = f"{tx.settings.ipex_fleet_command} metrics --textfile-dir {quote(tx.settings.metrics_dir)}"
    return f"{{ {write} >/dev/null 2>&1 || true; }}"


def _ledger_record(result: HostResult, phase: str) -> None:
    Ledger().record_plain(result, phase)  # a rollout's own row wins; one commit


# -- step 1 ---------------------------------------------------------------------------------

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
    take_lock(tx, host, read_profile=True, push=push_probe(tx, host))


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


# -- step 5 ---------------------------------------------------------------------------------

def switch(tx: HostTransaction, host: Any) -> None:
    """Step 5, by mode (switch-to-configuration's): journal the intent and arm the watchdog, set the
    profile, activate detached, then prove the generation: a confirmation over a new login (switch,
    test), a reboot into it (boot with host data reboot), or nothing until the next boot (boot)."""
    if tx.unchanged:
        return
    started = time.monotonic()
    path = tx.target.path
    assert path is not None
    match tx.settings.mode:
        case Action.DRY_ACTIVATE:  # a report only: nothing else runs
            _dry_activate(tx, host, path)
            return
        case Action.SWITCH | Action.BOOT:
            tx.target = _open_and_set_profile(tx, host, path)
        case Action.TEST:  # the generation runs without entering the profile
            open_intent(tx, host)
            tx.target = Generation(None, path)
    # From the activation on only a new login proves the generation: a short lease until one renews
    # it. The activation's own round trip marks the intent `activated` where the target then runs.
    activated = tx.settings.mode in (Action.SWITCH, Action.TEST)
    result, marked = _activate(tx, host, path, mark=activated)
    check_activation(tx, host, result)
    match tx.settings.mode:
        case Action.SWITCH | Action.TEST:
            if marked != 0:  # not marked there (a session lost, an agent error): marked now, or the host decided
                mark(tx, host, "activated", tx.settings.confirm_timeout)
            if tx.settings.magic_rollback and not gates_follow(tx, host):
                tx.timings[SWITCH.name] = round(time.monotonic() - started, 3)  # the record carries this step
                commit_over_a_new_login(tx, host)
            elif tx.settings.magic_rollback:
                confirm(tx, host)
        case Action.BOOT if tx.settings.reboot:
            reboot_into_target(tx, host)
        case Action.BOOT:
            tx.boot_pending = tx.reboot_required = True
            host.log("boot: the new generation runs after the next reboot; its gates run then "
                     "(host data reboot=true reboots now)")


def gates_follow(tx: HostTransaction, host: Any) -> bool:
    """Whether a step after the switch has work for this host: its models, health checks, benchmark."""
    return any(step.wanted(tx, host) for step in (MODELS, HEALTH, BENCH))


def commit_over_a_new_login(tx: HostTransaction, host: Any) -> None:
    """With no gate after the activation, the confirmation is the commit itself: one call over a new
    SSH connection (a generation that breaks new logins is never committed through the old session),
    within the short lease of the `activated` mark. Where no new login comes, the host's revert is
    awaited, and claimed by the controller should the host answer again with the intent open (a boot
    re-arms it for a long lease); where the lease ran out first, the watchdog's revert is awaited."""
    try:
        won = commit(tx, host, Status.OK, tx.target, fresh=True)
    except HostUnreachable as exc:  # not confirmed: should the host answer again, the controller reverts it
        raise watchdog_reverted(tx, host, f"no new SSH connection after activation ({exc})", revert_when_back=True)
    if not won:
        raise watchdog_reverted(tx, host, "the lease ran out before the confirmation")


def _dry_activate(tx: HostTransaction, host: Any, path: str) -> None:
    dry = sh(tx, host, nixcmd.activate(path, Action.DRY_ACTIVATE), tx.step_timeout)
    if not dry.ok:
        raise StepFailed(f"dry-activate exited {dry.returncode}: {activation_error(dry)}")
    for line in dry.stdout_lines:
        host.log(line)
    tx.unchanged = tx.dry_run = True


def _open_and_set_profile(tx: HostTransaction, host: Any, path: str) -> Generation:
    """The intent journaled and its watchdog armed, then the profile set and read back, in one round
    trip (the profile is set only once the intent is open). Where the setting did not report (a session
    lost on the way), the host's profile is read again."""
    profile = tx.settings.profile
    set_ = open_intent(tx, host, then=nixcmd.then_if_ok(nixcmd.set_profile(profile, path),
                                                         nixcmd.profile_state(profile)))
    if set_ is None:
        state = nixcmd.parse_profile_state(list(sh(tx, host, nixcmd.profile_state(profile)).stdout_lines))
        if state.current is None or state.current_generation.path != path:
            raise StepFailed(f"setting {profile} did not report, and the profile is not on {path}")
        return state.current_generation
    if not set_.ok:
        raise StepFailed(f"setting {profile} failed: {set_.last_error}")
    return nixcmd.parse_profile_state(list(set_.stdout_lines)).current_generation


def _activate(tx: HostTransaction, host: Any, path: str, mark: bool) -> tuple[RemoteResult, int | None]:
    """switch-to-configuration in a unit of its own: a lost session re-attaches to it; a host that
    stops answering is left to its watchdog, whose verified revert is awaited (the controller claims
    it should the host answer again with the intent open). With `mark`, the same
    round trip marks the intent `activated` where the activation ended as check_activation accepts and
    the target runs then; the second value is that mark's exit code (None: not marked)."""
    started = time.monotonic()
    call_id = uuid.uuid4().hex[:12]
    then = (path, hostagent.command("activated", "--intent", str(tx.intent_id), "--for",
                                    f"{tx.settings.confirm_timeout:g}")) if mark else None
    # Inside the activation's unit, before switch-to-configuration: this intent still open. A command
    # delivered late (after a revert) then switches nothing.
    fence = hostagent.command("fence", "--intent", str(tx.intent_id))
    try:
        try:  # the running system comes back in the same round trip (check_activation)
            got = sh(tx, host, nixcmd.then_running(nixcmd.activate(path, tx.settings.mode, call_id, fence), then,
                                                   accepted_activation_codes(tx)), tx.step_timeout)
        except SessionLost as exc:
            return reattach_activation(tx, host, call_id, started, exc), None
    except HostUnreachable as exc:  # should it answer again (a boot re-arms the intent for reboot_grace): reverted
        raise watchdog_reverted(tx, host, f"the host stopped answering during activation ({exc})", revert_when_back=True)
    except StepTimeout as exc:
        raise watchdog_reverted(tx, host, f"the host stopped answering during activation ({exc})")
    stdout, marked = nixcmd.take_then(got.stdout_lines)
    return RemoteResult(got.returncode, stdout, got.stderr_lines), marked

# -- step 9: the commit, or probation -------------------------------------------------------

def record(tx: HostTransaction, host: Any) -> None:
    """Step 9, the commit: claim the decision, which disarms the watchdog; record; release the lock.
    A host whose gates were inconclusive (bench_inconclusive=pause) is held on probation instead."""
    if tx.intent_open and tx.probation:
        hold_on_probation(tx, host)
        return
    status = Status.UNCHANGED if tx.unchanged else Status.OK
    final = tx.previous if tx.unchanged or tx.target.path is None else tx.target
    if tx.intent_open and not commit(tx, host, status, final):
        reverted = watchdog_reverted(tx, host, "the lease ran out before the commit")
        _finish(tx, host, reverted.status, reverted.final, f"{reverted} (the controller was cut off or too slow "
                "to renew its lease)")
        return
    if not tx.finished:
        _finish(tx, host, status, final, None)


def commit(tx: HostTransaction, host: Any, status: Status, final: Generation, fresh: bool = False) -> bool:
    """The claim, the host's record, the lock's release and the metrics in one agent call (the agent
    writes the metrics itself once the commit is won: no second interpreter; a failure to write them
    changes nothing of the commit). False: another claimant decided first. The claim is the decision;
    what follows it on the host cannot change it: a record the host could not write is written again
    by _finish. A connection lost on the way is asked again once, over a new one: the agent answers for
    a commit it already won as for a new one, and writes the record once; where that answer does not
    come either, the agent is asked who decided (a won commit is the decision, its answer lost twice).
    `fresh`: over new connections only (commit_over_a_new_login)."""
    result = tx.result(status, final, None)
    command = hostagent.commit(str(tx.intent_id), tx.lock_token, _host_record(tx, result), tx.settings.metrics_dir)
    try:
        got: RemoteResult | None = sh_fresh(tx, host, command) if fresh else sh(tx, host, command)
    except (HostUnreachable, StepTimeout):
        tx.fresh_connections = True
        try:
            got = sh_fresh(tx, host, command) if fresh else sh(tx, host, command)
        except StepTimeout:
            got = None
        if (got is None or not (got.ok or got.returncode == hostagent.LOST)) and _committed_after_all(tx, host):
            _finish_committed(tx, host, "the commit's answers were lost; the host says it committed (its record "
                              "written then)", status, final, result)
            return True
        if got is None:
            raise StepTimeout("the commit, asked again, did not answer in time")
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


def _committed_after_all(tx: HostTransaction, host: Any) -> bool:
    """Whether this transaction's own commit won on the host (the agent's outcome of its intent)."""
    try:
        got = sh(tx, host, hostagent.command("outcome", "--intent", str(tx.intent_id)))
    except (HostUnreachable, StepTimeout):
        return False
    return got.ok and hostagent.parse(got.stdout_lines).get("decided_by") == hostagent.COMMITTED


def hold_on_probation(tx: HostTransaction, host: Any) -> None:
    """Neither commit nor revert: stop the heartbeat, set the intent's and the lock's leases to the
    pause timeout (on the host's clock, so the host decides alone if nobody does: its watchdog
    reverts), keep what a decision needs on the controller, and end this run's part as `paused`."""
    assert tx.intent_id is not None and tx.lock_token is not None
    heartbeat_of(host).stop(host.name)
    timeout = tx.settings.pause_timeout
    held = sh(tx, host, hostagent.command("renew", "--token", tx.lock_token, "--for", f"{timeout:g}",
                                          "--intent", tx.intent_id))
    if held.returncode == hostagent.LOST:
        reverted = watchdog_reverted(tx, host, "the lease ran out before the host was put on probation")
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
        try:
            reverted = watchdog_reverted(tx, host, f"the pause ({held.pause_timeout:g}s) ran out before the approval")
        except CommittedAfterAll as exc:  # another approval won first
            _finish_committed(tx, host, f"committed after all: {exc}")
        else:
            _finish(tx, host, reverted.status, reverted.final, str(reverted))
    probation.decided(tx.run_id, host.name)


# -- the steps, as pyinfra's operations run them (roles/) --------------------------------------
# Each: its title, its function, the timeout of its longest command, and (by default) the lease
# the heartbeat keeps, host data lease_grace. A gate does nothing where nothing changed.

PREFLIGHT = Step("Check NixOS, Nix and free disk; take the deploy lock", preflight, _command)
RECORD_PREVIOUS = Step("Record the current generation", record_previous, _command)
PUSH = Step("Push the flake (by content hash)", push_flake, lambda s: s.build_timeout)  # importing its inputs
BUILD = Step("Build the toplevel on the target", build, lambda s: s.build_timeout)
SWITCH = Step("Set the profile and activate", switch, lambda s: s.activation_timeout)
MODELS = Step("Install the declared models", models.install_models, lambda s: s.models_timeout,
              wanted=lambda tx, host: models.plan_for(host) is not None)
HEALTH = Step("Health checks on the new generation", gates.health, lambda s: s.health_timeout, gate=True,
              wanted=lambda tx, host: tx.settings.health_levels != ())
BENCH = Step("Quick benchmark against the baseline", gates.bench_gate, lambda s: s.bench_timeout, gate=True,
             wanted=lambda tx, host: tx.settings.bench)
RECORD = Step("Record the result and release the lock", record, _command)
DEPLOY = (PREFLIGHT, RECORD_PREVIOUS, PUSH, BUILD, SWITCH, MODELS, HEALTH, BENCH, RECORD)

ROLLBACK = Step("Return to the requested generation and check it", rollback_requested, lambda s: s.activation_timeout)
RECOVER = Step("Revert a dead run's open intent; take over a lock whose lease ran out", recover, _command)
DECIDE = Step("Approve or abort the host's probation", decide_probation, lambda s: s.activation_timeout)
PLAN = Step("Push and build the flake; compare with the current generation", plan_step, lambda s: s.build_timeout)
CHECK = Step("Still on the rolled-out generation, and healthy", gates.verify_promoted, lambda s: s.health_timeout)
OBSERVE = Step("Read the current generation", gates.observe, _command)
RECORD_CHECK = Step("Record the result", record, _command)
LOOK = Step("Look for anything to do (housekeeping only; no lock)", maintenance.look, _command)
MAINTENANCE = (
    # Each look at the lock is one command; begin waits up to maintenance_lock_wait for a deploy.
    Step("Take the lock (wait for a deploy, bounded, or skip); record the start", maintenance.begin, _command),
    Step("Remove old pushed flakes and records; keep the generations the policy and the anchors name; "
         "collect garbage", maintenance.retention, lambda s: s.build_timeout),
    Step("Vacuum the journal; clean temporary files", maintenance.vacuum, _command),
    Step("Verify the declared models, fetch corrupt ones again, prune by policy", models.install_models,
         lambda s: s.models_timeout),
    Step("Restart the AI services (--restart), then probe", maintenance.restart, lambda s: s.activation_timeout),
    Step("Health levels 1-3 and the full benchmark: drift against baseline and history", maintenance.health_and_drift,
         lambda s: s.bench_timeout),
    Step("Record the end and release the lock", record, _command),
)


def settled_at_prepare(state: Any, host: Any) -> bool:
    """Maintenance with housekeeping only: its look runs while pyinfra prepares the run (one round trip
    over the connection pyinfra just opened, every host at once, as a fact would). A host with nothing
    to do is settled then, `unchanged` and recorded, and gets no operation: at 40 hosts their seven
    operations each were 0.2 CPU-seconds of pyinfra's own work on the controller. Anything else (work
    to do, a failure) is left to the operations; a failed look has finished the host, and its
    operations report that."""
    tx = transaction_for(host)
    try:
        if not maintenance.fast_path_possible(tx, host) or not run_step(state, host, LOOK) or not tx.fast_unchanged:
            return False
        return run_step(state, host, MAINTENANCE[-1])
    except Exception as exc:  # at prepare time it would end pyinfra's run for every host: leave it to the operations
        host.log(f"maintenance's look at prepare time: {type(exc).__name__}: {exc}", logger.warning)
        return False
