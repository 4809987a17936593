"""The hosts are the truth: what a host recorded of its own deploys (whichever controller ran them),
reconciled with this controller's ledger (`ipex-fleet status --live`, and `rollback --to` for a run
this ledger never saw).

A deploy from CI, the maintenance timer and an operator's laptop each write their own ledger, but
every one of them appends the host's `deploys.jsonl`: that is what `--live` reads, in one round trip
per host, beside the host agent's open intent and lock.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ipex_fleet.ledger.runs import Ledger


def _said(status: Any, generation: Any, run_id: Any) -> str:
    return f"{status} gen {generation if generation is not None else '-'} run {run_id}"


def last_record(report: dict[str, Any] | None) -> dict[str, Any] | None:
    records = (report or {}).get("records") or []
    return records[-1] if records else None


def reconcile(host: str, report: dict[str, Any] | None, last: sqlite3.Row | None, ledger: Ledger) -> dict[str, Any]:
    """The host's last deploy record against this ledger: agree, disagree (and how), or unknown."""
    out: dict[str, Any] = {"host_says": None, "ledger_says": None, "agree": None, "disagreement": None,
                           "open": None, "host_records": (report or {}).get("records") or []}
    if last is not None:
        out["ledger_says"] = _said(last["status"], last["final_generation"], last["run_id"])
    if report is None:
        return out  # unreachable: nothing to compare
    out["open"] = _open_text(report)
    record = last_record(report)
    if record is None:
        out["agree"] = last is None
        if last is not None:
            out["disagreement"] = f"this ledger has run {last['run_id']}, but the host recorded no deploy"
        return out
    final = (record.get("final") or {}).get("generation")
    out["host_says"] = _said(record.get("status"), final, record.get("run_id"))
    known = [r for r in ledger.results(str(record.get("run_id")))
             if r["host"] == host and r["phase"] == record.get("phase", "deploy")]
    if not known:
        out["agree"] = False
        out["disagreement"] = (f"run {record.get('run_id')} ({record.get('phase', 'deploy')}: {record.get('status')}, "
                               f"generation {final}) was made by another controller; this ledger does not know it")
        return out
    mine = known[-1]
    out["agree"] = mine["status"] == record.get("status") and mine["final_generation"] == final
    if not out["agree"]:
        out["disagreement"] = (f"run {record.get('run_id')}: the host recorded {record.get('status')} on generation "
                               f"{final}, this ledger {mine['status']} on {mine['final_generation']}")
    return out


def _open_text(report: dict[str, Any]) -> str | None:
    parts = []
    intent, lock = report.get("intent"), report.get("lock")
    if intent:
        parts.append(f"intent of run {intent.get('run_id')} ({intent.get('phase')}, {intent.get('left', 0):.0f}s left)")
    if lock:
        parts.append(f"lock of run {lock.get('run_id')} ({lock.get('controller') or '?'}, "
                     f"{lock.get('left', 0):.0f}s left)")
    return "; ".join(parts) or None


def final_generations_from_hosts(run_id: str, reports: dict[str, dict[str, Any] | None]) -> dict[str, tuple[int, str]]:
    """For `rollback --to RUN` when this ledger lacks RUN: each host's own record of it (committed)."""
    out = {}
    for host, report in reports.items():
        for record in (report or {}).get("records") or []:
            final = record.get("final") or {}
            if (record.get("run_id") == run_id and record.get("phase", "deploy") == "deploy"
                    and record.get("status") in ("ok", "unchanged") and final.get("generation") is not None):
                out[host] = (int(final["generation"]), str(final.get("path")))
    return out
