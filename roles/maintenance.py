"""Maintenance, under the host's lock: retention and GC, old pushed flakes and records, journald and
temporary files, models, restarts, health and drift (ipex_fleet.transaction.maintenance)."""

from pyinfra import host, state
from pyinfra.api import deploy

from ipex_fleet.transaction import flow
from ipex_fleet.transaction.runstate import executes_without_asking

from .transaction import step


@deploy("Maintenance")
def maintenance() -> None:
    if executes_without_asking() and flow.settled_at_prepare(state, host):
        return  # nothing to do: looked at and recorded while pyinfra prepared the run, no operation
    for declared in flow.MAINTENANCE:
        step(declared)
