"""What one pyinfra run knows, kept on that run's own State object: the run id, each host's
transaction, the flake's content, the toplevels built on the controller. A second run in the same
process starts from nothing."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

import gevent.lock

from ipex_fleet.nix.flakeinputs import LockedInputs, export, resolved
from ipex_fleet.nix.flakepush import flake_hash, flake_tarball, materialize
from ipex_fleet.ledger.results import new_run_id

_ATTRIBUTE = "_ipex_fleet_run"


@dataclass
class RunState:
    run_id: str
    transactions: dict[str, Any] = field(default_factory=dict)  # host name -> HostTransaction
    validated: bool = False
    dry: bool = False  # pyinfra --dry on a deploy: plan at prepare time, add no step
    built: dict[tuple[str, str], str] = field(default_factory=dict)  # (flake, config) -> toplevel
    build_lock: gevent.lock.BoundedSemaphore = field(default_factory=lambda: gevent.lock.BoundedSemaphore(1))
    _hashes: dict[str, str] = field(default_factory=dict)
    _tarballs: dict[str, bytes] = field(default_factory=dict)
    _inputs: dict[str, LockedInputs] = field(default_factory=dict)
    _exports: dict[tuple[str, ...], bytes] = field(default_factory=dict)
    inputs_lock: gevent.lock.BoundedSemaphore = field(default_factory=lambda: gevent.lock.BoundedSemaphore(1))
    heartbeat: Any = None  # ipex_fleet.transaction.heartbeat.Heartbeat, made at the first lock
    paced: dict[str, list] = field(default_factory=dict)  # host -> steps collected for pace=host
    settings: dict[str, Any] = field(default_factory=dict)  # host -> its DeploySettings, as validated at prepare

    def flake_hash(self, path: str) -> str:
        """Read once per run: every host of the run pushes the same content."""
        if path not in self._hashes:
            self._hashes[path] = flake_hash(path)
        return self._hashes[path]

    def flake_tarball(self, path: str) -> bytes:
        if path not in self._tarballs:
            self._tarballs[path] = flake_tarball(path)
        return self._tarballs[path]


    def flake_inputs(self, path: str, nix_conf_dir: str | None) -> LockedInputs:
        """The flake's locked inputs, resolved on the controller once per run (from what is pushed)."""
        with self.inputs_lock:
            if path not in self._inputs:
                self._inputs[path] = resolved(path, nix_conf_dir, lambda: materialize(path))
            return self._inputs[path]

    def inputs_export(self, paths: tuple[str, ...], nix_conf_dir: str | None) -> bytes:
        """One export per set of missing paths: hosts that lack the same inputs share it."""
        with self.inputs_lock:
            if paths not in self._exports:
                self._exports[paths] = export(list(paths), nix_conf_dir)
            return self._exports[paths]


def of(state: Any) -> RunState:
    """The run state of pyinfra's `state` (made at first use)."""
    found = getattr(state, _ATTRIBUTE, None)
    if found is None:
        found = RunState(new_run_id())
        setattr(state, _ATTRIBUTE, found)
    return found


def executes_without_asking(argv: list[str] | None = None) -> bool:
    """Whether this pyinfra run executes its operations, and without asking, as its command line says:
    -y (or PYINFRA_YES), and no --dry, --debug-facts, --debug-operations or --debug-all. Work done
    while the run is prepared (maintenance's look) is done only then; a run started any other way
    leaves it to the operations."""
    args = set(sys.argv[1:] if argv is None else argv)
    yes = bool({"-y", "--yes"} & args) or os.environ.get("PYINFRA_YES", "").lower() in ("1", "true", "yes", "on")
    return yes and not ({"--dry", "--debug-facts", "--debug-operations", "--debug-all"} & args)
