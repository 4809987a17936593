"""An example production fleet. Copy it and put your own hosts in.

Groups give the rollout's waves, in order: `canary`, then `wave1`, then `wave2`
(`ipex-fleet rollout inventories/prod.py deploys/prod.py`). Group data comes from
inventories/group_data/<group>.py; host data set here wins over it.

Host data that ipex-fleet reads (defaults in group_data/all.py):
- ssh_hostname, ssh_user, ssh_key, ssh_known_hosts_file: pyinfra's SSH settings. Keep
  ssh_strict_host_key_checking at "yes" and list every host key in known_hosts.
- ssh_config_file: an ssh_config with ServerAliveInterval, so cut connections are noticed.
- flake: the flake directory pushed to the host (default: flake/, this repository's).
- nixos_config: the host's nixosConfigurations name (default: the host name).
- mode: switch | test | boot | dry-activate.
- accelerator: xpu | cuda | cpu | any, what the health checks expect to find.
"""

canary = [
    ("arc-a770-01", {"ssh_hostname": "10.40.0.11", "accelerator": "xpu", "nixos_config": "arc-a770-01"}),
]

wave1 = [
    ("arc-a770-02", {"ssh_hostname": "10.40.0.12", "accelerator": "xpu", "nixos_config": "arc-a770-02"}),
    ("arc-b580-01", {"ssh_hostname": "10.40.0.21", "accelerator": "xpu", "nixos_config": "arc-b580-01"}),
]

wave2 = [
    ("max-1550-01", {"ssh_hostname": "10.40.1.11", "accelerator": "xpu", "nixos_config": "max-1550-01"}),
    ("h100-01", {"ssh_hostname": "10.40.2.11", "accelerator": "cuda", "nixos_config": "h100-01"}),
    ("cpu-01", {"ssh_hostname": "10.40.3.11", "accelerator": "cpu", "nixos_config": "cpu-01"}),
]

from ipex_fleet.fleet.selection import refuse_empty_selection  # noqa: E402

refuse_empty_selection(globals())  # a --limit matching no host stops here, before any connection
