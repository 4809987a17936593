"""Controller-side state: `.ipex-fleet/` (or $IPEX_FLEET_STATE), one run id per process."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from ipex_fleet.common.files import state_dir, write_json_atomic
from ipex_fleet.domain import HostResult


def new_run_id() -> str:
    """$IPEX_FLEET_RUN_ID (set by the rollout engine), or a fresh id (one per pyinfra run: runstate)."""
    return os.environ.get("IPEX_FLEET_RUN_ID") or (
        time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    )


def run_dir(run_id: str) -> Path:
    return state_dir() / "runs" / run_id


def write_host_result(result: HostResult) -> Path:
    return write_json_atomic(run_dir(result.run_id) / "hosts" / f"{result.host.replace('/', '_')}.json",
                             result.to_json())


def read_host_result(run_id: str, host: str) -> HostResult | None:
    path = run_dir(run_id) / "hosts" / f"{host.replace('/', '_')}.json"
    try:
        return HostResult.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None

