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
# Host-key checking stays on.
ssh_strict_host_key_checking = "yes"
