"""Return hosts to an earlier generation: the one before their last deploy, or --data generation=N."""

from pyinfra.api import deploy

from ipex_fleet import transaction

from .transaction import step


@deploy("Rollback")
def rollback() -> None:
    step("Return to the requested generation and check it", transaction.rollback_requested)
