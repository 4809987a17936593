"""Step 1 of the transaction: is the host fit to deploy, and is it ours (the lock)?"""

from pyinfra.api import deploy

from ipex_fleet import transaction

from .transaction import step


@deploy("Preflight")
def preflight() -> None:
    step("Check NixOS, Nix and free disk; take the deploy lock", transaction.preflight)
