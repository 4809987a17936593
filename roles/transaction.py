"""The glue from pyinfra operations to the host transaction's steps (ipex_fleet.transaction)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import click
from pyinfra import host, inventory, state
from pyinfra.operations import python

from ipex_fleet.transaction import flow, opsorder, runstate
from ipex_fleet.transaction.core import transaction_for

opsorder.install()  # pyinfra's operation order without inspect.stack() (ipex_fleet.transaction.opsorder says why)


def validate_once(plan_when_dry: bool = False, phase: str = "deploy") -> None:
    """Validate every host's data at the first host's prepare, before any operation runs.

    Under `pyinfra --dry` nothing executes, so the plan (ipex_fleet.fleet.plan) is made here, at prepare
    time, and the deploy's steps are not added: the output says per host what would change.
    """
    run = runstate.of(state)
    if not run.validated:
        flow.validate_inventory(inventory)
        run.dry = plan_when_dry and _pyinfra_dry()
        state.add_callback_handler(flow.StoppedRunGuard())
        run.validated = True
    # The phase is known before any step runs: a rollback's preflight must not take a deploy's
    # no-change fast path (the host is "unchanged" only as far as deploying goes).
    transaction_for(host).phase = phase
    if run.dry:
        flow.run_step(state, host, flow.PLAN)


def _pyinfra_dry() -> bool:
    """Whether pyinfra runs with --dry. Deploy files load in greenlets, where click's context (a
    thread-local) is not visible, so the command line is read as pyinfra's CLI parsed it."""
    context = click.get_current_context(silent=True)
    if context is not None:
        return bool(context.params.get("dry"))
    return os.path.basename(sys.argv[0]) == "pyinfra" and "--dry" in sys.argv[1:]


def step(declared: flow.Step) -> None:
    """One step of the transaction as a pyinfra operation (none where the host does not want it)."""
    run = runstate.of(state)
    if run.dry or not declared.wanted(transaction_for(host), host):
        return  # a dry run was planned at prepare time instead (validate_once)
    pending = run.paced.get(host.name)
    if pending is not None:  # pace=host: collected, then run as one operation (host_pace)
        pending.append(declared)
        return
    python.call(name=declared.title, function=_runner(declared))


@contextmanager
def host_pace(name: str = "Deploy (each host at its own pace)"):
    """With host data pace=host, the steps added inside run as one pyinfra operation per host: each host
    moves through them at its own pace instead of waiting at every step for the slowest host."""
    run = runstate.of(state)
    if run.dry or host.data.get("pace") != "host":
        yield
        return
    run.paced[host.name] = []
    try:
        yield
    finally:
        steps = run.paced.pop(host.name)
    if steps:
        python.call(name=name, function=_all(steps))


def _all(steps: list[flow.Step]):
    def run(state, host) -> bool:
        return all(flow.run_step(state, host, declared) for declared in steps)

    run.__name__ = run.__qualname__ = "transaction_steps[" + ",".join(d.name for d in steps) + "]"
    return run


def _runner(declared: flow.Step):
    def run(state, host) -> bool:  # pyinfra passes (state, host) when the function names them
        return flow.run_step(state, host, declared)

    # --debug-operations prints the function: name it after the step, not a closure of this module.
    run.__name__ = run.__qualname__ = f"transaction_step[{declared.run.__module__}.{declared.name}]"
    return run
