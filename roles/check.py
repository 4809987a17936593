"""Soak checks of the rollout: is a promoted host still on its generation, and healthy?"""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Check")
def check() -> None:
    step(flow.CHECK)
    step(flow.RECORD_CHECK)


@deploy("Status")
def status() -> None:
    step(flow.OBSERVE)
    step(flow.RECORD_CHECK)
