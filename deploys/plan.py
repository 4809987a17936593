"""What a deploy of the flake would change, per host, changing nothing that runs there.

    pyinfra inventories/prod.py deploys/plan.py -y         # or: ipex-fleet plan inventories/prod.py

Each host: the flake pushed and the toplevel built (the store grows, as with nixos-rebuild
dry-build), then compared with the current generation: unchanged or not, the closure difference,
whether a reboot is needed, the units dry-activate would restart, and the model files to fetch.
No lock, profile, boot entry or running system changes. `pyinfra ... deploys/prod.py --dry` prints
the same per host.
"""

from roles.plan import plan
from roles.transaction import validate_once

validate_once()
plan()
