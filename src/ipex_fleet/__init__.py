"""ipex-fleet: roll a NixOS flake out to a fleet of GPU hosts with pyinfra.

The public surface is small; the details live in the submodules. Names are loaded lazily so
that the host-side tools (probe, bench) import without pyinfra.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "Action": "domain", "Generation": "domain", "HostResult": "domain", "ProfileState": "domain",
    "Status": "domain", "UserError": "common.errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
