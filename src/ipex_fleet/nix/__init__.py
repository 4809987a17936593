"""Nix and NixOS for pyinfra: command builders, upkeep, the flake's push and its inputs, the binary cache."""
