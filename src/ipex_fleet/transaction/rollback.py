"""deploys/rollback.py and deploys/recover.py: take a host back to an earlier generation (the one
before its last deploy, `--data generation=N`, or a rollout's plan), and resolve what a dead run left.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra import logger

from ipex_fleet.transaction import hostagent
from ipex_fleet.domain import Generation, HostResult, Status
from ipex_fleet.common.errors import UserError
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.transaction.agentcalls import recover_open_intent, take_lock
from ipex_fleet.transaction.core import HostTransaction, StepFailed, profile_state, running_system, sh

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
    state = profile_state(tx, host)
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
        goal = before_last_deploy(tx, host, state)
    tx.target = goal
    running = running_system(tx, host)
    if goal.number == state.current and running == goal.path:
        tx.unchanged = True
        host.log(f"already on generation {goal.number}")
        return
    tx.target = rollback_to(tx, host, goal)
    host.log(f"now on generation {tx.target.number}")


def before_last_deploy(tx: HostTransaction, host: Any, state: Any) -> Generation:
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


def rollback_to(tx: HostTransaction, host: Any, gen: Generation) -> Generation:
    """Return the host to `gen` (its number and path) by the host agent's restore, the code every revert
    runs, under this run's lock; the agent verifies the running system, the profile and the boot entry."""
    assert gen.path is not None and gen.number is not None and tx.lock_token is not None
    got = sh(tx, host, hostagent.command("restore", "--token", tx.lock_token, "--previous-json",
                                         json.dumps(gen.to_json(), sort_keys=True), "--mode", tx.settings.mode.value,
                                         "--profile", tx.settings.profile), tx.step_timeout)
    answer = hostagent.parse(got.stdout_lines)
    final = answer.get("final")
    if not isinstance(final, dict):
        raise StepFailed(f"the host agent could not restore generation {gen.number}: "
                         f"{answer.get('error') or got.last_error}")
    problems = list(answer.get("problems") or [])
    activation = [p for p in problems if p.startswith("switch-to-configuration")]
    if len(activation) < len(problems):
        raise StepFailed(f"generation {gen.number} did not verify: {'; '.join(problems)}")
    for problem in activation:  # on the generation, verified; its units are the health checks' to judge
        host.log(f"the old generation's activation: {problem}", logger.warning)
    return Generation.from_json(final)


def recover(tx: HostTransaction, host: Any) -> None:
    """deploys/recover.py: resolve a dead run's open intent and stale lock; change nothing else."""
    tx.phase, tx.record_on_host = "recover", False
    recovered = recover_open_intent(tx, host)
    take_lock(tx, host)
    state = profile_state(tx, host)
    tx.previous = tx.target = state.current_generation
    tx.unchanged = True
    host.log(f"recovered run {recovered}: back on generation {tx.previous.number}" if recovered
             else f"nothing to recover: on generation {tx.previous.number}, no open intent")

