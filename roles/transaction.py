"""The glue from pyinfra operations to the host transaction's steps (ipex_fleet.transaction)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import click
from pyinfra import host, inventory, state
from pyinfra.operations import python

from ipex_fleet import opsorder, runstate, transaction

opsorder.install()  # pyinfra's operation order without inspect.stack() (ipex_fleet.opsorder says why)


def validate_once(plan_when_dry: bool = False, phase: str = "deploy") -> None:
    """Validate every host's data at the first host's prepare, before any operation runs.

    Under `pyinfra --dry` nothing executes, so the plan (ipex_fleet.plan) is made here, at prepare
    time, and the deploy's steps are not added: the output says per host what would change.
    """
    run = runstate.of(state)
    if not run.validated:
        transaction.validate_inventory(inventory)
        run.dry = plan_when_dry and _pyinfra_dry()
        state.add_callback_handler(transaction.StoppedRunGuard())
        run.validated = True
    # The phase is known before any step runs: a rollback's preflight must not take a deploy's
    # no-change fast path (the host is "unchanged" only as far as deploying goes).
    transaction.transaction_for(host).phase = phase
    if run.dry:
        from ipex_fleet.plan import plan_step

        transaction.run_step(state, host, plan_step, "plan")


def _pyinfra_dry() -> bool:
    """Whether pyinfra runs with --dry. Deploy files load in greenlets, where click's context (a
    thread-local) is not visible, so the command line is read as pyinfra's CLI parsed it."""
    context = click.get_current_context(silent=True)
    if context is not None:
        return bool(context.params.get("dry"))
    return os.path.basename(sys.argv[0]) == "pyinfra" and "--dry" in sys.argv[1:]


def step(name: str, function: transaction.Step) -> None:
    run = runstate.of(state)
    if run.dry:
        return  # planned at prepare time instead (validate_once)
    pending = run.paced.get(host.name)
    if pending is not None:  # pace=host: collected, then run as one operation (host_pace)
        pending.append((name, function))
        return
    python.call(name=name, function=_runner(function, name))


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


def _all(steps: list[tuple[str, transaction.Step]]):
    def run(state, host) -> bool:
        return all(transaction.run_step(state, host, function, name) for name, function in steps)

    run.__name__ = run.__qualname__ = "transaction_steps[" + ",".join(f.__name__ for _, f in steps) + "]"
    return run


def _runner(function: transaction.Step, name: str):
    def run(state, host) -> bool:  # pyinfra passes (state, host) when the function names them
        return transaction.run_step(state, host, function, name)

    # --debug-operations prints the function: name it after the step, not a closure of this module.
    run.__name__ = run.__qualname__ = f"transaction_step[{function.__module__}.{function.__name__}]"
    return run
