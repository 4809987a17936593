"""Steps 2 to 5: record the current generation, push and build the flake, switch."""

from pyinfra.api import deploy

from ipex_fleet import transaction

from .transaction import step


@deploy("NixOS system")
def system() -> None:
    step("Record the current generation", transaction.record_previous)
    step("Push the flake (by content hash)", transaction.push_flake)
    step("Build the toplevel on the target", transaction.build)
    step("Set the profile and activate", transaction.switch)
