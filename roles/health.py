"""Steps 7 and 8: health checks (levels from host data) and the benchmark gate."""

from pyinfra import host
from pyinfra.api import deploy

from ipex_fleet import gatesteps, transaction

from .transaction import step


@deploy("Health")
def health() -> None:
    # A gate a host's data turns off (health_levels=[], bench=false) is no operation at all: pyinfra
    # prepares and runs every operation on every host, and an empty one still cost each host its turn.
    settings = transaction.transaction_for(host).settings
    if settings.health_levels != ():
        step("Health checks on the new generation", gatesteps.health)
    if settings.bench:
        step("Quick benchmark against the baseline", gatesteps.bench_gate)
