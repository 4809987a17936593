"""Steps 2 to 5: record the current generation, push and build the flake, switch."""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("NixOS system")
def system() -> None:
    for declared in (flow.RECORD_PREVIOUS, flow.PUSH, flow.BUILD, flow.SWITCH):
        step(declared)
