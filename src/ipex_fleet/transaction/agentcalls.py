"""The controller's calls to the host agent (ipex_fleet.host.agent): install it, take and keep the
lock, journal the intent, mark it activated and confirmed, claim the decision, wait for a revert's
verified outcome, and resolve what dead runs left. The host decides by its own clock; these only ask.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from shlex import quote
from typing import Any

from pyinfra import logger

from ipex_fleet.transaction import hostagent
from ipex_fleet.domain import STATE_DIR, Generation, Status
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.remote import HostUnreachable, RemoteResult, StepTimeout, put_bytes
from ipex_fleet.ledger.results import read_host_result
from ipex_fleet.common.waiting import wait_until
from ipex_fleet.transaction.core import (CommittedAfterAll, Fenced, HostTransaction, LockRefused, StepFailed,
                                         WatchdogReverted, heartbeat_of, profile_state, sh, sh_fresh)

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
            now = agent_status(tx, host).get("intent") or {}
            return now.get("intent_id") != intent["intent_id"] or now.get("left", 1) <= 0

        wait_until(spent, intent["left"] + 5, f"run {tx.run_id}'s earlier intent to run out")
        status = agent_status(tx, host)
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


def agent_status(tx: HostTransaction, host: Any) -> dict[str, Any]:
    return hostagent.parse(sh(tx, host, hostagent.command("status")).stdout_lines)


def wait_for_outcome(tx: HostTransaction, host: Any, intent_id: str, bound: float | None = None,
                     revert_if_open: bool = False) -> dict[str, Any]:
    """An intent's decision once final: who decided, and a revert's outcome once it ended (over new
    connections when the run's session is gone). Raises HostUnreachable when none comes in time.
    `revert_if_open`: the controller has decided against the intent; once the host answers again
    after a look it did not answer, with the intent still open, the controller claims the revert
    itself (the claim decides: a commit that won first is reported as such) rather than wait out a
    lease that a boot may have counted afresh. A host that answers all along (a generation that only
    refuses new logins, over the run's own session) is left to its watchdog's short lease."""
    found: dict[str, Any] = {}
    reverting: list[str] = []
    dark: list[str] = []  # looks the host did not answer

    def decided() -> bool:
        try:
            got = sh(tx, host, hostagent.command("outcome", "--intent", intent_id))
            if revert_if_open and dark and not reverting and got.returncode == hostagent.BUSY \
                    and hostagent.parse(got.stdout_lines).get("open"):
                host.log("the host answers again with the intent open: the controller claims its revert",
                         logger.warning)
                revert = sh(tx, host, hostagent.command("revert", "--intent", intent_id, "--who",
                                                        "reverting-controller", "--detach"))
                reverting.append(intent_id)  # asked once: started, or another claimant decided
                if not revert.ok and revert.returncode != hostagent.LOST:  # the watchdog is left to it
                    host.log(f"the revert did not start ({revert.last_error}); waiting for the watchdog",
                             logger.warning)
                return False
        except (HostUnreachable, StepTimeout):
            tx.fresh_connections = True
            dark.append(intent_id)
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


def take_lock(tx: HostTransaction, host: Any, read_profile: bool = False,
              push: dict[str, Any] | None = None) -> None:
    """The host's deploy lock, taken atomically by the host agent and kept alive by this controller's
    heartbeat: a dead controller's lock frees itself within one lease (host data lease_grace), by
    the host's clock. Ours from an earlier attempt of the same run (a resume) is taken over.
    `read_profile`: once the lock is ours, the profile is read in the same round trip (for step 2).
    `push` (system.push_probe's): the same call reads and tidies what the push needs (tx.push_known)."""
    if not tx.agent_ready:
        ensure_agent(tx, host)
    owner = {"run_id": tx.run_id, "controller": socket.gethostname(), "pid": os.getpid(),
             "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args = ["lock-take", "--owner", json.dumps(owner, sort_keys=True), "--for", f"{tx.settings.lease_grace:g}",
            "--reboot-grace", f"{reboot_grace(tx):g}", "--adopt-run"]
    if tx.settings.break_lock:
        args.append("--force")
    take = hostagent.command(*args, *(["--push-json", json.dumps(push, sort_keys=True)] if push else []))
    got = sh(tx, host, nixcmd.then_if_ok(take, nixcmd.profile_state(tx.settings.profile)) if read_profile else take)
    answer = hostagent.parse(got.stdout_lines)
    if got.ok:
        tx.locked, tx.lock_token = True, str(answer["token"])
        if read_profile:
            tx.profile_at_lock = nixcmd.parse_profile_state([l for l in got.stdout_lines if not l.startswith("{")])
        if isinstance(answer.get("push"), dict):
            tx.push_known = answer["push"]
        heartbeat_of(host).keep(host, tx.lock_token, tx.settings.lease_grace)
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
            heartbeat_of(host).keep(host, tx.lock_token, tx.settings.lease_grace)
            return
    raise LockRefused(
        f"locked by run {holder.get('run_id', '?')} (controller {holder.get('controller', '?')} pid "
        f"{holder.get('pid', '?')}, since {holder.get('since', '?')}; its lease runs {answer.get('left', 0):.0f}s "
        f"more, renewed while that controller lives); wait for it, or, if that run is dead, its lock frees "
        f"itself within {tx.settings.lease_grace:g}s (or rerun with --data break_lock=true)"
    )


def reboot_grace(tx: HostTransaction) -> float:
    """How long a lease lives after a reboot, counted from the new boot: long enough for the controller
    to see the boot and renew (a reboot it asked for), short enough that a crash ends on time."""
    return tx.settings.reboot_timeout + tx.settings.lease_grace


def open_intent(tx: HostTransaction, host: Any, then: str | None = None) -> RemoteResult | None:
    """Before anything changes: the intent, with its own id, fenced by this run's lock and by the
    generation recorded in step 2 (compare and swap on the host), and the watchdog that enforces it.
    `then`: a command run in the same round trip once the intent is open and its watchdog armed (the
    profile's switch); its output and exit code are returned (None where it did not report)."""
    tx.intent_id = f"{tx.run_id[:24]}-{uuid.uuid4().hex[:10]}"
    record = tx.result(Status.ROLLED_BACK, tx.previous, "reverted").to_json()
    intent = {"intent_id": tx.intent_id, "run_id": tx.run_id, "previous": tx.previous.to_json(),
              "target": {"path": tx.target.path}, "mode": tx.settings.mode.value, "profile": tx.settings.profile,
              "activation_timeout": tx.settings.activation_timeout, "record": record,
              "opened": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    assert tx.lock_token is not None, "an intent is opened only under this run's lock"
    command = hostagent.command("open", "--intent-json", json.dumps(intent, sort_keys=True), "--token",
                               tx.lock_token, "--for", f"{tx.settings.lease_grace:g}", "--reboot-grace",
                               f"{reboot_grace(tx):g}")
    if then is not None:
        command = nixcmd.then_if_ok(command, f"( {then}\n); printf '\\n{nixcmd.THEN_MARK}%d\\n' \"$?\"")
    opened = sh(tx, host, command)
    lines, then_rc = nixcmd.take_then(opened.stdout_lines)
    answer = hostagent.parse(lines[:1])  # the agent's line comes first; `then`'s output after it
    if opened.returncode == hostagent.FENCED:
        raise Fenced(f"nothing was switched: {answer.get('error') or opened.last_error}")
    if not opened.ok:
        raise StepFailed(f"could not journal the intent on the host: {answer.get('error') or opened.last_error}")
    tx.intent_open = True
    heartbeat_of(host).keep(host, tx.lock_token, tx.settings.lease_grace, tx.intent_id)
    if then is None or then_rc is None:
        return None
    rest = lines[1:-1] if lines[1:] and lines[-1] == "" else lines[1:]
    return RemoteResult(then_rc, tuple(rest), opened.stderr_lines)


def mark(tx: HostTransaction, host: Any, phase: str, seconds: float, fresh: bool = False) -> None:
    """Tell the agent the intent is `activated` (from now on only a confirmation over a new login
    renews it) or `confirmed`; a lease already spent means the host decided."""
    command = hostagent.command(phase, "--intent", str(tx.intent_id), "--for", f"{seconds:g}")
    marked = sh_fresh(tx, host, command) if fresh else sh(tx, host, command)
    if marked.returncode == hostagent.LOST:
        raise watchdog_reverted(tx, host, "the lease ran out before the controller renewed it")
    if not marked.ok:
        raise StepFailed(f"could not mark the intent {phase}: {marked.last_error}")


def confirm(tx: HostTransaction, host: Any) -> None:
    """Confirm over a new SSH connection (a generation that breaks new logins must not be confirmed
    through an old session); from then on the heartbeat keeps the intent. Without it the watchdog reverts."""
    try:
        mark(tx, host, "confirm", tx.settings.lease_grace, fresh=True)
    except HostUnreachable as exc:
        raise watchdog_reverted(tx, host, f"no new SSH connection after activation ({exc})", revert_when_back=True)


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


def await_revert(tx: HostTransaction, host: Any, why: str, revert_when_back: bool = False) -> tuple[Generation, str, str]:
    """Wait (over new connections if need be) for whoever claimed this intent's revert (the controller's
    own detached revert, the watchdog, a recovery) to finish; the agent verified the result.
    `revert_when_back`: a host that answers again with the intent still open is reverted by the
    controller there and then (wait_for_outcome). Returns (the generation the host is on, who
    reverted, the outcome)."""
    host.log(f"{why}; waiting for the host's revert", logger.warning)
    if tx.lock_token:  # an intent the heartbeat went on renewing would hold off the very watchdog awaited
        heartbeat_of(host).lock_only(host, tx.lock_token, tx.settings.lease_grace)
    started = time.monotonic()
    found = wait_for_outcome(tx, host, str(tx.intent_id), revert_if_open=revert_when_back)
    tx.intent_open = False
    tx.timings["revert_wait"] = round(time.monotonic() - started, 3)
    who = str(found.get("decided_by") or "?")
    if who == hostagent.COMMITTED:
        raise CommittedAfterAll(f"{why}; but the host committed intent {tx.intent_id} (its answer was lost)")
    state = profile_state(tx, host)
    outcome = str(found.get("outcome") or "?")
    if found.get("problems"):
        outcome += f" ({'; '.join(found['problems'])})"
    return state.current_generation, who, outcome


def watchdog_reverted(tx: HostTransaction, host: Any, why: str, revert_when_back: bool = False) -> WatchdogReverted:
    """The host decided by itself (or, `revert_when_back`, the controller once the host answered again
    with the intent open): wait for its verified revert and say how it ended."""
    final, who, outcome = await_revert(tx, host, why, revert_when_back)
    by = "the controller, once the host answered again," if who == "reverting-controller" else f"the host's {who}"
    if not outcome.startswith("reverted"):
        return WatchdogReverted(f"{why}; {by} tried to restore generation {tx.previous.number} and its "
                                f"revert FAILED ({outcome})", final, Status.REVERT_FAILED)
    alone = "" if who == "reverting-controller" else " by itself"
    return WatchdogReverted(f"{why}; {by} restored generation {final.number}{alone}", final, Status.ROLLED_BACK)
