"""Steps 2 to 4: record the generation to return to, push the flake (by content hash) with the
locked inputs the host lacks, and build the toplevel on the target (or substitute it from the
controller's cache). Nothing on the host changes yet.
"""

from __future__ import annotations

from typing import Any

from pyinfra import state

from ipex_fleet.nix import flakeinputs
from ipex_fleet.transaction import runstate
from ipex_fleet.nix.cache import CacheError, substitute, toplevel_for
from ipex_fleet.domain import Generation
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.nix import upkeep
from ipex_fleet.remote import RemoteResult, put_bytes
from ipex_fleet.transaction.core import HostTransaction, StepFailed, profile_state, running_system, sh

def record_previous(tx: HostTransaction, host: Any) -> None:
    """Step 2: the generation to return to on failure (as read under the lock, in its round trip)."""
    state, tx.profile_at_lock = tx.profile_at_lock, None
    if state is None or state.current is None:
        state = profile_state(tx, host)
    tx.previous = state.current_generation
    if tx.previous.number is None:
        raise StepFailed(f"{tx.settings.profile} has no generation: is this an installed NixOS host?")


def push_probe(tx: HostTransaction, host: Any) -> dict[str, Any] | None:
    """What the lock's round trip asks the host agent for the push (agent push_state): whether the
    flake is there, which locked inputs no GC root proves valid, and the tidy. None where nothing is
    pushed, or where the inputs cannot be read here (push_flake then says why)."""
    if tx.settings.build == "controller" or tx.phase != "deploy":
        return None
    run = runstate.of(host.state)
    try:
        inputs = run.flake_inputs(tx.settings.flake, tx.settings.controller_nix_conf_dir).store_paths
    except flakeinputs.InputsError:
        return None
    return {"flakes": nixcmd.FLAKE_ROOT, "hash": run.flake_hash(tx.settings.flake), "roots": upkeep.INPUT_ROOTS,
            "inputs": list(inputs), "keep": tx.settings.keep_flakes}


def push_flake(tx: HostTransaction, host: Any) -> None:
    """Step 3a: push the flake by content hash, unless the host has it already, and the locked inputs
    the host lacks, from the controller's store, so that it builds the locked revisions without network
    (flakeinputs says why this way). The lock's round trip said what the host has (push_probe); the
    store is asked here only for inputs no GC root of ours proves valid, in one round trip with the
    flake's presence. The tarball is uploaded here and unpacked in the build's round trip."""
    run = runstate.of(host.state)
    digest = run.flake_hash(tx.settings.flake)
    tx.flake_hash = digest
    if tx.settings.build == "controller":
        return  # the host substitutes the built closure from the cache: it needs no flake
    conf = tx.settings.controller_nix_conf_dir
    try:
        inputs = run.flake_inputs(tx.settings.flake, conf).store_paths
    except flakeinputs.InputsError as exc:
        raise StepFailed(str(exc)) from None
    known = tx.push_known if tx.push_known is not None and not tx.push_known.get("error") else None
    if known is not None:
        unproven = tuple(p for p in inputs if p in set(known.get("unproven") or ()))
        present = bool(known.get("present"))
        asked = None
    if known is None or unproven:
        ask = inputs if known is None else unproven
        check = f"{flakeinputs.missing_command(ask)} || echo {_INPUTS_UNCHECKED}; " if ask else ""
        asked = sh(tx, host, f"mkdir -p {nixcmd.FLAKE_ROOT}; {check}{nixcmd.flake_present(digest)}")
        if _INPUTS_UNCHECKED in asked.stdout_lines:
            raise StepFailed(f"checking the host's store for the flake's inputs failed: {asked.last_error}")
        present = asked.ok
    pushed = 0
    if not present:
        upload = f"{nixcmd.FLAKE_ROOT}/.upload-{digest}-{tx.run_id}.tar.gz"
        tarball = run.flake_tarball(tx.settings.flake)
        put_bytes(host, tarball, upload, timeout=tx.settings.command_timeout)
        tx.unpack = nixcmd.unpack_flake(upload, digest)  # in the build's round trip
        pushed = len(tarball)
    missing = tuple(sorted(line for line in asked.stdout_lines if line in inputs)) if asked is not None else ()
    carried = carry_inputs(tx, host, missing) if missing else 0
    host.log(f"pushed the flake ({pushed} bytes) and its locked inputs ({carried} bytes)")


