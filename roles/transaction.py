"""The glue from pyinfra operations to the host transaction's steps (ipex_fleet.transaction)."""

from __future__ import annotations

from pyinfra import host, inventory
from pyinfra.operations import python

from ipex_fleet import transaction

_validated: set[int] = set()


def validate_once() -> None:
    """Validate every host's data at the first host's prepare, before any operation runs."""
    if id(inventory) not in _validated:
        transaction.validate_inventory(inventory)
        _validated.add(id(inventory))
    transaction.transaction_for(host)


def step(name: str, function: transaction.Step) -> None:
    python.call(name=name, function=_runner(function, name))


def _runner(function: transaction.Step, name: str):
    def run(state, host) -> bool:  # pyinfra passes (state, host) when the function names them
        return transaction.run_step(state, host, function, name)

    return run
