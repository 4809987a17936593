"""A maintenance run's report: per host what it freed, deleted, verified, pruned and restarted, its
drift figures, and what was skipped and why. Kept as `.ipex-fleet/runs/RUN/maintenance.json` (each
host's own report is also its result and its ledger row), and shown as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ipex_fleet.common.files import write_json_atomic
from ipex_fleet.ledger.results import read_host_result, run_dir
from ipex_fleet.views.tables import render, width, wrap


def host_entry(run_id: str, host: str, wave: str) -> dict[str, Any]:
    result = read_host_result(run_id, host)
    if result is None:
        return {"host": host, "wave": wave, "status": "not run", "report": None, "error": None, "seconds": None}
    return {"host": host, "wave": wave, "status": result.status.value, "generation": result.final.number,
            "report": result.report, "health": (result.health or {}).get("result"), "error": result.error,
            "seconds": result.timings.get("total")}


def write(run_id: str, status: str, entries: list[dict[str, Any]]) -> Path:
    return write_json_atomic(run_dir(run_id) / "maintenance.json",
                             {"run_id": run_id, "status": status, "hosts": entries})


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f}M"


def cells(entry: dict[str, Any]) -> list[str]:
    tasks = (entry.get("report") or {}).get("tasks", {})
    retention = tasks.get("retention", {})
    gc = retention.get("gc") or {}
    journal = tasks.get("journal", {})
    models = (entry.get("report") or {}).get("models") or {}
    drift = tasks.get("drift", {})
    worst = [c["ratio"] for c in drift.get("cases", []) if c.get("ratio") is not None]
    return [
        entry["wave"], entry["host"], entry["status"],
        _mib(gc.get("nix_freed_bytes")) if gc else "-",
        f"{len(retention.get('kept', {}))}/{len(retention.get('deleted', []))}" if retention else "-",
        f"{_mib(journal.get('before_bytes'))}→{_mib(journal.get('after_bytes'))}" if journal else "-",
        f"{len(models.get('present') or []) + len(models.get('installed') or [])}/{len(models.get('installed') or [])}"
        f"/{len(models.get('pruned') or [])}" if models else "-",
        (drift.get("result") or "-") + (f" {min(worst):.0%}" if worst and drift.get("result") == "fail" else "")
        if drift else "-",
        f"{entry['seconds']:.0f}s" if entry.get("seconds") is not None else "-",
    ]


def table(entries: list[dict[str, Any]]) -> list[str]:
    """The table (FREED: GC's count; GENS kept/deleted; MODELS ok/fetched/pruned), then each host's
    warnings, skipped tasks and error, folded to the terminal."""
    columns = [(n, {"no_wrap": True}) for n in ("WAVE", "HOST", "STATUS", "FREED", "GENS", "JOURNAL", "MODELS",
                                                  "DRIFT")]
    lines = render([*columns, ("TIME", {"justify": "right", "no_wrap": True})], [cells(e) for e in entries]).splitlines()
    for e in entries:
        report = e.get("report") or {}
        notes = [f"warning: {w}" for w in report.get("warnings", [])] + \
                [f"skipped {s}" for s in report.get("skipped", [])] + ([e["error"]] if e.get("error") else [])
        for note in notes:
            lines += wrap(f"{e['host']}: {note}", width(), indent="    ")
    return lines
