"""The glue from pyinfra operations to the host transaction's steps (ipex_fleet.transaction)."""

from __future__ import annotations

import os
import sys

import click
from pyinfra import host, inventory, state
from pyinfra.operations import python

from ipex_fleet import runstate, transaction


def validate_once(plan_when_dry: bool = False) -> None:
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
    transaction.transaction_for(host)
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
    if runstate.of(state).dry:
        return  # planned at prepare time instead (validate_once)
    python.call(name=name, function=_runner(function, name))


def _runner(function: transaction.Step, name: str):
    def run(state, host) -> bool:  # pyinfra passes (state, host) when the function names them
        return transaction.run_step(state, host, function, name)

    # --debug-operations prints the function: name it after the step, not a closure of this module.
    run.__name__ = run.__qualname__ = f"transaction_step[{function.__module__}.{function.__name__}]"
    return run
