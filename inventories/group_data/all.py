"""Defaults for every host. Override per group (group_data/<group>.py) or per host.

Every remote step is bounded by one of these timeouts, in seconds.
"""

# The flake pushed to hosts, relative to the repository root (deploys run from there).
flake = "flake"
# switch | test | boot | dry-activate (switch-to-configuration's modes).
mode = "switch"
# The system profile; NixOS's own unless a host says otherwise.
nix_profile = "/nix/var/nix/profiles/system"
# Refuse to deploy with less free space than this on /nix (MiB).
min_free_mb = 1024
# Pushed flakes kept under /var/lib/ipex-fleet/flake/.
keep_flakes = 5
# Per-command timeout for short steps, and the bounds of the long ones.
command_timeout = 60
build_timeout = 3600
activation_timeout = 600
models_timeout = 3600
# From the switch to the commit the host's watchdog holds a lease: each step's own timeout plus
# this margin. A host whose controller died is back on its recorded generation within it.
lease_grace = 30
# Mode boot: reboot into the new generation now and run the gates on it (within reboot_timeout).
reboot = False
reboot_timeout = 600
# Host-key checking stays on.
ssh_strict_host_key_checking = "yes"
# The health policy (levels, accelerator, device count, benchmark tolerance) is the host's fleet
# config, which the flake writes (services.ipex-fleet.health). Set these only to override it:
# health_levels = [1, 2]      # 1 software, 2 functional, 3 performance; [] for none
# accelerator = "xpu"         # xpu | cuda | cpu | any
# min_devices = 1
# bench_tolerance = 0.15      # a result slower than the baseline by more than this fails
# The quick benchmark gate.
bench = True
health_timeout = 300
bench_timeout = 300
# How hosts run ipex-fleet (the flake's fleet module puts it on PATH).
ipex_fleet_command = "ipex-fleet"
