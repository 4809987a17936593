"""Maintenance, under the host's lock: retention and GC, old pushed flakes and records, journald and
temporary files, models, restarts, health and drift (ipex_fleet.transaction.maintenance)."""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Maintenance")
def maintenance() -> None:
    for declared in flow.MAINTENANCE:
        step(declared)
