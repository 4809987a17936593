"""A person's decision on hosts a run left on probation: approve (commit) or abort (revert)."""

from pyinfra.api import deploy

from ipex_fleet import transaction

from .transaction import step


@deploy("Decide")
def decide() -> None:
    step("Approve or abort the host's probation", transaction.decide_probation)
