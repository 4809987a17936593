"""A flake's locked inputs, carried from the controller to each host over the deploy's own SSH
session, so that a host without network builds exactly the locked revisions.

Why this way, and not `nix flake archive --to ssh-ng://HOST` or `nix copy`: those open a second SSH
connection of Nix's own (no bastion, sudo or host data of pyinfra's), and ssh-ng refuses unsigned
paths unless the deploy user is a trusted user. Here the controller resolves the lock once per run
(`nix flake archive --json`: every input, fetched into its own store if missing; the controller is
the machine with network), the host says which input paths it lacks, and only those travel, as a
`nix-store --export` stream, imported with `nix-store --import`. A locked input's store path
follows from its narHash, so on the host Nix finds it in the store and fetches nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Callable

from ipex_fleet.common.errors import CommandFailed
from ipex_fleet.runner import run, run_to_file

NIX = ["nix", "--extra-experimental-features", "nix-command flakes"]


class InputsError(Exception):
    """The controller could not resolve or export the flake's locked inputs."""


@dataclass(frozen=True)
class LockedInputs:
    """Input name (nested inputs as a/b) -> store path on the controller."""

    paths: dict[str, str]

    @property
    def store_paths(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.paths.values())))


def _env(nix_conf_dir: str | None) -> dict[str, str] | None:
    return {"NIX_CONF_DIR": nix_conf_dir} if nix_conf_dir else None


def _walk(node: dict, prefix: str, out: dict[str, str]) -> None:
    for name, sub in (node.get("inputs") or {}).items():
        key = f"{prefix}{name}"
        if sub.get("path"):
            out[key] = sub["path"]
        _walk(sub, f"{key}/", out)


def resolve(flake_dir: str, nix_conf_dir: str | None = None, timeout: float = 600) -> LockedInputs:
    """Every locked input of the flake, present in the controller's store."""
    try:
        out = run([*NIX, "flake", "archive", "--json", "--no-write-lock-file", f"path:{flake_dir}"],
                  timeout=timeout, env=_env(nix_conf_dir)).stdout
    except CommandFailed as exc:
        raise InputsError(f"resolving the locked inputs of {flake_dir} failed: {exc}") from None
    paths: dict[str, str] = {}
    _walk(json.loads(out), "", paths)
    return LockedInputs(paths)


def resolved(flake_root: str, nix_conf_dir: str | None, materialized: Callable[[], str]) -> LockedInputs:
    """resolve(), kept on the controller under what decides it: the bytes of flake.lock and flake.nix
    (and the Nix configuration used). A change deploy pushes new flake content almost every time while
    its lock stays: resolving it again (materializing the flake, `nix flake archive`) took a Nix call
    per run that every host's push step waited for. A kept answer counts only while every path it
    names is still in the store (a garbage collection sends it back to Nix)."""
    base = Path(flake_root)
    try:
        digest = hashlib.sha256((base / "flake.lock").read_bytes() + b"\0" + (base / "flake.nix").read_bytes()
                                + b"\0" + (nix_conf_dir or "").encode()).hexdigest()[:32]
    except OSError:
        return resolve(materialized(), nix_conf_dir)
    cached = Path(tempfile.gettempdir()) / "ipex-fleet-flakes" / f"inputs-{digest}.json"
    try:
        paths = json.loads(cached.read_text())
        if (isinstance(paths, dict) and all(isinstance(k, str) and isinstance(v, str) and v.startswith("/nix/store/")
                                            and os.path.exists(v) for k, v in paths.items())):
            return LockedInputs(paths)
    except (OSError, ValueError):
        pass
    found = resolve(materialized(), nix_conf_dir)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        tmp.write_text(json.dumps(found.paths, sort_keys=True))
        os.replace(tmp, cached)
    except OSError:
        pass
    return found


def export(paths: list[str], nix_conf_dir: str | None = None, timeout: float = 600) -> bytes:
    """A gzip'd `nix-store --export` of these store paths (sources: they have no references)."""
    fd, tmp = tempfile.mkstemp(prefix="ipex-fleet-inputs-")
    os.close(fd)
    try:
        run_to_file(["nix-store", "--export", *paths], tmp, timeout=timeout, env=_env(nix_conf_dir))
        with open(tmp, "rb") as f:
            return gzip.compress(f.read(), compresslevel=6, mtime=0)
    except CommandFailed as exc:
        raise InputsError(f"exporting the flake's inputs failed: {exc}") from None
    finally:
        os.unlink(tmp)


def missing_command(paths: tuple[str, ...]) -> str:
    """Host side: print the paths that are not valid in the host's store."""
    return "nix-store --check-validity --print-invalid " + " ".join(quote(p) for p in paths)


def import_command(upload: str) -> str:
    """Host side: import an uploaded export, then remove it."""
    u = quote(upload)
    return f"set -e; gzip -dc {u} | nix-store --import >/dev/null; rm -f {u}"
