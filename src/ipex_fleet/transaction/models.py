"""Transaction step 6: install the host's declared models, on the host, from its mirror.

Models are data outside the generation: a failed install leaves the files already in place
intact (downloads land in hidden .part files and are renamed only once verified), and the
host fails with the reason, which rolls its generation back like any failure after the switch.
"""

from __future__ import annotations

import json
from pathlib import Path
from shlex import quote
from typing import Any

from ipex_fleet.host.models import manifest
from ipex_fleet.transaction.modelcache import fetch
from ipex_fleet.host.models.install import InstallError
from ipex_fleet.remote import put_bytes, run
from ipex_fleet.transaction.core import HostTransaction, StepFailed, sh, warn

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
    if plan.source == "controller" and plan.files:
        push_from_controller(tx, host, plan, path)
    verify = " --verify" if tx.settings.models_verify else ""
    command = f"{tx.settings.ipex_fleet_command} models install --plan {quote(path)} --json{verify}"
    timeout = tx.step_timeout
    try:
        out = run(host, command, timeout=timeout, stream=True)  # progress shows live, with the host's prefix
    finally:  # the plan holds the URLs as given, tokens included: it does not outlive the install
        sh(tx, host, f"rm -f {quote(path)}")
    report = None
    for line in reversed(out.stdout_lines):
        if line.startswith("{"):
            report = json.loads(line)
            break
    if report is None:
        raise StepFailed(f"model installer gave no report (exit {out.returncode}): {out.last_error}")
    tx.health = {**(tx.health or {}), "models": {k: report[k] for k in ("installed", "present", "pruned", "failed",
                                                                       "drifted", "bytes_downloaded", "bytes_hashed")
                                                    if k in report}}
    if tx.report is not None:  # maintenance: each folder's space too, and drifted pins as warnings
        tx.report["models"] = {k: report.get(k) for k in ("installed", "present", "pruned", "failed", "drifted",
                                                          "bytes_downloaded", "bytes_hashed", "space")}

        for line in report.get("drifted") or ():
            warn(tx, host, f"model digest drifted: {line}")
    if report["failed"]:
        raise StepFailed("models: " + "; ".join(report["failed"]))


def validate(inventory: Any) -> None:
    """Every host's manifest, before any host is touched (raises UserError on a bad one)."""
    for host in inventory.iter_activated_hosts():
        plan_for(host)


def push_from_controller(tx: HostTransaction, host: Any, plan: manifest.ModelPlan, plan_path: str) -> None:
    """models_source: controller: fetch each file once into the controller's cache, push what the host lacks."""

    out = sh(tx, host, f"{tx.settings.ipex_fleet_command} models needs --plan {quote(plan_path)}")
    if not out.ok:
        raise StepFailed(f"models: cannot list what the host lacks: {out.last_error}")
    needed = json.loads(out.stdout_lines[-1])
    by_label = {(m.kind, m.name): m for m in plan.files}
    total = sum(by_label[(m["kind"], m["name"])].size or 0 for m in needed["missing"])
    if total > needed["free"]:
        raise StepFailed(f"models: pushing {total >> 20} MiB, but {needed['root']} has {needed['free'] >> 20} MiB free")
    timeout = tx.step_timeout
    for entry in needed["missing"]:
        model = by_label[(entry["kind"], entry["name"])]
        try:
            local = fetch(model, lambda line: host.log(line))
        except InstallError as exc:
            raise StepFailed(f"models: the controller could not fetch {model.kind}/{model.name}: {exc}") from None
        sh(tx, host, f"mkdir -p {quote(str(Path(entry['push_to']).parent))}")
        put_bytes(host, str(local), entry["push_to"], timeout=timeout)
        host.log(f"{model.kind}/{model.name}: pushed from the controller")
