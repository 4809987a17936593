"""The lab: a fleet of NixOS-like hosts on one machine, with real sshd and real Nix (LAB.md).

Names load lazily: each host's supervisor (`python -m ipex_fleet.lab.supervise`) imports this
package, and must not pay for the controller's imports (pyinfra) once per host.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Lab": "fleet", "DEFAULT_NET": "layout", "DEFAULT_ROOT": "layout", "LabLayout": "layout"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
