"""Nix and NixOS for pyinfra: command builders, facts and operations."""
