"""The Nix operations and facts as a user's own pyinfra deploy would use them, on the lab."""

from __future__ import annotations

import time

from ipex_fleet.flakepush import flake_hash

from .conftest import destroy_checked, make_fleet


def test_operations_push_lock_rollback_unlock_and_are_idempotent(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 1, tmp_path_factory)
    try:
        first = fleet.system("host1")
        fleet.configure("host1", f"version=o{time.monotonic_ns()}")
        proc, _ = fleet.deploy("--data", "bench=false")
        assert proc.returncode == 0, proc.stdout
        assert fleet.system("host1")[0] == first[0] + 1

        proc, _ = fleet.deploy("--data", f"ops_generation={first[0]}", deploy="tests/deploys/nix_ops.py")
        assert proc.returncode == 0, proc.stdout
        assert fleet.system("host1") == first
        digest = flake_hash(str(fleet.lab.layout.flake_dir))
        assert fleet.sh("host1", f"test -f /var/lib/ipex-fleet/flake/{digest}/.complete && echo pushed") == "pushed"
        assert fleet.sh("host1", "test -e /var/lib/ipex-fleet/lock && echo locked || echo free") == "free"

        again, _ = fleet.deploy("-v", "--data", f"ops_generation={first[0]}", deploy="tests/deploys/nix_ops.py")
        assert again.returncode == 0
        assert f"flake {digest} is already on the host" in again.stdout
        assert f"generation {first[0]} is already current and running" in again.stdout
    finally:
        destroy_checked(fleet.lab)
