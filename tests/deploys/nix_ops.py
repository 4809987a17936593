"""Exercise the pyinfra Nix operations and facts directly (tests/test_nix_operations.py)."""

from pyinfra import host

from ipex_fleet.nix import operations as nix
from ipex_fleet.nix.facts import NixHost, NixProfileGenerations

assert host.get_fact(NixHost)["os_id"] == "nixos"
assert host.get_fact(NixProfileGenerations).current is not None

nix.push_flake(name="Push the flake", src=host.data.flake)
nix.lock(name="Lock", run_id="ops-test")
nix.rollback(name="Rollback", generation=int(host.data.ops_generation))
nix.unlock(name="Unlock", run_id="ops-test")
