"""A person's decision on hosts a run left on probation: approve (commit) or abort (revert)."""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Decide")
def decide() -> None:
    step(flow.DECIDE)
