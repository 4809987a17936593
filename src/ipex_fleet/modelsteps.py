"""Transaction step 6: install the host's declared models, on the host, from its mirror.

Models are data outside the generation: a failed install leaves the files already in place
intact (downloads land in hidden .part files and are renamed only once verified), and the
host fails with the reason, which rolls its generation back like any failure after the switch.
"""

from __future__ import annotations

import json
from shlex import quote
from typing import Any

from .models import manifest
from .remote import put_bytes, run
from .transaction import HostTransaction, StepFailed, sh

PLAN_DIR = "/var/lib/ipex-fleet/models"


def plan_for(host: Any) -> manifest.ModelPlan | None:
    return manifest.from_host_data(host.name, host.data)


def install_models(tx: HostTransaction, host: Any) -> None:
    plan = plan_for(host)
    if plan is None:
        return
    path = f"{PLAN_DIR}/plan-{tx.run_id}.json"
    sh(tx, host, f"mkdir -p {quote(PLAN_DIR)}")
    put_bytes(host, json.dumps(plan.to_json()).encode(), path, timeout=tx.settings.command_timeout)
    verify = " --verify" if host.data.get("models_verify") else ""
    command = f"{tx.settings.ipex_fleet_command} models install --plan {quote(path)} --json{verify}"
    timeout = float(host.data.get("models_timeout", 3600))
    out = _run_streaming(tx, host, command, timeout)
    report = None
    for line in reversed(out.stdout_lines):
        if line.startswith("{"):
            report = json.loads(line)
            break
    if report is None:
        raise StepFailed(f"model installer gave no report (exit {out.returncode}): {out.last_error}")
    tx.health = {**(tx.health or {}), "models": {k: report[k] for k in ("installed", "present", "pruned", "failed",
                                                                       "bytes_downloaded", "bytes_hashed")}}
    if report["failed"]:
        raise StepFailed("models: " + "; ".join(report["failed"]))


def _run_streaming(tx: HostTransaction, host: Any, command: str, timeout: float):
    """Progress lines show live in the pyinfra output, with the host's prefix."""
    return run(host, command, timeout=timeout, stream=True)


def validate(inventory: Any) -> None:
    """Every host's manifest, before any host is touched."""
    for host in inventory.iter_activated_hosts():
        plan = plan_for(host)  # raises UserError on a bad manifest
        if plan is not None and plan.source == "controller":
            from .errors import UserError

            raise UserError(f"host {host.name}: models_source controller is not available yet; "
                            "use mirror (the host downloads from the manifest's URLs)")
