"""Step 9: record the host's result on both sides and release the lock."""

from pyinfra.api import deploy

from ipex_fleet import transaction

from .transaction import step


@deploy("Record")
def record() -> None:
    step("Record the result and release the lock", transaction.record)
