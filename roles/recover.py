"""Resolve what dead runs left on hosts: an open intent whose lease ran out, a lock whose lease ran out."""

from pyinfra.api import deploy

from ipex_fleet import transaction

from .transaction import step


@deploy("Recover")
def recover() -> None:
    step("Revert a dead run's open intent; take over a lock whose lease ran out", transaction.recover)
    step("Record the result and release the lock", transaction.record)
