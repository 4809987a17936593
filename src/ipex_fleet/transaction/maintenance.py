"""The steps of a maintenance run (deploys/maintenance.py), one host at a time, under its lock.

Maintenance changes no deployment: it never switches, never opens an intent, never rolls back. It
takes the host's lock (waiting, bounded, for a deploy that holds it, or skipping the host with the
reason), writes a start record beside the deploys' records, does its tasks, and the end record is
the host's result. Every task is idempotent and reports what it did in `tx.report`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from pyinfra import logger

from ipex_fleet.fleet import drift
from ipex_fleet.transaction import hostagent
from ipex_fleet.domain import Generation, ProfileState, Status
from ipex_fleet.transaction.gates import _document, bench_command, run_probe, summarise
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.nix import upkeep
from ipex_fleet.fleet.retention import Anchors, RetentionPolicy, choose
from ipex_fleet.transaction.agentcalls import take_lock
from ipex_fleet.common.waiting import wait_until
from ipex_fleet.transaction.core import HostTransaction, LockRefused, StepFailed, profile_state, sh, warn

_ENTRY = re.compile(r"-(\d+)\+\d+-\d+\.conf$")  # tries used, not yet blessed
_GC_LINE = re.compile(r"(\d+) store paths deleted, ([\d.]+) MiB freed")


def task(tx: HostTransaction, name: str, **figures: Any) -> None:
    tx.report["tasks"][name] = figures


# -- the lock, and the start record -------------------------------------------------------


def look(tx: HostTransaction, host: Any) -> None:
    """The first look, under no lock: with housekeeping only, whether the host has anything to do
    (tx.fast_unchanged when not), in one round trip (_nothing_to_do)."""
    tx.phase = "maintain"
    tx.report = {"tasks": {}, "warnings": [], "skipped": []}
    tx.looked = True
    if fast_path_possible(tx, host):
        _nothing_to_do(tx, host)


def begin(tx: HostTransaction, host: Any) -> None:
    """Take the host's lock; while a deploy holds it, wait up to maintenance_lock_wait, then skip."""
    if not tx.looked:
        look(tx, host)
    if tx.fast_unchanged:
        return  # unchanged, after the look's one round trip
    started = time.monotonic()
    refused: list[LockRefused] = []

    def taken() -> bool:
        try:
            take_lock(tx, host)
            return True
        except LockRefused as exc:
            if not refused:
                host.log("a deploy holds the lock: waiting for it", logger.warning)
            refused.append(exc)
            return False

    if not wait_until(taken, tx.settings.maintenance_lock_wait, "the deploy lock", interval=2.0):
        tx.record_on_host = False  # the host's record belongs to the lock's holder meanwhile
        raise LockRefused(f"maintenance skipped after waiting {time.monotonic() - started:.0f}s "
                          f"(host data maintenance_lock_wait={tx.settings.maintenance_lock_wait:g}): "
                          f"{refused[-1]}") from None
    tx.report["lock_waited_s"] = round(time.monotonic() - started, 1)
    state = profile_state(tx, host)
    tx.previous = tx.target = state.current_generation
    sh(tx, host, nixcmd.append_deploy_record({"phase": "maintain", "event": "start", "run_id": tx.run_id,
                                            "host": tx.host, "time": time.time()}))


# -- retention and GC -----------------------------------------------------------------------


# -- nothing to do: one round trip, no lock, no record ------------------------------------------


def fast_path_possible(tx: HostTransaction, host: Any) -> bool:
    """Only housekeeping is asked for (no models to verify, no restart, no health checks, no benchmark,
    no rebaseline): whether it has anything to do can be read in one round trip."""
    s = tx.settings
    return (not s.maintenance_restart and not s.rebaseline and s.health_levels == () and not s.bench
            and not (host.data.get("models") or host.data.get("models_manifest")))


