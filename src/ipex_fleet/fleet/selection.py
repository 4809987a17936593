"""Refuse a run whose --limit (or whose inventory) selects no host, before anything connects.

pyinfra runs a deploy file once per selected host, so with none selected no deploy code ever
runs, and `pyinfra INVENTORY DEPLOY --limit nosuchhost` warns and exits 0 having done nothing.
The inventory file is the last code of ours that pyinfra runs before it applies the limit; it
calls `refuse_empty_selection(globals())`, which matches the limit as pyinfra will (a group
name, else an fnmatch pattern over host names) and stops the run with one line.
"""

from __future__ import annotations

import os
import sys
from fnmatch import fnmatch
from typing import Any, Iterable, Mapping

import click


def _groups(namespace: Mapping[str, Any]) -> dict[str, list[str]]:
    """The inventory module's groups, read as pyinfra reads them: every public list or tuple."""
    groups: dict[str, list[str]] = {}
    for name, value in namespace.items():
        if name.startswith("_") or not isinstance(value, (list, tuple)):
            continue
        hosts = [entry[0] if isinstance(entry, tuple) else entry for entry in value]
        if all(isinstance(h, str) for h in hosts):
            groups[name] = hosts
    return groups


def unmatched(patterns: Iterable[str], groups: dict[str, list[str]], file_group: str) -> list[str]:
    """The patterns that select no host (an empty group counts as no host)."""
    every = sorted({h for hosts in groups.values() for h in hosts})
    named = {**groups, file_group: every}
    missing = []
    for pattern in patterns:
        hosts = named[pattern] if pattern in named else [h for h in every if fnmatch(h, pattern)]
        if not hosts:
            missing.append(pattern)
    return missing


def refuse_empty_selection(namespace: Mapping[str, Any]) -> None:
    """Exit 2 with one line when the inventory has no host, or a --limit pattern matches none."""
    context = click.get_current_context(silent=True)
    if context is None:  # loaded by something other than pyinfra's CLI (a test, the API)
        return
    groups = _groups(namespace)
    inventory = str(context.params.get("inventory") or namespace.get("__file__") or "the inventory")
    file_group = os.path.splitext(os.path.basename(inventory))[0]
    if not any(groups.values()):
        _stop(f"{inventory} lists no host; add hosts to it (or start the lab: ipex-fleet lab up N)")
    limits = [str(p) for p in context.params.get("limit") or ()]
    missing = unmatched(limits, groups, file_group)
    if missing:
        known = ", ".join(sorted({file_group, *(g for g, h in groups.items() if h)}))
        _stop(f"--limit {', '.join(missing)} matches no host in {inventory}; "
              f"give a host name, a pattern or one of the groups with hosts: {known}")


def _stop(line: str) -> None:
    print(f"ipex-fleet: {line}", file=sys.stderr)
    raise SystemExit(2)
