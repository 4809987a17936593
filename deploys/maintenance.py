"""Maintenance of every host, each under its deploy lock; it never switches or rolls back.

    pyinfra inventories/prod.py deploys/maintenance.py -y
    ipex-fleet maintain inventories/prod.py            # the same, in waves

Per host: old pushed flakes and records go; generations are kept by policy (keep_generations,
keep_days) plus every anchor (current, running, booted, an open intent's, the last deploy's rollback
target, a boot entry being counted), the rest deleted and garbage collected; the journal vacuumed
and temporary files cleaned; the declared models verified (--data models_verify=true re-hashes them)
and pruned by policy; optionally (--data maintenance_restart=true) the AI services restarted; then
health levels 1-3 and the full benchmark, whose drift is reported with its trend. Each host's report
is its result (`.ipex-fleet/runs/RUN/hosts/HOST.json`, the ledger) and a line in its deploys.jsonl.
"""

from roles.maintenance import maintenance
from roles.transaction import validate_once

validate_once()
maintenance()