_INPUTS_UNCHECKED = "ipex-fleet: inputs unchecked"


def carry_inputs(tx: HostTransaction, host: Any, missing: tuple[str, ...]) -> int:
    """Step 3a, continued: send and import the missing input store paths. Returns bytes sent."""
    try:
        data = runstate.of(host.state).inputs_export(missing, tx.settings.controller_nix_conf_dir)
    except flakeinputs.InputsError as exc:
        raise StepFailed(str(exc)) from None
    upload = f"{nixcmd.FLAKE_ROOT}/.inputs-{tx.run_id}.gz"
    put_bytes(host, data, upload, timeout=tx.settings.command_timeout)
    imported = sh(tx, host, flakeinputs.import_command(upload), tx.step_timeout)
    if not imported.ok:
        raise StepFailed(f"importing the flake's inputs failed: {imported.last_error}")
    return len(data)


def build(tx: HostTransaction, host: Any) -> None:
    """Step 3b and 4: build the toplevel on the target; equal to the current one means unchanged. The
    running system comes back in the same round trip, and, before the build, the older pushed flakes
    are pruned and this one's inputs pinned by GC roots (best effort: their output is dropped)."""
    if tx.settings.build == "controller":
        path, running = substitute_from_cache(tx, host)
    else:
        ref = f"path:{nixcmd.FLAKE_ROOT}/{tx.flake_hash}"
        build = nixcmd.build_toplevel(ref, tx.settings.nixos_config)
        if not (tx.push_known or {}).get("rooted"):  # else the lock's round trip tidied all of it
            inputs = runstate.of(host.state).flake_inputs(tx.settings.flake, tx.settings.controller_nix_conf_dir)
            tidy = tidy_before_build(tx.push_known, tx.settings.keep_flakes, tx.flake_hash, inputs.store_paths)
            build = f"( {tidy}\n) >/dev/null 2>&1; {build}"
        unpack, tx.unpack = tx.unpack, None
        if unpack:  # the flake pushed in step 3a, unpacked first
            build = nixcmd.unpacked_then(unpack, build)
        built = sh(tx, host, nixcmd.then_running(build), tx.step_timeout)
        stdout, running = nixcmd.take_running(built.stdout_lines)
        built = RemoteResult(built.returncode, stdout, built.stderr_lines)
        if not built.ok and built.stderr_lines and built.stderr_lines[-1] == nixcmd.UNPACK_FAILED:
            raise StepFailed(f"unpacking the flake failed: {RemoteResult(1, (), built.stderr_lines[:-1]).last_error}")
        if not built.ok:
            raise StepFailed(f"nix build failed: {built.last_error}")
        path = nixcmd.parse_build_output(built.stdout)
    tx.target = Generation(None, path)
    if running is None:  # not said in the build's round trip
        running = running_system(tx, host)
    if path == tx.previous.path and (running == path or not tx.settings.mode.activates):
        tx.unchanged = True
        tx.target = tx.previous


def tidy_before_build(known: dict | None, keep: int, flake_hash: str, inputs: tuple[str, ...]) -> str:
    """What the build's round trip tidies where the lock's did not root this flake's inputs (push_probe):
    the roots always, and the older flakes' pruning too where the lock's round trip did not run it."""
    tidy = upkeep.root_inputs(flake_hash, inputs)
    if not known or known.get("error"):
        tidy = f"{nixcmd.prune_flakes(keep, flake_hash)}; {tidy}"
    return tidy


def substitute_from_cache(tx: HostTransaction, host: Any) -> tuple[str, str | None]:
    """Build once on the controller (shared by every host of the run), then substitute on the host.
    Returns the toplevel and the running system (read in the same round trip; None where not said)."""
    try:
        path = toplevel_for(host, tx.settings, state.inventory)
    except CacheError as exc:
        raise StepFailed(f"building on the controller failed: {exc}") from None
    fetched = sh(tx, host, nixcmd.then_running(substitute(path, tx.settings)), tx.step_timeout)
    stdout, running = nixcmd.take_running(fetched.stdout_lines)
    if not fetched.ok:
        error = RemoteResult(fetched.returncode, stdout, fetched.stderr_lines).last_error
        raise StepFailed(f"substituting {path} from {tx.settings.cache} failed: {error}")
    return path, running

