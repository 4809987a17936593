"""Decide on hosts that a rollout left on probation (an inconclusive gate with bench_inconclusive=pause).

Run by `ipex-fleet rollout --resume RUN --approve|--abort`, under the rollout's own run id:

    IPEX_FLEET_RUN_ID=RUN pyinfra inventories/prod.py deploys/decide.py -y --limit web1 --data decision=approve

Approve claims the commit of the host's open intent; abort reverts it to the recorded generation,
verified. A host whose pause timed out was already reverted by its own watchdog: the result says so.
"""

from roles.decide import decide
from roles.transaction import validate_once

validate_once()
decide()
