"""Steps 7 and 8: health checks (levels from host data) and the benchmark gate."""

from pyinfra.api import deploy

from ipex_fleet.transaction import flow

from .transaction import step


@deploy("Health")
def health() -> None:
    # A gate a host's data turns off (health_levels=[], bench=false) is no operation at all (Step.wanted):
    # pyinfra prepares and runs every operation on every host, and an empty one still cost each host its turn.
    step(flow.HEALTH)
    step(flow.BENCH)
