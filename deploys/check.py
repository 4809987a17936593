"""Re-check hosts a rollout promoted (its soak): on the expected generation, and healthy.

Run by `ipex-fleet rollout --soak`, with `--data expect_plan=FILE`. Changes nothing on hosts.
"""

from roles.check import check
from roles.transaction import validate_once

validate_once()
check()
