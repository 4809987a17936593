"""The one place that runs local commands on the controller: always with a timeout."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from ipex_fleet.common.errors import CommandFailed


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run(
    argv: list[str],
    *,
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
    input: str | None = None,
    cwd: str | None = None,
) -> Completed:
    """Run argv (never through a shell) and wait at most `timeout` seconds."""
    full_env = {**os.environ, **env} if env else None
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            input=input,
            cwd=cwd,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(argv, 124, f"timed out after {timeout:g}s") from exc
    result = Completed(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr or proc.stdout)
    return result


def run_to_file(argv: list[str], path: str, *, timeout: float, env: dict[str, str] | None = None) -> None:
    """Run argv with its stdout written to `path` (binary output, such as `nix-store --export`)."""
    full_env = {**os.environ, **env} if env else None
    with open(path, "wb") as out:
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  timeout=timeout, env=full_env)
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(argv, 124, f"timed out after {timeout:g}s") from exc
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stderr.decode(errors="replace"))


def run_attached(argv: list[str], *, timeout: float) -> int:
    """Run argv with the caller's stdin/stdout/stderr (for `lab exec`); return its exit code."""
    try:
        return subprocess.run(argv, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return 124
