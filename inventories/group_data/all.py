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
# While the controller runs a host's transaction, its heartbeat renews the host's lock and open
# intent every quarter of this lease (on the host's own clock). A host whose controller died is back
# on its recorded generation within it (plus the revert); its lock frees itself within it too.
lease_grace = 30
# lockstep: each step one pyinfra operation, every host waits for the slowest at each step (pyinfra's
# --fail-percent and prompt stop the fleet between steps); host: each host at its own pace.
pace = "lockstep"
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
# A benchmark that is neither within tolerance nor slower with confidence: fail the deploy (canaries)
# or warn and let it pass (later waves may choose warn).
bench_inconclusive = "fail"
# How hosts run ipex-fleet (the flake's fleet module puts it on PATH).
ipex_fleet_command = "ipex-fleet"
# Maintenance (deploys/maintenance.py, ipex-fleet maintain). Generations: the last N and every one
# younger than D days stay, plus every anchor (current, running, booted, an open intent's, the last
# deploy's rollback target, a counted boot entry). Pushed flakes and records older than D days go.
keep_generations = 5
keep_days = 14
keep_records = 500            # lines of /var/lib/ipex-fleet/deploys.jsonl
gc = True
# gc_max_freed_mb = 20480     # nix-store --gc --max-freed
# gc_min_free_mb = 51200      # collect only while the store has less free than this
store_optimise = False
journal_max_mb = 1024
# journal_max_days = 30
maintenance_lock_wait = 0     # seconds to wait for a deploy that holds the lock, then skip the host
restart_units = ["ollama.service", "comfyui.service"]    # what `maintain --restart` restarts
# Set by `ipex-fleet maintain --restart | --quick-bench | --rebaseline` (or pyinfra --data):
# maintenance_restart = False
# maintenance_bench_quick = False
# rebaseline = False
