"""`ipex-fleet enroll`: from a bare NixOS box to a host folder in the flake and an inventory entry."""
