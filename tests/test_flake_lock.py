"""flake/flake.lock: intel-xpu pinned to the node computed offline (issue 24), nixpkgs left to the
user. A deploy refuses the lock until nixpkgs is locked, in one line saying what to run;
`ipex-fleet update --input nixpkgs` locks it (nothing here reaches the network: Nix is stubbed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ipex_fleet.fleet import update
from ipex_fleet.common.errors import UserError
from ipex_fleet.nix.flakepush import FlakeError, check_locked, declared_inputs
from ipex_fleet.runner import Completed
from ipex_fleet.settings import from_host_data

from .conftest import REPO

FLAKE = REPO / "flake"
NIXPKGS_NODE = {"locked": {"lastModified": 1785000000, "narHash": "sha256-" + "A" * 43 + "=", "owner": "NixOS",
                           "repo": "nixpkgs", "rev": "0" * 40, "type": "github"},
                "original": {"owner": "NixOS", "ref": "nixos-unstable", "repo": "nixpkgs", "type": "github"}}


def test_the_lock_pins_intel_xpu_and_not_nixpkgs():
    lock = json.loads((FLAKE / "flake.lock").read_text())
    assert lock["version"] == 7 and lock["nodes"]["root"]["inputs"] == {"intel-xpu": "intel-xpu"}
    node = lock["nodes"]["intel-xpu"]
    assert node["locked"] == {"lastModified": 1782944860, "narHash": "sha256-1oyVujseYT9acvjLe51RAB4YiXLhPlqezvuBeD8WTos=",
                              "owner": "MordragT", "repo": "nixos", "rev": "6442b7e097c488af990b54cf5485dea1b4b778b4",
                              "type": "github"}
    assert node["inputs"] == {"nixpkgs": ["nixpkgs"]}  # follows the user's nixpkgs
    assert declared_inputs(str(FLAKE)) == {"nixpkgs", "intel-xpu"}


def test_a_deploy_of_the_shipped_lock_is_refused_saying_what_to_run():
    with pytest.raises(UserError) as err:
        from_host_data("arc-a770-01", {"flake": str(FLAKE)})
    message = str(err.value)
    assert "\n" not in message
    assert f"flake.lock locks no nixpkgs: run `nix flake lock {FLAKE}` on a machine with network" in message
    assert f"and commit {FLAKE}/flake.lock" in message


def test_once_nixpkgs_is_locked_the_lock_passes(tmp_path):
    flake = tmp_path / "flake"
    shutil.copytree(FLAKE, flake)
    lock = json.loads((flake / "flake.lock").read_text())
    lock["nodes"]["nixpkgs"] = NIXPKGS_NODE
    lock["nodes"]["root"]["inputs"]["nixpkgs"] = "nixpkgs"
    (flake / "flake.lock").write_text(json.dumps(lock))
    check_locked(str(flake))


def test_a_follows_to_a_missing_input_is_refused_even_when_flake_nix_cannot_be_read(tmp_path):
    (tmp_path / "flake.nix").write_text("")  # unreadable to Nix: only the lock's own checks apply
    shutil.copy(FLAKE / "flake.lock", tmp_path / "flake.lock")
    with pytest.raises(FlakeError, match="locks no nixpkgs: run `nix flake lock "):
        check_locked(str(tmp_path))


def test_update_locks_the_missing_nixpkgs_and_refuses_an_unknown_input(tmp_path, monkeypatch):
    flake = tmp_path / "flake"
    shutil.copytree(FLAKE, flake)
    calls = []

    def fake_nix(argv, *, timeout, env=None, **kw):  # what `nix flake lock --update-input nixpkgs` writes
        calls.append(argv)
        lock = json.loads((flake / "flake.lock").read_text())
        lock["nodes"]["nixpkgs"] = NIXPKGS_NODE
        lock["nodes"]["root"]["inputs"]["nixpkgs"] = "nixpkgs"
        (flake / "flake.lock").write_text(json.dumps(lock))
        return Completed(0, "", "")

    monkeypatch.setattr(update, "run", fake_nix)
    with pytest.raises(UserError, match="no input nixpgks; it has intel-xpu, nixpkgs"):
        update.update_lock(flake, ["nixpgks"], None, 60)
    changes = update.update_lock(flake, ["nixpkgs"], None, 60)
    assert calls == [[*update.NIX, "flake", "lock", "--update-input", "nixpkgs", f"path:{flake}"]]
    assert [c.name for c in changes] == ["nixpkgs"] and changes[0].line().startswith("nixpkgs: (none) -> 0000000000")
    check_locked(str(flake))
