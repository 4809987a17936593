"""`python -m ipex_fleet.host.probe --level N --json`: the host's GPU and service health, by level.

Prints one JSON document: schema, level, host, duration_s, accelerator, checks[], result.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from ipex_fleet.host.probe.checks import CHECKS, Expectations, Scratch
from ipex_fleet.host.probe.model import CheckResult, Outcome, Result, failed, overall, skipped

SCHEMA = 1


def _run_limited(fn: Any, exp: Expectations, scratch: Scratch, limit: float) -> Outcome:
    """Run one check in a daemon thread; past its limit it fails (a hung driver call stays behind)."""
    box: list[Outcome] = []

    def target() -> None:
        try:
            box.append(fn(exp, scratch))
        except RuntimeError as exc:
            if "torch did not import" in str(exc):
                box.append(skipped("torch did not import (see the torch check)"))
            else:
                box.append(failed(f"{type(exc).__name__}: {exc}"))
        except Exception as exc:  # a check must report, never crash the probe
            box.append(failed(f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    if not box:
        return failed(f"did not finish within {limit:g}s")
    return box[0]


def run(level: int, exp: Expectations, extra: list[tuple[str, int, Any, float]] = ()) -> dict[str, Any]:
    started = time.monotonic()
    scratch: Scratch = {}
    results: list[CheckResult] = []
    for name, check_level, fn, limit in (*CHECKS, *extra):
        if check_level > level:
            continue
        t0 = time.monotonic()
        outcome = _run_limited(fn, exp, scratch, limit)
        if outcome.result is Result.FAIL:  # later checks see it (the tokens/s baseline is recorded healthy only)
            scratch.setdefault("failed", []).append(name)
        results.append(CheckResult(name, check_level, outcome.result, outcome.message, outcome.data,
                                   time.monotonic() - t0))
    torch = scratch.get("torch")
    device = scratch.get("device")
    required = exp.config.health.required_checks if exp.config else ()
    return {
        "schema": SCHEMA,
        "level": level,
        "host": socket.gethostname(),
        "duration_s": round(time.monotonic() - started, 3),
        "accelerator": {
            "type": device.type if device else None,
            "count": len(scratch.get("devices", [])),
            "devices": scratch.get("devices", []),
            "torch": getattr(torch, "__version__", None),
            "ipex": scratch.get("ipex"),
        },
        "checks": [r.to_json() for r in results],
        "result": overall(results, tuple(required)).value,
    }


def failing(document: dict[str, Any]) -> list[str]:
    """`name: message` of every failed check, for host results and logs."""
    return [f"{c['name']}: {c['message']}" for c in document.get("checks", []) if c["result"] == Result.FAIL.value]
