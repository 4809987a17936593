"""Read a pyinfra inventory file's hosts and groups, by pyinfra's rules, without connecting."""

from __future__ import annotations

import os
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipex_fleet.common.errors import UserError
from ipex_fleet.settings import check_host_name


@dataclass(frozen=True)
class InventoryView:
    path: str
    hosts: tuple[str, ...]  # stable: the order of first appearance in the file
    groups: dict[str, tuple[str, ...]]
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # each host's data, as the file gives it


def _names(value: Any) -> list[str] | None:
    """Host names of a group value: a list of names or (name, data), or a (hosts, data) tuple."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], list) and isinstance(value[1], dict):
        value = value[0]
    if not isinstance(value, list):
        return None
    names = []
    for entry in value:
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, tuple) and entry and isinstance(entry[0], str):
            names.append(entry[0])
        else:
            return None
    return names


def load(path: str) -> InventoryView:
    if not os.path.isfile(path):
        raise UserError(f"inventory {path} does not exist; give a pyinfra inventory file such as inventories/prod.py")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as pyinfra does: deploy and inventory files import from the cwd
    try:
        namespace = runpy.run_path(path)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"inventory {path} failed to load: {type(exc).__name__}: {exc}") from None
    groups: dict[str, tuple[str, ...]] = {}
    order: list[str] = []
    data: dict[str, dict[str, Any]] = {}
    for key, value in namespace.items():
        if key.startswith("_"):
            continue
        names = _names(value)
        if names is None:
            continue
        groups[key] = tuple(names)
        entries = value[0] if isinstance(value, tuple) else value
        for entry in entries:
            if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], dict):
                data.setdefault(entry[0], {}).update(entry[1])
        for name in names:
            check_host_name(name)
            if name not in order:
                order.append(name)
    groups[Path(path).stem] = tuple(order)
    if not order:
        raise UserError(f"inventory {path} lists no hosts")
    return InventoryView(path, tuple(order), groups, data)
