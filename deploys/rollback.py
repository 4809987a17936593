"""Take hosts back to their previous deployed generation, or to `--data generation=N`.

    pyinfra inventories/prod.py deploys/rollback.py -y --limit web1
    pyinfra inventories/prod.py deploys/rollback.py -y --limit web1 --data generation=41

The host is locked while it moves, checked on its new generation afterwards, and the result
is recorded like a deploy's.
"""

from roles.preflight import preflight
from roles.record import record
from roles.rollback import rollback
from roles.transaction import validate_once

validate_once(phase="rollback")
preflight()
rollback()
record()
