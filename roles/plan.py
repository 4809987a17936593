"""What a deploy would change on each host (ipex_fleet.fleet.plan): nothing that runs there changes."""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Plan")
def plan() -> None:
    step(flow.PLAN)
