"""Each change of a host's state, as one JSON line in the run's `events.jsonl`.

The transaction runs inside pyinfra (a child process of `rollout`, `plan` and `maintain`); it
appends here, and the command that started pyinfra follows the file (ipex_fleet.views.live) to show the
fleet's progress while it happens. A line is one `write` to a file opened for appending, so lines
of hosts deployed at once never interleave.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

from ipex_fleet.ledger.results import run_dir

EVENTS = "events.jsonl"

# A step's state as people read it; a step not named here shows under its own name.
STEP_STATES = {
    "preflight": "preflight", "recover": "recovering", "record_previous": "preflight", "push_flake": "pushing", "build": "building", "switch": "switching",
    "install_models": "models", "health": "health",
    "bench_gate": "bench", "record": "recording", "plan_step": "planning", "rollback_requested": "rolling back",
    "verify_promoted": "checking", "observe": "reading", "begin": "locking",
    "retention": "collecting", "vacuum": "vacuuming", "restart": "services", "health_and_drift": "health",
}
FINAL_STATES = ("ok", "unchanged", "rolled_back", "failed", "unreachable", "skipped", "planned", "revert-failed",
                "paused")


def events_path(run_id: str) -> Path:
    return run_dir(run_id) / EVENTS


def emit(run_id: str, host: str, state: str, **detail: Any) -> None:
    """Append one event; never fails the deploy (progress is for people, the result is the record)."""
    event = {"ts": round(time.time(), 3), "run_id": run_id, "host": host, "state": state,
             **{k: v for k, v in detail.items() if v is not None}}
    try:
        path = events_path(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as out:
            out.write(json.dumps(event, sort_keys=True) + "\n")
    except OSError:
        pass


class Follower:
    """Reads the events a run appends from now on (a rollout's waves share one run: each wave follows
    its own), each read from where the last left off; a half-written last line waits."""

    def __init__(self, run_id: str) -> None:
        self.path = events_path(run_id)
        try:
            self._offset = self.path.stat().st_size
        except FileNotFoundError:
            self._offset = 0
        self._partial = b""

    def new(self) -> Iterator[dict[str, Any]]:
        try:
            with open(self.path, "rb") as src:
                src.seek(self._offset)
                chunk = src.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            try:
                yield json.loads(line)
            except ValueError:
                continue
