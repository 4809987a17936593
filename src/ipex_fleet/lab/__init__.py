"""The lab: a fleet of NixOS-like hosts on one machine, with real sshd and real Nix (LAB.md)."""

from .fleet import Lab
from .layout import DEFAULT_NET, DEFAULT_ROOT, LabLayout

__all__ = ["DEFAULT_NET", "DEFAULT_ROOT", "Lab", "LabLayout"]
