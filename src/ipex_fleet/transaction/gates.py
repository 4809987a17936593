"""Transaction steps 7 and 8: the health probe and the benchmark gate, run on the host.

Both run the host's own ipex-fleet (host data `ipex_fleet_command`) and read its one JSON
document; a failing check or a slower benchmark fails the step, so the host rolls back.
"""

from __future__ import annotations

import json
from shlex import quote
from typing import Any

from pyinfra import logger

from ipex_fleet.common import junit
from ipex_fleet.transaction import hostagent
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.host.probe import failing
from ipex_fleet.remote import RemoteResult
from ipex_fleet.ledger.results import run_dir
from ipex_fleet.transaction.core import HostTransaction, StepFailed, profile_state, sh
from ipex_fleet.transaction.rollback import read_plan


def _document(result: RemoteResult, what: str) -> dict[str, Any]:
    for line in reversed(result.stdout_lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise StepFailed(f"{what} gave no JSON document (exit {result.returncode}): {result.last_error}")


def probe_command(tx: HostTransaction, level: int | str, expect_system: str | None, rebaseline: bool = False) -> str:
    s = tx.settings
    # What host data leaves unset, the host's fleet config (the flake's health policy) decides.
    parts = [s.ipex_fleet_command, "probe", "--level", str(level), "--json"]
    if s.accelerator is not None:
        parts += ["--accelerator", quote(s.accelerator)]
    if s.min_devices is not None:
        parts += ["--min-devices", str(s.min_devices)]
    if expect_system:
        parts += ["--expect-system", quote(expect_system)]
    if s.smoke_model:
        parts += ["--smoke-model", quote(s.smoke_model)]
    if s.metrics_dir:
        parts += ["--textfile", quote(f"{s.metrics_dir}/ipex_fleet_probe.prom")]
    parts += _gate_options(s)  # level 2's tokens/s gate is judged as the benchmark is
    if rebaseline:
        parts.append("--rebaseline")
    return " ".join(parts)


def tokens_gate(document: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Level 2's tokens/s gate (the ollama_generate check's `gate`), and the check's message."""
    check = next((c for c in document.get("checks", []) if c.get("name") == "ollama_generate"), None)
    gate = ((check or {}).get("data") or {}).get("gate")
    return (gate if isinstance(gate, dict) else None), (check or {}).get("message", "")


def summarise(document: dict[str, Any]) -> dict[str, Any]:
    checks = document.get("checks", [])
    out = {
        "result": document.get("result"),
        "level": document.get("level"),
        "duration_s": document.get("duration_s"),
        "failing": failing(document),
        "checks": {c["name"]: c["result"] for c in checks},
    }
    gate, _ = tokens_gate(document)
    if gate is not None:
        out["tokens"] = gate
    return out


def write_junit(tx: HostTransaction, document: dict[str, Any]) -> None:
    """The health checks as JUnit XML beside the run's results, for CI systems that gate on them."""
    try:
        junit.write(run_dir(tx.run_id) / "junit" / f"{tx.host}.xml", [junit.probe_suite(document, tx.host)])
    except OSError as exc:  # a report must never fail the deploy
        logger.warning(f"[{tx.host}] could not write the JUnit report: {exc}")


def run_probe(tx: HostTransaction, host: Any, level: int | str, expect_system: str | None,
              timeout: float | None = None, rebaseline: bool = False) -> dict[str, Any]:
    """The probe's document; within `timeout` (host data health_timeout unless given)."""
    out = sh(tx, host, probe_command(tx, level, expect_system, rebaseline), timeout or tx.settings.health_timeout)
    return _document(out, "the probe")


def health(tx: HostTransaction, host: Any) -> None:
    """Step 7: health levels from host data, else the host's fleet config (default 1 and 2)."""
    levels = tx.settings.health_levels
    if levels == ():
        return
    level = "config" if levels is None else max(levels)
    document = run_probe(tx, host, level, tx.target.path, tx.step_timeout)
    tx.health = {**(tx.health or {}), **summarise(document)}  # keeps the models report
    write_junit(tx, document)
    if document.get("result") == "fail":
        raise StepFailed("health checks failed: " + "; ".join(tx.health["failing"]))
    gate, message = tokens_gate(document)
    unsure = gate is not None and gate.get("result") == "inconclusive"
    if unsure:  # an Ollama model's tokens/s the gate could not judge: as an inconclusive benchmark
        inconclusive(tx, host, "Ollama tokens/s gate", f"ollama_generate: {message}", tx.health["tokens"])
    warned = [f"{c['name']}: {c.get('message')}" for c in document.get("checks", [])
              if c.get("result") == "warn" and not (unsure and c.get("name") == "ollama_generate")]
    if warned and tx.settings.health_warn == "pause":  # the commit step keeps the host on probation
        _on_probation(tx, host, "health checks warned: " + "; ".join(warned))


def _on_probation(tx: HostTransaction, host: Any, why: str) -> None:
    tx.probation = f"{tx.probation}; {why}" if tx.probation else why
    host.log(f"warning: {why}; the host waits on probation for a decision", logger.warning)


def _gate_options(s: Any) -> list[str]:
    """What the benchmark and level 2's tokens/s gate share: the tolerance, and the lock that hosts
    sharing one machine measure under."""
    parts = ["--tolerance", f"{s.bench_tolerance:g}"] if s.bench_tolerance is not None else []
    return parts + (["--lock", quote(s.bench_lock)] if s.bench_lock else [])


def bench_command(s: Any, quick: bool = True, rebaseline: bool = False) -> str:
    """The host's benchmark against its baseline (or, rebaselining, as its new baseline)."""
    parts = [s.ipex_fleet_command, "bench", "--json", "--rebaseline" if rebaseline else "--gate"]
    if quick:
        parts.append("--quick")
    if s.metrics_dir:
        parts += ["--textfile", quote(f"{s.metrics_dir}/ipex_fleet_bench.prom")]
    parts += _gate_options(s)
    if s.bench_threads:
        parts += ["--threads", str(s.bench_threads)]
    return " ".join(parts)


def bench_summary(document: dict[str, Any]) -> dict[str, Any]:
    """What a result keeps of a benchmark run: the verdict and its confidence, each value, the
    comparisons that did not pass, and the device's other users."""
    gate = document.get("gate", {})
    shared = (gate.get("occupants") or {}).get("processes") or []
    return {
        "result": gate.get("result"),
        "confidence": gate.get("confidence"),
        "baseline_recorded": gate.get("baseline_recorded"),
        "tolerance": gate.get("tolerance"),
        "alpha": gate.get("alpha"),
        "device": document.get("device", {}).get("name"),
        "duration_s": document.get("duration_s"),
        "schema": document.get("schema"),
        "results": {r["name"]: {"value": r["value"], "unit": r["unit"], "cv": r["cv"], "samples": r.get("runs")}
                    for r in document["results"]},
        "comparisons": [{k: v for k, v in c.items() if k != "baseline_runs"}
                        for c in gate.get("comparisons", []) if c["verdict"] != "pass"],
        "retest": gate.get("retest"),
        "shared_with": [{k: p.get(k) for k in ("pid", "name", "memory_mib", "cpu") if p.get(k) is not None}
                        for p in shared],
        "shared": gate.get("shared"),
        "cpu_pressure": (gate.get("occupants") or {}).get("pressure"),
        "warnings": gate.get("warnings") or [],
    }


def bench_gate(tx: HostTransaction, host: Any) -> None:
    """Step 8: the quick benchmark against the host's baseline (recorded at its first run, several runs).

    `fail` fails the step; `pass` passes; `inconclusive` follows host data bench_inconclusive (fail, the
    default, warn, or pause: probation until a person decides). The error names the slow cases with
    their figures and the device's other users.
    """
    s = tx.settings
    if not s.bench:
        return
    document = _document(sh(tx, host, bench_command(s), tx.step_timeout), "the benchmark")
    tx.bench = bench_summary(document)
    for warning in tx.bench["warnings"]:  # a doubtful new baseline: say so, it judges every later deploy
        host.log(f"warning: benchmark: {warning}", logger.warning)
    verdict = tx.bench["result"]
    if verdict not in ("fail", "inconclusive"):
        return
    slow = [f"{c['name']}: {c['message']}" for c in tx.bench["comparisons"] if c["verdict"] == verdict]
    why = "; ".join(slow + ([tx.bench["shared"]] if tx.bench.get("shared") else []))
    if verdict == "fail":
        raise StepFailed("benchmark gate failed: " + why)
    inconclusive(tx, host, "benchmark gate", why, tx.bench)


def inconclusive(tx: HostTransaction, host: Any, what: str, why: str, record: dict[str, Any]) -> None:
    """An inconclusive gate (the benchmark's, or level 2's tokens/s) follows host data bench_inconclusive:
    fail the step, keep the host on probation (pause), or pass with a warning (warn, noted in `record`)."""
    policy = tx.settings.bench_inconclusive
    if policy == "fail":
        raise StepFailed(f"{what} inconclusive (host data bench_inconclusive=fail): {why}")
    if policy == "pause":  # the commit step keeps the host on probation instead
        _on_probation(tx, host, f"{what} inconclusive: {why}")
        return
    record["inconclusive_accepted"] = True
    host.log(f"warning: {what} inconclusive, passed as bench_inconclusive=warn: {why}", logger.warning)


def recheck_after_rollback(tx: HostTransaction, host: Any) -> None:
    """Probe the generation the host went back to, and keep the answer in the result."""
    if tx.settings.health_levels == ():
        return
    try:
        document = run_probe(tx, host, 1, tx.previous.path)
    except Exception as exc:  # the result must still be written
        after = {"result": "unknown", "error": str(exc)}
    else:
        after = summarise(document)
    tx.health = {**(tx.health or {}), "after_rollback": after}


def verify_promoted(tx: HostTransaction, host: Any) -> None:
    """Soak check: still on the generation the rollout left it on, and healthy (probe level 1)."""

    tx.phase, tx.record_on_host = "check", False
    expected = read_plan(host.data, "expect_plan", host.name) or {}
    observe(tx, host)
    if expected.get("path") and tx.previous.path != expected["path"]:
        raise StepFailed(f"on generation {tx.previous.number} ({tx.previous.path}), not the rolled-out "
                         f"{expected.get('generation')}")
    document = run_probe(tx, host, 1, expected.get("path"))
    tx.health = summarise(document)
    if document.get("result") == "fail":
        raise StepFailed("health checks failed: " + "; ".join(tx.health["failing"]))


def observe(tx: HostTransaction, host: Any) -> None:
    """Read the host's current generation into the result (for status and checks)."""

    if tx.phase == "deploy":
        tx.phase = "status"
    tx.record_on_host = False
    if str(host.data.get("status_live") or "").lower() in ("true", "1", "yes"):
        observe_live(tx, host)
        return
    state = profile_state(tx, host)
    tx.previous = tx.target = state.current_generation
    tx.unchanged = True


LIVE_RECORDS = 50  # the host's last deploy records read by `status --live`


def observe_live(tx: HostTransaction, host: Any) -> None:
    """`status --live`: what the host itself knows, in one round trip: its generation, running system,
    last deploy records (whichever controller wrote them) and the agent's view of its lock and intent."""

    command = "; ".join((nixcmd.profile_state(tx.settings.profile), "echo @@running", nixcmd.running_system(),
                         "echo @@records", nixcmd.last_deploy_records(LIVE_RECORDS), "echo @@agent",
                         hostagent.status_or_missing()))
    sections: dict[str, list[str]] = {"profile": []}
    current = "profile"
    for line in sh(tx, host, command).stdout_lines:
        if line.startswith("@@"):
            current = line[2:]
            sections[current] = []
        else:
            sections[current].append(line)
    state = nixcmd.parse_profile_state(sections["profile"])
    tx.previous = tx.target = state.current_generation
    tx.unchanged = True
    records = []
    for line in sections.get("records", []):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: the others still count
        if isinstance(record, dict):
            records.append({k: record.get(k) for k in ("run_id", "phase", "status", "previous", "final", "error",
                                                        "flake_hash")})
    agent_line = next((line for line in sections.get("agent", []) if line.startswith("agent=")), "agent=missing")
    agent = hostagent.parse_status(agent_line.split("=", 1)[1]) or {}
    tx.report = {"running": (sections.get("running") or [""])[0], "records": records,
                 "intent": _open_part(agent.get("intent")), "lock": _open_part(agent.get("lock"))}


def _open_part(entry: Any) -> dict[str, Any] | None:
    """An open intent or a held lock, without its fencing token (never shown, never stored)."""
    if not isinstance(entry, dict):
        return None
    owner = entry.get("owner") if isinstance(entry.get("owner"), dict) else {}
    return {"run_id": entry.get("run_id") or owner.get("run_id"), "controller": owner.get("controller"),
            "left": entry.get("left"), "phase": entry.get("phase")}
