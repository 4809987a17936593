"""Resolve what dead runs left on hosts: an open intent whose lease ran out, a lock whose lease ran out."""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Recover")
def recover() -> None:
    step(flow.RECOVER)
    step(flow.RECORD)
