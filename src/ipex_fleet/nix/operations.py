"""pyinfra operations for Nix and NixOS, in the style of pyinfra's own: fact, diff, then
either `host.noop(...)` or quoted commands.

Example deploy:

    from ipex_fleet.nix import operations as nix
    nix.push_flake(name="Push the flake", src="flake")
    nix.switch(name="Switch", path="/nix/store/...-nixos-system-web1", mode="switch")
    nix.rollback(name="Back to 41", generation=41)
"""

from __future__ import annotations

import os

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.exceptions import OperationValueError

from ..domain import SYSTEM_PROFILE, Action
from ..flakepush import flake_hash, flake_tarball
from . import commands
from .facts import FlakePushed, NixProfileGenerations, NixRunningSystem


@operation()
def push_flake(src: str, keep: int = 5):
    """
    Push a flake directory to /var/lib/ipex-fleet/flake/<content-hash>/, once per content.

    + src: local flake directory (holds flake.nix)
    + keep: how many pushed flakes to keep on the host
    """
    import io

    src = os.path.abspath(src)
    if not os.path.isfile(os.path.join(src, "flake.nix")):
        raise OperationValueError(f"{src} has no flake.nix")
    digest = flake_hash(src)
    if host.get_fact(FlakePushed, flake_hash=digest):
        host.noop(f"flake {digest} is already on the host")
        return
    upload = f"{commands.FLAKE_ROOT}/.upload-{digest}.tar.gz"
    yield StringCommand(f"mkdir -p {commands.FLAKE_ROOT}")
    yield FileUploadCommand(io.BytesIO(flake_tarball(src)), upload)
    yield StringCommand(commands.unpack_flake(upload, digest))
    yield StringCommand(commands.prune_flakes(keep, digest))


@operation()
def build(flake_hash: str, config: str):
    """
    Build a host's toplevel on the target from a pushed flake.

    + flake_hash: the content hash given by push_flake
    + config: the nixosConfigurations attribute name
    """
    yield StringCommand(commands.build_toplevel(f"path:{commands.FLAKE_ROOT}/{flake_hash}", config))


@operation()
def switch(path: str, mode: str = "switch", profile: str = SYSTEM_PROFILE):
    """
    Set the system profile to `path` and activate it. Exit 100 (reboot required) is success.

    + path: the toplevel store path
    + mode: switch, test, boot or dry-activate
    + profile: the system profile
    """
    try:
        action = Action(mode)
    except ValueError:
        raise OperationValueError(f"unknown mode {mode!r}") from None
    state = host.get_fact(NixProfileGenerations, profile=profile)
    running = host.get_fact(NixRunningSystem)
    if state.current_generation.path == path and (running == path or not action.activates):
        host.noop(f"{path} is already the current generation")
        return
    if action.sets_profile:
        yield StringCommand(commands.set_profile(profile, path))
    yield StringCommand(f"{commands.activate(path, action)}; rc=$?; [ $rc -eq 100 ] && exit 0; exit $rc")


@operation()
def rollback(generation: int, profile: str = SYSTEM_PROFILE):
    """
    Return the profile to generation `generation` and activate it.

    + generation: the generation number to return to
    + profile: the system profile
    """
    state = host.get_fact(NixProfileGenerations, profile=profile)
    target = state.by_number(int(generation))
    if target is None:
        raise OperationValueError(f"profile {profile} has no generation {generation}")
    if state.current == target.number and host.get_fact(NixRunningSystem) == target.path:
        host.noop(f"generation {generation} is already current and running")
        return
    yield StringCommand(commands.switch_generation(profile, target.number))
    yield StringCommand(commands.activate(target.path, Action.SWITCH))


@operation(is_idempotent=False)
def lock(run_id: str):
    """
    Take the host's deploy lock for `run_id`; fail when another run holds it.

    + run_id: the run that takes the lock
    """
    yield StringCommand(commands.acquire_lock({"run_id": run_id}))


@operation(is_idempotent=False)
def unlock(run_id: str):
    """
    Release the host's deploy lock if `run_id` holds it.

    + run_id: the run that holds the lock
    """
    yield StringCommand(commands.release_lock(run_id))
