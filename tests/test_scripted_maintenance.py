"""Maintenance's real steps against a scripted host, for every command it sends and every way that
command can end: the host is never switched, never rolled back and never given an intent; its
current, running and booted generations and the last deploy's rollback target always survive; and
its lock is released, or (the controller died) held under a lease that a later run takes over."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest

from ipex_fleet.ledger import results
from ipex_fleet.transaction import maintenance as maintsteps
from ipex_fleet.transaction import flow
from ipex_fleet.domain import Status

from .scripted_host import ControllerDied, Fault, ScriptedHost, scripted_controller
from .test_scripted_transaction import MODEL

STEPS = flow.MAINTENANCE
# Every command a maintenance run sends, in order (the start record is the first `record`).
POINTS = [("lock", 1), ("profile_state", 1), ("record", 1), ("upkeep_facts", 1), ("prune_pushed", 1),
          ("delete_generations", 1), ("gc", 1), ("vacuum", 1), ("models", 1),
          ("restart", 1), ("probe", 1), ("probe", 2), ("bench", 1), ("history", 1), ("record", 2)]  # the release rides on the last record
HOWS = ("fail", "timeout", "drop", "die", "die_after")
GENS = {n: f"/nix/store/{n}{n}{n}-nixos-system-{n}" for n in range(1, 7)}


@pytest.fixture
def maintain(tmp_path, monkeypatch):
    flake, _clock = scripted_controller(tmp_path, monkeypatch, maintsteps)
    runs = itertools.count()

    def run(host: ScriptedHost) -> tuple[str, bool]:
        run_id = f"maint-{next(runs)}"
        monkeypatch.setenv("IPEX_FLEET_RUN_ID", run_id)
        host.state = SimpleNamespace()
        try:  # as roles/maintenance.py: the look at prepare time settles a host with nothing to do
            if not flow.settled_at_prepare(None, host):
                for step in STEPS:
                    if not flow.run_step(None, host, step):
                        break
        except ControllerDied:
            return run_id, False
        return run_id, True

    def make(**data) -> ScriptedHost:
        host = ScriptedHost("h1", {"flake": str(flake), "models": [MODEL], "command_timeout": 5, "health_levels": [2],
                                   "keep_generations": 1, "keep_days": 0, "maintenance_restart": True, **data},
                            generations=dict(GENS), current=6, running=GENS[6])
        host.booted = GENS[2]
        host.records = [{"run_id": "deploy-1", "phase": "deploy", "status": "ok",
                         "previous": {"generation": 4, "path": GENS[4]}, "final": {"generation": 6, "path": GENS[6]}}]
        return host

    return run, make


def test_a_maintenance_run_keeps_the_anchors_and_records_start_and_end(maintain):
    run, make = maintain
    host = make()
    run_id, alive = run(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.OK, result
    assert sorted(host.generations) == [2, 4, 6]  # booted, the rollback target, current (and last 1)
    kept = result.report["tasks"]["retention"]["kept"]
    assert kept == {"2": ["booted"], "4": ["the last deploy's rollback target"], "6": ["last 1", "current", "running"]}
    assert result.report["tasks"]["retention"]["gc"]["nix_freed_bytes"] == 1 << 20
    assert [(r.get("phase"), r.get("event") or r.get("status")) for r in host.records[1:]] == \
        [("maintain", "start"), ("maintain", "ok")]
    assert host.lock is None and host.intent is None and not host.resolved and not host.watchdogs


def test_an_open_intent_keeps_its_generations(maintain):
    run, make = maintain
    host = make()
    host.inject_intent("dead", {"generation": 3, "path": GENS[3]}, {"path": GENS[5]})
    run_id, alive = run(host)
    assert alive and results.read_host_result(run_id, "h1").status is Status.OK
    assert sorted(host.generations) == [2, 3, 4, 5, 6]
    assert host.intent is not None and host.intent["run_id"] == "dead"  # left for recovery, untouched


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind,nth", POINTS)
def test_every_command_and_every_ending_leaves_the_deployment_alone(maintain, kind, nth, how):
    run, make = maintain
    host = make()
    host.fault = Fault(kind, nth, how)
    run_id, alive = run(host)
    assert host.seen.get(kind, 0) >= nth, f"the fault at {kind} #{nth} never fired: {host.kinds}"
    # Never switched, rolled back or journaled; the anchors are all there.
    assert host.current == 6 and host.running == GENS[6] and {2, 4, 6} <= set(host.generations)
    assert host.intent is None and not host.resolved and not host.watchdogs
    assert "open_intent" not in host.kinds and "activate" not in host.kinds and "switch_generation" not in host.kinds
    result = results.read_host_result(run_id, "h1")
    if alive:
        assert result is not None and result.status is not Status.ROLLED_BACK
        if host.dropped and kind == "record" and nth == 2:  # the work was done: it stands, unrecorded there
            assert result.status is Status.OK and "not recorded on the host" in result.error, result
        elif host.dropped:
            assert result.status is Status.UNREACHABLE
        elif host.lock is None:
            assert result.status in (Status.OK, Status.FAILED), result
    if host.lock is not None:
        # Only a run that could not finish (it died, or lost the host while recording) leaves its
        # lock, under its lease: the next run takes it over once the lease ran out.
        assert host.lock["run_id"] == run_id, host.kinds
        assert not alive or kind in ("record", "release") or result.status is Status.UNREACHABLE, (result, host.kinds)
        host.host_clock.t += 10_000  # the lease runs out by the host's clock
        host.fault, host.dropped = None, False
        again, survived = run(host)
        assert survived and results.read_host_result(again, "h1").status is Status.OK
        assert host.lock is None


@pytest.mark.parametrize("how", HOWS)
def test_a_look_at_prepare_time_that_ends_badly_fails_the_host_and_holds_nothing(maintain, how):
    """Housekeeping only: the look runs while pyinfra prepares the run. Whatever way its one command
    ends, the host holds no lock and no intent and keeps its generations: an answer in doubt takes the
    full path; a look that failed has finished the host (unreachable or failed), and the operations
    report that, running nothing."""
    run, make = maintain
    host = make(models=[], health_levels=[], bench=False, maintenance_restart=False, keep_days=14)
    assert run(host)[1]
    records, seen = list(host.records), len(host.kinds)
    host.fault = Fault("maint_probe", host.seen["maint_probe"] + 1, how)
    run_id, alive = run(host)
    if how == "fail":  # an answer that says nothing sure is a doubt: the full path, under the lock
        result = results.read_host_result(run_id, "h1")
        assert alive and result.status is Status.OK and "lock" in host.kinds[seen:] and host.lock is None, result
        return
    # Nothing after the look but, where the host still answers, the failure's line in its records.
    answered = how == "timeout"
    assert host.kinds[seen:] == ["maint_probe", *(["record"] if answered else [])], host.kinds[seen:]
    assert host.lock is None and host.intent is None and host.current == 6
    assert host.records[:len(records)] == records and len(host.records) == len(records) + answered
    result = results.read_host_result(run_id, "h1")
    if alive:
        expected = Status.UNREACHABLE if host.dropped else Status.FAILED
        assert result is not None and result.status is expected, result
    host.fault, host.dropped = None, False
    run_id, alive = run(host)  # the next run: the full path after a failure on record, else nothing to do
    assert alive and results.read_host_result(run_id, "h1").status is (Status.OK if answered else Status.UNCHANGED)


def test_a_pinned_model_whose_digest_drifted_is_a_warning_in_the_report(maintain):
    run, make = maintain
    host = make()
    drift = "ollama/llama3.2:1b: /api/tags has digest bbbbbbbbbbbb, declared aaaaaaaaaaaa"
    host.do_models = lambda _c: (0, [json.dumps({"installed": ["ollama/llama3.2:1b"], "present": [], "pruned": [],
                                                 "failed": [], "drifted": [drift], "bytes_downloaded": 0,
                                                 "bytes_hashed": 0})])
    run_id, alive = run(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.OK, result
    assert result.report["models"]["drifted"] == [drift]
    assert f"model digest drifted: {drift}" in result.report["warnings"]


def test_nothing_to_do_is_one_round_trip_without_the_lock_or_a_record(maintain):
    """Housekeeping only (no models, restart, health or benchmark): a host as the last maintenance left it
    is `unchanged` after one round trip; anything since (a new generation, a held lock, something aged
    past keep_days, an interrupted run) takes the full path."""
    run, make = maintain
    host = make(models=[], health_levels=[], bench=False, maintenance_restart=False, keep_days=14)
    run_id, alive = run(host)
    assert alive and results.read_host_result(run_id, "h1").status is Status.OK
    records, seen, starts = list(host.records), len(host.kinds), host.agent_starts
    run_id, alive = run(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.UNCHANGED and "nothing_to_do" in result.report, result
    assert host.kinds[seen:] == ["maint_probe"] and host.records == records and host.lock is None
    assert host.agent_starts == starts  # nothing open: the agent was not even started
    assert result.report["tasks"]["tmp"] == {"before_bytes": 8192, "after_bytes": 4096}
    host.tmp_recent = True  # maintenance cleaned them within the hour: not again, and the report says so
    run_id, _ = run(host)
    result = results.read_host_result(run_id, "h1")
    assert result.status is Status.UNCHANGED and result.report["tasks"]["tmp"] == {"cleaned_within_min": 60}
    host.tmp_recent = False

    host.due = ["/var/lib/ipex-fleet/flake/0ld"]  # aged past keep_days: the full path prunes it
    run_id, _ = run(host)
    assert results.read_host_result(run_id, "h1").status is Status.OK and "lock" in host.kinds[seen + 1:]
    host.due = []

    host.generations[7] = GENS[6].replace("6", "7")  # a deploy by hand since: full path
    host.current, host.running = 7, host.generations[7]
    seen = len(host.kinds)
    run_id, _ = run(host)
    assert results.read_host_result(run_id, "h1").status is Status.OK and "gc" in host.kinds[seen:]
    seen = len(host.kinds)
    run_id, _ = run(host)
    assert results.read_host_result(run_id, "h1").status is Status.UNCHANGED and host.kinds[seen:] == ["maint_probe"]

    host.agent.lock_take({"run_id": "a-deploy"}, 600, 600)  # a deploy holds the lock: the agent is asked, the host skipped
    seen = len(host.kinds)
    run_id, _ = run(host)
    assert results.read_host_result(run_id, "h1").status is Status.SKIPPED and "lock" in host.kinds[seen:]
    host.agent.lock_release(host.agent._lock()["token"])

    host.records.append({"phase": "maintain", "event": "start", "run_id": "dead"})  # a run that never ended
    seen = len(host.kinds)
    run_id, _ = run(host)
    assert results.read_host_result(run_id, "h1").status is Status.OK and "gc" in host.kinds[seen:]


def test_nothing_to_do_needs_housekeeping_only(maintain):
    run, make = maintain
    host = make(models=[], health_levels=[1], bench=False, maintenance_restart=False, keep_days=14)
    run(host)
    seen = len(host.kinds)
    run_id, _ = run(host)
    assert results.read_host_result(run_id, "h1").status is Status.OK and "maint_probe" not in host.kinds[seen:]



def test_an_error_at_prepare_time_never_escapes_to_end_pyinfras_run(maintain, monkeypatch):
    """At prepare time an exception would end pyinfra's run for every host: the look's is logged and
    the host is left to its operations (here the ledger is locked while the result is recorded)."""
    import sqlite3

    run, make = maintain
    host = make(models=[], health_levels=[], bench=False, maintenance_restart=False, keep_days=14)
    assert run(host)[1]

    def locked(*_args, **_kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(flow, "_ledger_record", locked)
    monkeypatch.setenv("IPEX_FLEET_RUN_ID", "maint-prepare-error")
    host.state = SimpleNamespace()
    assert flow.settled_at_prepare(None, host) is False
    assert any("look at prepare time: OperationalError: database is locked" in line for line in host.logs)
    result = results.read_host_result("maint-prepare-error", "h1")  # the result file says why
    assert result.status is Status.FAILED and "database is locked" in result.error, result
    assert host.lock is None and host.intent is None and host.current == 6
    # Its operations then report that result: the host fails in pyinfra, and nothing more runs there.
    seen = len(host.kinds)
    assert flow.run_step(None, host, STEPS[0]) is False and host.kinds[seen:] == []
