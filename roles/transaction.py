"""The glue from pyinfra operations to the host transaction's steps (ipex_fleet.transaction)."""

from __future__ import annotations

from pyinfra import host, inventory, state
from pyinfra.operations import python

from ipex_fleet import runstate, transaction


def validate_once() -> None:
    """Validate every host's data at the first host's prepare, before any operation runs."""
    run = runstate.of(state)
    if not run.validated:
        transaction.validate_inventory(inventory)
        run.validated = True
    transaction.transaction_for(host)


def step(name: str, function: transaction.Step) -> None:
    python.call(name=name, function=_runner(function, name))


def _runner(function: transaction.Step, name: str):
    def run(state, host) -> bool:  # pyinfra passes (state, host) when the function names them
        return transaction.run_step(state, host, function, name)

    return run
