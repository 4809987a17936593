"""Soak checks of the rollout: is a promoted host still on its generation, and healthy?"""

from pyinfra.api import deploy

from ipex_fleet import gatesteps, transaction

from .transaction import step


@deploy("Check")
def check() -> None:
    step("Still on the rolled-out generation, and healthy", gatesteps.verify_promoted)
    step("Record the result", transaction.record)


@deploy("Status")
def status() -> None:
    step("Read the current generation", gatesteps.observe)
    step("Record the result", transaction.record)
