"""Step 1 of the transaction: is the host fit to deploy, and is it ours (the lock)?"""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Preflight")
def preflight() -> None:
    step(flow.PREFLIGHT)
