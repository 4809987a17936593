"""A host on probation: its gates were inconclusive, so the run neither committed nor reverted it.

The host keeps its intent open and its deploy lock, both with a lease of the pause timeout on its own
clock: should nobody decide in time, its watchdog reverts it (the default decision is abort). The
controller keeps what a later decision needs (the intent id and the lock's fencing token) in
`.ipex-fleet/runs/RUN/probation/HOST.json`, readable by its owner only; `ipex-fleet rollout --resume
RUN --approve|--abort` runs deploys/decide.py, which claims the intent one way or the other.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ipex_fleet.domain import Generation
from ipex_fleet.ledger.results import run_dir

DECISIONS = ("approve", "abort")


@dataclass(frozen=True)
class Probation:
    host: str
    run_id: str
    intent_id: str
    lock_token: str
    why: str
    previous: dict
    target: dict
    pause_timeout: float
    flake_hash: str | None = None
    health: dict | None = None  # the gates' evidence, kept for the decided result
    bench: dict | None = None

    @property
    def previous_generation(self) -> Generation:
        return Generation.from_json(self.previous)

    @property
    def target_generation(self) -> Generation:
        return Generation.from_json(self.target)


def path(run_id: str, host: str) -> Path:
    return run_dir(run_id) / "probation" / f"{host}.json"


def write(entry: Probation) -> Path:
    target = path(entry.run_id, entry.host)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the lock's token
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(entry), out, sort_keys=True)
    os.replace(temporary, target)
    return target


def read(run_id: str, host: str) -> Probation | None:
    try:
        return Probation(**json.loads(path(run_id, host).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def decided(run_id: str, host: str) -> None:
    """The decision is taken: the token is no longer needed anywhere."""
    path(run_id, host).unlink(missing_ok=True)
