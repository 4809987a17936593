"""What a deploy would change on each host (ipex_fleet.plan): nothing that runs there changes."""

from pyinfra.api import deploy

from ipex_fleet.plan import plan_step

from .transaction import step


@deploy("Plan")
def plan() -> None:
    step("Push and build the flake; compare with the current generation", plan_step)
