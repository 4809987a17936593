"""Deploy the fleet's NixOS flake, one transaction per host, every host in parallel.

    pyinfra inventories/prod.py deploys/prod.py -y

Each host: preflight and lock, record its generation, push and build the flake, switch,
then the declared models, health checks and the benchmark gate, then record. A failure after the switch rolls that host back to the recorded generation,
and the run exits non-zero. Run it from the repository root.
"""

from roles.health import health
from roles.models import models
from roles.preflight import preflight
from roles.record import record
from roles.system import system
from roles.transaction import host_pace, validate_once

validate_once(plan_when_dry=True)  # --dry: each host's plan (ipex_fleet.fleet.plan), nothing runs
with host_pace():  # host data pace=host: one operation per host, each at its own pace
    preflight()
    system()
    models()
    health()
    record()