def _nothing_to_do(tx: HostTransaction, host: Any) -> bool:
    """The host is as the last maintenance run left it, and time made nothing due since: no lock or
    intent, the last line of its records is that run's successful end, the same generations, none the
    policy would delete now, no pushed flake, input root, resolved intent or activation record older
    than keep_days, records within keep_records, the journal within its bounds, GC run last time (or
    still not wanted). Then the host is `unchanged`, without the lock or a record; the temporary files
    were cleaned in the same round trip, unless maintenance cleaned them within the hour. Any doubt
    takes the full path (which cleans them again)."""
    s = tx.settings
    lines = list(sh(tx, host, upkeep.maintenance_probe(s.profile, s.keep_days)).stdout_lines)
    kv = nixcmd.parse_key_values([line for line in lines if not line.startswith(("record=", "counted=", "due="))])
    if kv.get("tmp_recent"):
        task(tx, "tmp", cleaned_within_min=upkeep.TMP_CLEAN_EVERY_MIN)
    else:
        tmp = {k: int(kv.get(k) or 0) for k in ("tmp_before_kb", "tmp_after_kb")}
        task(tx, "tmp", before_bytes=tmp["tmp_before_kb"] * 1024, after_bytes=tmp["tmp_after_kb"] * 1024)
    quiet = kv.get("agent") == hostagent.QUIET  # nothing open: the agent was not started to say so
    status = {} if quiet else hostagent.parse_status(kv.get("agent"))
    if kv.get("tmp_error") or status is None or status.get("intent") or status.get("lock") or status.get("unfinished"):
        return False
    state, anchors, extra = _parse_facts(lines)
    records = [line[len("record="):] for line in lines if line.startswith("record=")]
    try:
        last = json.loads(records[-1]) if records else None
    except ValueError:
        return False
    if not (isinstance(last, dict) and last.get("phase") == "maintain" and last.get("status") == Status.OK.value
            and not last.get("event")):
        return False
    report = last.get("report") or {}
    left = (report.get("tasks") or {}).get("retention") or {}
    kept = left.get("kept") if isinstance(left, dict) else None
    if not isinstance(kept, dict) or sorted(str(g.number) for g in state.generations) != sorted(kept):
        return False
    if choose(state, RetentionPolicy(s.keep_generations, s.keep_days), anchors, time.time()).delete:
        return False
    current = extra["flake_hash"]
    if any(line.rsplit("/", 1)[-1] != current for line in lines if line.startswith("due=")):
        return False
    if int(kv.get("records") or 0) > s.keep_records:
        return False
    if s.journal_max_days or (s.journal_max_mb and int(kv.get("journal_kb") or 0) > s.journal_max_mb * 1024):
        return False
    wants_gc = s.gc and not (s.gc_min_free_mb and extra["free_kb"] // 1024 >= s.gc_min_free_mb)
    if wants_gc and "gc" not in left:
        return False
    tx.previous = tx.target = state.current_generation
    tx.unchanged = tx.fast_unchanged = True
    tx.record_on_host = False
    tx.report["nothing_to_do"] = f"as maintenance run {last.get('run_id')} left it"
    return True


def host_facts(tx: HostTransaction, host: Any) -> tuple[ProfileState, Anchors, dict[str, Any]]:
    return _parse_facts(list(sh(tx, host, upkeep.facts(tx.settings.profile)).stdout_lines))


def _parse_facts(lines: list[str]) -> tuple[ProfileState, Anchors, dict[str, Any]]:
    state = nixcmd.parse_profile_state(lines)
    single = nixcmd.parse_key_values([line for line in lines if not line.startswith(("record=", "counted="))])
    counted = tuple(int(m.group(1)) for line in lines if line.startswith("counted=") and (m := _ENTRY.search(line)))
    intent_numbers: tuple[int, ...] = ()
    intent_paths: tuple[str, ...] = ()
    if single.get("intent"):
        try:
            intent = json.loads(single["intent"])
        except ValueError:
            intent = {}
        previous, target = Generation.from_json(intent.get("previous")), intent.get("target") or {}
        intent_numbers = (previous.number,) if previous.number is not None else ()
        intent_paths = tuple(p for p in (previous.path, target.get("path")) if p)
    last_deploy = None
    for line in lines:
        if line.startswith("record="):
            try:
                record = json.loads(line[len("record="):])
            except ValueError:
                continue
            if record.get("phase", "deploy") == "deploy" and record.get("status") in ("ok", "unchanged"):
                last_deploy = record
    rollback_target = Generation.from_json((last_deploy or {}).get("previous")).number
    anchors = Anchors(current=state.current, running_path=single.get("running") or None,
                      booted_path=single.get("booted") or None, intent=intent_numbers, intent_paths=intent_paths,
                      rollback_target=rollback_target, counted=counted)
    extra = {"free_kb": int(single.get("free_kb") or 0), "flake_hash": (last_deploy or {}).get("flake_hash")}
    return state, anchors, extra


def retention(tx: HostTransaction, host: Any) -> None:
    """First the pushed flakes (and their inputs' GC roots), resolved intents and activation records
    older than keep_days (the current flake's never) and deploys.jsonl down to keep_records lines; then
    the generations the policy lets go (never an anchor), the boot entries rewritten; then GC, which
    also collects what the pruned flakes' roots held."""
    state, anchors, extra = host_facts(tx, host)
    out = sh(tx, host, f"{upkeep.prune_pushed(tx.settings.keep_days, extra['flake_hash'])}; "
                       f"{upkeep.trim_records(tx.settings.keep_records)}")
    task(tx, "pushed", removed=[line.split("=", 1)[1] for line in out.stdout_lines if line.startswith("removed=")],
         records_trimmed=int(nixcmd.parse_key_values(list(out.stdout_lines)).get("trimmed") or 0))
    policy = RetentionPolicy(tx.settings.keep_generations, tx.settings.keep_days)
    plan = choose(state, policy, anchors, time.time())
    deleted = sh(tx, host, upkeep.delete_generations(tx.settings.profile, plan.delete), tx.settings.activation_timeout)
    if not deleted.ok:
        raise StepFailed(f"deleting generations {', '.join(map(str, plan.delete))} failed: {deleted.last_error}")
    figures: dict[str, Any] = {"generations": len(state.generations),
                               "kept": {str(n): list(why) for n, why in plan.keep.items()},
                               "deleted": list(plan.delete)}
    if not tx.settings.gc:
        tx.report["skipped"].append("gc: host data gc=false")
    elif tx.settings.gc_min_free_mb and extra["free_kb"] // 1024 >= tx.settings.gc_min_free_mb:
        tx.report["skipped"].append(f"gc: {extra['free_kb'] // 1024} MiB free, at least gc_min_free_mb="
                                    f"{tx.settings.gc_min_free_mb}")
    else:
        out = sh(tx, host, upkeep.collect_garbage(tx.settings.gc_max_freed_mb, tx.settings.store_optimise),
                 tx.settings.build_timeout)
        kv = nixcmd.parse_key_values(list(out.stdout_lines))
        m = _GC_LINE.search(kv.get("gc", ""))
        before, after = int(kv.get("free_before_kb") or 0), int(kv.get("free_after_kb") or 0)
        figures["gc"] = {"paths_deleted": int(m.group(1)) if m else None,
                         "nix_freed_bytes": int(float(m.group(2)) * 1024 * 1024) if m else None,
                         "free_before_bytes": before * 1024, "free_after_bytes": after * 1024,
                         "freed_bytes": max(after - before, 0) * 1024, "nix_said": kv.get("gc"),
                         "optimise": kv.get("optimise")}
        if m is None:
            raise StepFailed(f"nix-store --gc: {kv.get('gc') or out.last_error}")
    task(tx, "retention", **figures)


# -- journald and temporary files -------------------------------------------------------------


def vacuum(tx: HostTransaction, host: Any) -> None:
    s = tx.settings
    out = sh(tx, host, f"{upkeep.vacuum_journal(s.journal_max_mb, s.journal_max_days)}; {upkeep.clean_tmp()}")
    kv = nixcmd.parse_key_values(list(out.stdout_lines))
    kb = {k: int(kv.get(k) or 0) for k in ("journal_before_kb", "journal_after_kb", "tmp_before_kb", "tmp_after_kb")}
    for problem in ("journal_error", "tmp_error"):
        if kv.get(problem):
            warn(tx, host, f"{problem.split('_')[0]} cleaning exited {kv[problem]}")
    task(tx, "journal", before_bytes=kb["journal_before_kb"] * 1024, after_bytes=kb["journal_after_kb"] * 1024,
         disk_usage=kv.get("disk_usage"))
    task(tx, "tmp", before_bytes=kb["tmp_before_kb"] * 1024, after_bytes=kb["tmp_after_kb"] * 1024)


# -- restarts, health and drift ---------------------------------------------------------------


def restart(tx: HostTransaction, host: Any) -> None:
    """With `--restart`: restart the AI services, then a level-1 probe; a host that does not come
    back healthy fails, which halts the waves."""
    if not tx.settings.maintenance_restart:
        return  # not asked for (--restart)
    out = sh(tx, host, upkeep.restart_units(tx.settings.restart_units), tx.settings.activation_timeout)
    pairs = [line.split("=", 1) for line in out.stdout_lines if "=" in line]
    task(tx, "restarts", restarted=[u for k, u in pairs if k == "restarted"],
         absent=[u for k, u in pairs if k == "absent"], failed=[u for k, u in pairs if k == "restart_failed"])
    failed = [u for k, u in pairs if k == "restart_failed"]
    document = run_probe(tx, host, 1, None)
    tx.health = summarise(document)
    if failed or document.get("result") == "fail":
        raise StepFailed("after the restarts the host is not healthy: "
                         + "; ".join([f"{u} did not restart" for u in failed] + tx.health["failing"]))


def health_and_drift(tx: HostTransaction, host: Any) -> None:
    """Health levels 1 and 2 (a failing check fails the host), then level 3, which is the full
    benchmark against the baseline: run once, through the benchmark gate (under bench_lock), and held
    against the host's history too. Drift is a warning with its figures and trend: maintenance never
    rolls a deployment back. `--rebaseline` makes this run the baseline, only on a healthy host (the
    old one stays in the history)."""
    if tx.settings.health_levels != ():
        # --rebaseline records level 2's tokens/s baseline too (the probe records it only when healthy).
        document = run_probe(tx, host, 2, None, rebaseline=tx.settings.rebaseline)
        tx.health = {**(tx.health or {}), **summarise(document)}
        if document.get("result") == "fail":
            raise StepFailed("health checks failed: " + "; ".join(tx.health["failing"]))
    if not tx.settings.bench:
        tx.report["skipped"].append("benchmark: host data bench=false")
        return
    s = tx.settings
    out = sh(tx, host, bench_command(s, quick=s.maintenance_bench_quick, rebaseline=s.rebaseline), s.bench_timeout)
    document = _document(out, "the benchmark")
    history = [json.loads(line) for line in sh(tx, host, drift.history_command()).stdout_lines
               if line.startswith("{")]
    found = drift.assess(document, history)
    tx.bench = found.summary
    task(tx, "drift", **found.report)
    for line in found.warnings:
        warn(tx, host, line)
