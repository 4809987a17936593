"""Step 9: record the host's result on both sides and release the lock."""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Record")
def record() -> None:
    step(flow.RECORD)
