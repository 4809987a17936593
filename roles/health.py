"""Steps 7 and 8: health checks (levels from host data) and the benchmark gate."""

from pyinfra.api import deploy

from ipex_fleet import gatesteps

from .transaction import step


@deploy("Health")
def health() -> None:
    step("Health checks on the new generation", gatesteps.health)
    step("Quick benchmark against the baseline", gatesteps.bench_gate)
