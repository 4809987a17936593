"""`ipex-fleet update`: move the flake's locked inputs forward, show what that changes, and hand it
to the staged rollout.

The controller updates the lock (it has the network, or, on the lab, the lab's own channel), with
its own Nix. Each changed input is shown (old and new revision or narHash, and date), then the plan
of the deploy across the fleet (ipex_fleet.fleet.plan: which hosts change, which need a reboot), then,
with `--rollout`, the rollout in waves. A failed update puts the old lock back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipex_fleet.common.errors import CommandFailed, UserError
from ipex_fleet.nix.flakepush import declared_inputs
from ipex_fleet.fleet.inventory import InventoryView
from ipex_fleet.runner import run

NIX = ["nix", "--extra-experimental-features", "nix-command flakes"]


@dataclass(frozen=True)
class InputChange:
    name: str
    old: dict[str, Any]
    new: dict[str, Any]

    def line(self) -> str:
        return f"{self.name}: {_describe(self.old)} -> {_describe(self.new)}"


def _describe(locked: dict[str, Any]) -> str:
    if not locked:
        return "(none)"
    ident = locked.get("rev") or locked.get("narHash", "?")
    when = locked.get("lastModified")
    return ident[:20] + (f" ({time.strftime('%Y-%m-%d', time.gmtime(when))})" if when else "")


def flake_of(view: InventoryView, flake: str | None) -> tuple[Path, str | None]:
    """The flake to update (--flake, else the one every host of the inventory deploys) and the
    controller's Nix configuration directory for it (host data controller_nix_conf_dir)."""
    flakes = {str(d.get("flake")) for d in view.data.values() if d.get("flake")}
    confs = {str(d.get("controller_nix_conf_dir")) for d in view.data.values() if d.get("controller_nix_conf_dir")}
    if flake is None:
        if len(flakes) != 1:
            raise UserError(f"{view.path}: its hosts deploy {len(flakes)} flakes ({', '.join(sorted(flakes)) or 'none named'});"
                            " give the one to update with --flake DIR")
        flake = flakes.pop()
    path = Path(flake).absolute()
    if not (path / "flake.nix").is_file():
        raise UserError(f"{path} has no flake.nix; give the flake's directory with --flake DIR")
    return path, (confs.pop() if len(confs) == 1 else None)


def locked_inputs(lock_file: Path) -> dict[str, dict[str, Any]]:
    """The root's direct inputs, by name, as locked."""
    try:
        lock = json.loads(lock_file.read_text())
    except FileNotFoundError:
        return {}
    nodes = lock.get("nodes", {})
    root = nodes.get(lock.get("root", "root"), {})
    out = {}
    for name, ref in root.get("inputs", {}).items():
        node = nodes.get(ref if isinstance(ref, str) else "", {})
        out[name] = node.get("locked", {})
    return out


def update_lock(flake: Path, inputs: list[str], nix_conf_dir: str | None, timeout: float) -> list[InputChange]:
    """Update the lock in place (every input, or the named ones); on failure the old lock is back."""
    lock_file = flake / "flake.lock"
    before = locked_inputs(lock_file)
    # An input flake.nix declares and the lock lacks (the shipped lock leaves nixpkgs to the user) is
    # updated into the lock, not refused.
    known = set(before) | declared_inputs(str(flake))
    unknown = [name for name in inputs if known and name not in known]
    if unknown:
        raise UserError(f"{flake}: no input {', '.join(unknown)}; it has {', '.join(sorted(known))}")
    backup = lock_file.with_suffix(".lock.before-update")
    if lock_file.exists():
        shutil.copy2(lock_file, backup)
    ref = f"path:{flake}"
    argv = [*NIX, "flake", "lock", *[a for name in inputs for a in ("--update-input", name)], ref] if inputs \
        else [*NIX, "flake", "update", ref]
    env = {"NIX_CONF_DIR": nix_conf_dir} if nix_conf_dir else None
    try:
        run(argv, timeout=timeout, env=env)
    except CommandFailed as exc:
        if backup.exists():
            os.replace(backup, lock_file)
        raise UserError(f"updating {lock_file} failed, the old lock is back: {exc}") from None
    backup.unlink(missing_ok=True)
    after = locked_inputs(lock_file)
    return [InputChange(name, before.get(name, {}), after.get(name, {}))
            for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
