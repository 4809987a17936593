"""A new lab host's first generation, installed as nixos-install does it: before its first boot.

nixos-install builds the system from the installer's environment into the new machine's store,
sets its system profile, and has the new system's own `switch-to-configuration boot` install the
boot loader; the machine then boots straight into its first generation. Here the installer's
environment is the controller: one `nix build` evaluates the lab flake once for every new host
(each host building its own, over SSH, after a first boot and before a second, was most of
`lab up`'s time), then each host's closure and the flake's locked inputs are copied into the
store in its overlay (`nix copy --to UPPER`, a store rooted there), the profile is linked, and the
first boot's stage 2 (guest/lab-boot.py) installs the boot entry and activates it.

The toplevels are the ones the hosts would have built themselves: the same flake, the same
locked inputs and the same controller.json, so a deploy of the unchanged flake finds them
`unchanged`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ipex_fleet.nix import flakeinputs
from ipex_fleet.domain import SYSTEM_PROFILE
from ipex_fleet.common.errors import CommandFailed, UserError
from ipex_fleet.nix.flakepush import materialize
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.runner import run
from ipex_fleet.lab.layout import LabHost, LabLayout

NIX = ["nix", "--extra-experimental-features", "nix-command flakes"]


def _env(layout: LabLayout) -> dict[str, str]:
    return {"NIX_CONF_DIR": str(layout.nix_conf_dir)}


def build(layout: LabLayout, hosts: list[LabHost]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Every host's toplevel, built in the controller's store by one evaluation of the lab flake,
    and the store paths of the flake's locked inputs (each host gets them, as a deploy carries them)."""
    if not hosts:
        return {}, ()
    flake = materialize(str(layout.flake_dir))
    names = " ".join(json.dumps(h.name) for h in hosts)
    # Which toplevel is whose (nix build --json does not keep the installables' order), then build them.
    mapping = ("cs: builtins.listToAttrs (map (n: { name = n; value = cs.${n}.config.system.build.toplevel.outPath; })"
               f" [ {names} ])")
    try:
        toplevels = json.loads(run([*NIX, "eval", "--json", "--no-write-lock-file", f"path:{flake}#nixosConfigurations",
                                    "--apply", mapping], timeout=600, env=_env(layout)).stdout)
        out = run([*NIX, "build", "--json", "--no-link", "--no-write-lock-file",
                   *(f"path:{flake}#{nixcmd.toplevel_attr(h.name)}" for h in hosts)],
                  timeout=600, env=_env(layout)).stdout
        inputs = flakeinputs.resolve(flake, str(layout.nix_conf_dir)).store_paths
    except (CommandFailed, flakeinputs.InputsError) as exc:
        raise UserError(f"building the lab hosts' first generations on the controller failed ({exc}); "
                        f"see `nix build path:{flake}#{nixcmd.toplevel_attr(hosts[0].name)}`") from None
    built = {entry["outputs"]["out"] for entry in json.loads(out)}
    if set(toplevels.values()) != built:
        raise UserError(f"the lab flake built {sorted(built - set(toplevels.values()))[:1]}, not the toplevels it "
                        f"evaluates for {', '.join(h.name for h in hosts)}")
    return toplevels, inputs


def install(layout: LabLayout, host: LabHost, toplevel: str, inputs: tuple[str, ...]) -> None:
    """Into the stopped host's overlay: the closure and inputs in its store, the profile's first generation."""
    upper = layout.host_dir(host.name) / "upper"
    try:
        run([*NIX, "copy", "--no-check-sigs", "--to", str(upper), toplevel, *inputs], timeout=300, env=_env(layout))
    except CommandFailed as exc:
        raise UserError(f"{host.name}: copying its first generation into its store failed ({exc})") from None
    state = upper / "nix" / "var" / "nix"
    # Nix made this GC root link with the path it saw (under the overlay); inside the host it is this.
    _symlink("/nix/var/nix/profiles", state / "gcroots" / "profiles")
    profile = upper / SYSTEM_PROFILE.lstrip("/")
    _symlink(toplevel, profile.with_name(f"{profile.name}-1-link"))
    _symlink(f"{profile.name}-1-link", profile)
    # Where the deploy's activations keep their logs and exit codes: there from the install on (an
    # install that ran the first activation through the deploy's own command left it), so that the
    # first deploy finds it as it finds it on every later one.
    (upper / nixcmd.ACTIVATION_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)


def _symlink(target: str, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
