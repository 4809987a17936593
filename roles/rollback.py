"""Return hosts to an earlier generation: the one before their last deploy, or --data generation=N."""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Rollback")
def rollback() -> None:
    step(flow.ROLLBACK)
