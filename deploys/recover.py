"""Finish what dead runs left behind, on every host, without deploying anything.

    pyinfra inventories/prod.py deploys/recover.py -y        # or: ipex-fleet recover inventories/prod.py

A host with an open intent whose lease ran out (its controller died, and its watchdog did not act:
a reboot ends it) goes back to the intent's recorded generation, checked there, and the revert is
recorded on the host. A lock whose holder's lease ran out is released. A live run is left alone.
"""

from roles.recover import recover
from roles.transaction import validate_once

validate_once()
recover()
