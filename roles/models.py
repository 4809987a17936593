"""Step 6: the host's declared models (host data models_manifest or models)."""

from pyinfra.api import deploy

from ipex_fleet import modelsteps

from .transaction import step


@deploy("Models")
def models() -> None:
    step("Install the declared models", modelsteps.install_models)
