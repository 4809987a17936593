"""The local lab fleet, as `ipex-fleet lab up N` left it ($IPEX_FLEET_LAB_ROOT or /srv/ipex-fleet-lab).

    ipex-fleet lab up 5
    pyinfra inventories/lab.py deploys/prod.py -y

Groups: `lab` (every host, from this file's name), and `canary`, `wave1`, `wave2` for rollouts.
"""

from ipex_fleet.lab.inventory import lab_hosts, split_waves
from ipex_fleet.fleet.selection import refuse_empty_selection

_hosts = lab_hosts()
canary, wave1, wave2 = split_waves(_hosts)

refuse_empty_selection(globals())  # a --limit matching no host stops here, before any connection
