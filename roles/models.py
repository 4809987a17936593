"""Step 6: the host's declared models (host data models_manifest or models)."""

from pyinfra import host
from pyinfra.api import deploy

from ipex_fleet import modelsteps

from .transaction import step


@deploy("Models")
def models() -> None:
    if modelsteps.plan_for(host) is not None:  # none declared: no operation (see roles/health.py)
        step("Install the declared models", modelsteps.install_models)
