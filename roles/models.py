"""Step 6: the host's declared models (host data models_manifest or models)."""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Models")
def models() -> None:
    step(flow.MODELS)  # none declared: no operation (Step.wanted)
