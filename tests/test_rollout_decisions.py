"""How a rollout decides, in seconds: the real engine (waves, budgets per kind, the ledger, the live
lines, the metrics) with each wave's pyinfra run replaced by scripted host results. The lab tests in
test_rollout.py prove the same over real SSH for the cases that matter most."""

from __future__ import annotations

import io
import json

import pytest

from ipex_fleet.domain import Generation, HostResult, Status
from ipex_fleet.common.errors import UserError
from ipex_fleet.nix.flakepush import flake_hash
from ipex_fleet.views.live import Live
from ipex_fleet.ledger.results import run_dir, write_host_result
from ipex_fleet.fleet import engine
from ipex_fleet.ledger.runs import Ledger
from ipex_fleet.fleet import breaker
from ipex_fleet.fleet.tally import Budgets, Tally, kind_of

HOSTS = ("h1", "h2", "h3", "h4", "h5")


def result(host: str, status: Status, **extra) -> HostResult:
    return HostResult(host, "run", status, Generation(1, "/nix/store/a"), Generation(2, "/nix/store/b"),
                      Generation(2 if status.succeeded else 1, "/nix/store/b" if status.succeeded else "/nix/store/a"),
                      **extra)


def test_each_kind_is_counted_apart_and_spends_only_its_own_budget():
    results = {"h1": result("h1", Status.OK), "h2": result("h2", Status.ROLLED_BACK),
               "h3": result("h3", Status.UNREACHABLE), "h4": result("h4", Status.SKIPPED),
               "h5": result("h5", Status.OK, bench={"inconclusive_accepted": True})}
    tally = Tally.of(results)
    assert tally.counts() == {"revert-failed": 0, "rolled_back": 1, "failed": 0, "unreachable": 1, "skipped": 1,
                              "inconclusive": 1}
    assert tally.text() == "rolled_back 1 (h2), unreachable 1 (h3), skipped 1 (h4), inconclusive 1 (h5)"
    # One rolled back: --max-fail 1 allows it; two that never took the change need --max-unreachable 2.
    assert "--max-unreachable 1" in Budgets("1", "1").halts(tally, 5)
    assert Budgets("1", "2").halts(tally, 5) is None
    assert "--max-fail 0" in Budgets("0", "5").halts(tally, 5)
    assert Budgets("20%", "40%").halts(tally, 5) is None  # 1 of 5 and 2 of 5: equalled, not exceeded
    # An inconclusive host is shown, never spent; a failure in the bake counts as failed.
    assert Budgets("0", "0").halts(Tally.of({"h5": results["h5"]}), 1) is None
    baked = Tally.of({"h1": results["h1"]}, soak_failed=("h1",))
    assert baked.hosts == {"failed": ("h1",)} and Budgets("0", "9").halts(baked, 1)


def test_a_revert_that_did_not_verify_always_halts():
    tally = Tally.of({"h1": result("h1", Status.REVERT_FAILED)})
    assert "always halts" in Budgets("100%", "100%").halts(tally, 1)


def test_maintenance_does_not_count_a_host_a_deploy_holds():
    skipped = result("h1", Status.SKIPPED)
    assert kind_of(skipped, maintenance=True) is None and kind_of(skipped) == "skipped"


class ScriptedRollout(engine.Rollout):
    """The engine with each pyinfra run answered from a script: host -> status per wave run."""

    script: dict[str, Status] = {}
    runs: list[tuple[str, tuple[str, ...]]] = []
    flake_hash: str | None = None
    failing: str = "units: ollama.service failed (exit 1) at 12:00:01"

    def _pyinfra(self, deploy, hosts, run_id, label, data=None, phase=None) -> int:
        self.runs.append((deploy, hosts))
        for host in hosts:
            status = self.script.get(host, Status.OK)
            if deploy == engine.ROLLBACK_DEPLOY:
                status = Status.OK
            if deploy == engine.DECIDE_DEPLOY:
                status = {"approve": Status.OK, "abort": Status.ROLLED_BACK}[data["decision"]]
            if status is Status.UNREACHABLE:
                continue  # never connected: no result of ours, as with a real unreachable host
            health = None if status is Status.OK else {"result": "fail", "failing": [self.failing]}
            write_host_result(HostResult(host, run_id, status, Generation(1, "/nix/store/a"),
                                         Generation(2, "/nix/store/b"),
                                         Generation(2, "/nix/store/b") if status is Status.OK
                                         else Generation(1, "/nix/store/a"), health=health,
                                         flake_hash=self.flake_hash))
        return 0


@pytest.fixture
def scripted(tmp_path, monkeypatch):
    monkeypatch.setenv("IPEX_FLEET_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(ScriptedRollout, "failing", ScriptedRollout.failing)  # restored after each test
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = _: { }; }\n")
    ScriptedRollout.flake_hash = flake_hash(str(flake))
    data = f"{{'flake': {str(flake)!r}}}"
    inventory = tmp_path / "fleet.py"
    inventory.write_text(f"canary = [('h1', {data})]\nwave1 = [('h2', {data}), ('h3', {data})]\n"
                         f"wave2 = [('h4', {data}), ('h5', {data})]\n")
    deploy = tmp_path / "deploy.py"
    deploy.write_text("")

    def run(script: dict[str, Status], *, as_json: bool = False, resume: str | None = None,
            decision: str | None = None, **options) -> tuple[int, str, str, Ledger]:
        ScriptedRollout.script, ScriptedRollout.runs = script, []
        out = io.StringIO()
        ledger = Ledger()
        live = Live("json" if as_json else "plain", out)
        if resume:
            rollout, waves = ScriptedRollout.resume(resume, ledger, live, decision)
        else:
            rollout, waves = ScriptedRollout.prepare(
                engine.RolloutOptions(str(inventory), str(deploy), **options), ledger, live)
        code = rollout.execute(waves)
        return code, out.getvalue(), rollout.run_id, ledger

    return run


def test_an_unreachable_host_within_its_budget_goes_on_and_a_rolled_back_one_halts(scripted):
    code, out, run_id, ledger = scripted({"h2": Status.UNREACHABLE}, max_unreachable="1")
    assert code == 1, "a host that never took the change still makes the run end non-zero"
    assert [w["status"] for w in ledger.waves(run_id)] == ["done", "done", "done"]
    assert "wave wave1: unreachable 1 (h2)" in out
    assert json.loads(ledger.waves(run_id)[1]["tally"])["unreachable"] == 1
    assert ledger.run(run_id).status == "done_with_failures"

    code, out, run_id, ledger = scripted({"h2": Status.UNREACHABLE, "h3": Status.ROLLED_BACK}, max_unreachable="1")
    assert code == 1 and [w["status"] for w in ledger.waves(run_id)] == ["done", "halted", "planned"]
    assert "1 of 2 rolled back or failed, budget --max-fail 0: halting" in out
    assert "--max-fail 0" in ledger.run(run_id).message


def test_the_default_budgets_halt_on_an_unreachable_canary(scripted):
    code, out, run_id, ledger = scripted({"h1": Status.UNREACHABLE})
    assert code == 1 and [w["status"] for w in ledger.waves(run_id)] == ["halted", "planned", "planned"]
    assert "budget --max-unreachable 0: halting" in out


def test_revert_failed_halts_whatever_the_budgets(scripted):
    code, out, run_id, ledger = scripted({"h2": Status.REVERT_FAILED}, max_fail="100%", max_unreachable="100%")
    assert code == 1 and [w["status"] for w in ledger.waves(run_id)][:2] == ["done", "halted"]
    assert "revert-failed on h2 (always halts)" in out


def test_counts_reach_json_metrics_and_the_summary(scripted):
    code, out, run_id, ledger = scripted({"h4": Status.SKIPPED}, max_unreachable="1", as_json=True)
    docs = [json.loads(line) for line in out.splitlines()]
    tallies = [d for d in docs if d["type"] == "tally"]
    assert [t["wave"] for t in tallies] == ["canary", "wave1", "wave2"]
    assert tallies[2]["counts"]["skipped"] == 1 and tallies[2]["hosts"] == {"skipped": ["h4"]}
    summary = [d for d in docs if d["type"] == "summary"][0]
    assert summary["waves"][2]["tally"]["skipped"] == 1
    prom = (run_dir(run_id) / "rollout.prom").read_text()
    assert f'ipex_fleet_rollout_wave_hosts{{kind="skipped",run_id="{run_id}",run_kind="rollout",wave="wave2"}} 1.0' \
        in prom
    assert 'kind="rolled_back",run_id' in prom


def test_a_bad_budget_is_one_line_before_anything_runs(scripted):
    with pytest.raises(UserError, match=r"--max-unreachable 'x': give a host count"):
        scripted({}, max_unreachable="x")
    assert ScriptedRollout.runs == []


def test_the_same_failure_twice_opens_the_breaker_and_a_third_rollout_refuses_in_one_line(scripted, tmp_path):
    # Run 1: the canary fails its health check (the time in the message differs from run to run).
    code, out, first, ledger = scripted({"h1": Status.ROLLED_BACK})
    assert code == 1 and "circuit breaker" not in out
    # Run 2: the same check fails the same way on the canary again: the breaker opens.
    ScriptedRollout.failing = "units: ollama.service failed (exit 1) at 12:07:43"
    code, out, second, ledger = scripted({"h1": Status.ROLLED_BACK})
    assert code == 1 and "== circuit breaker open for flake" in out
    assert f"h1 (run {first}), h1 (run {second})" in out
    # Run 3 refuses before any host is touched, naming the hosts and runs and what to do.
    with pytest.raises(UserError) as refused:
        scripted({})
    line = str(refused.value)
    assert "\n" not in line and "'units: ollama.service failed (exit <n>) at <n>:<n>:<n>'" in line
    assert f"run {first}" in line and "ipex-fleet breaker reset" in line
    assert ScriptedRollout.runs == []
    # Reset: the flake may go out again, and earlier failures no longer count toward the next opening.
    assert ledger.reset_breakers(ScriptedRollout.flake_hash[:8]) == 1
    code, out, third, ledger = scripted({"h1": Status.ROLLED_BACK})
    assert "circuit breaker" not in out and breaker.all_open(ledger) == []


def test_the_breaker_counts_across_waves_and_ignores_what_is_not_the_flakes_fault(scripted):
    # Two hosts of wave1 fail alike within one run (budget 2): the breaker opens and halts the run.
    code, out, run_id, ledger = scripted({"h2": Status.ROLLED_BACK, "h3": Status.ROLLED_BACK}, max_fail="2")
    assert code == 1 and "the circuit breaker opened: halting" in out
    assert [w["status"] for w in ledger.waves(run_id)] == ["done", "halted", "planned"]
    ledger.reset_breakers()
    # Unreachable hosts and different checks never open it; --breaker 0 turns it off.
    code, out, _, ledger = scripted({"h2": Status.UNREACHABLE, "h3": Status.UNREACHABLE}, max_unreachable="2")
    ScriptedRollout.failing = "gpu: no device"
    code, out, _, ledger = scripted({"h2": Status.ROLLED_BACK}, max_fail="1")
    assert breaker.all_open(ledger) == []
    ScriptedRollout.failing = "gpu: no device"
    code, out, _, ledger = scripted({"h2": Status.ROLLED_BACK, "h3": Status.ROLLED_BACK}, max_fail="2",
                                    breaker_threshold=0)
    assert breaker.all_open(ledger) == [] and "circuit breaker" not in out


def test_a_signature_keeps_the_check_and_drops_the_particulars():
    a = result("h1", Status.ROLLED_BACK, health={"failing": ["ollama: model llama3 on cpu (size_vram 0 of 4200000)"]})
    b = result("h2", Status.FAILED, health={"failing": ["ollama: model llama3 on cpu (size_vram 0 of 4100000)"]})
    assert breaker.signature(a) == breaker.signature(b) == "ollama: model llama<n> on cpu (size_vram <n> of <n>)"
    c = result("h3", Status.FAILED, error="switch-to-configuration switch exited 4: /nix/store/"
                                          + "a" * 32 + "-x failed; rollback: ...")
    assert breaker.signature(c) == "step: switch-to-configuration switch exited <n>: <store path> failed"
    assert breaker.signature(result("h4", Status.UNREACHABLE)) is None


def test_an_inconclusive_canary_pauses_the_rollout_until_a_person_approves(scripted):
    code, out, run_id, ledger = scripted({"h1": Status.PAUSED})
    assert code == engine.PAUSED_EXIT and ledger.run(run_id).status == "paused"
    assert [w["status"] for w in ledger.waves(run_id)] == ["paused", "planned", "planned"]
    assert "wave canary: inconclusive 1 (h1)" in out and "paused, 1 host(s) on probation" in out
    assert f"ipex-fleet rollout --resume {run_id} --approve" in out and "--abort" in out
    assert [d for d, _ in ScriptedRollout.runs] == [ScriptedRollout.runs[0][0]], "nothing after the pause"
    with pytest.raises(UserError, match="is paused .*--approve or --abort"):
        scripted({}, resume=run_id)
    code, out, _, ledger = scripted({}, resume=run_id, decision="approve")
    assert code == 0, out
    assert ScriptedRollout.runs[0] == (engine.DECIDE_DEPLOY, ("h1",)), "only the host on probation is decided"
    assert [h for _, hosts in ScriptedRollout.runs[1:] for h in hosts] == ["h2", "h3", "h4", "h5"]
    assert [w["status"] for w in ledger.waves(run_id)] == ["done", "done", "done"]
    assert ledger.run(run_id).status == "done"


def test_abort_reverts_the_wave_and_halts(scripted):
    code, out, run_id, ledger = scripted({"h2": Status.OK, "h3": Status.PAUSED}, waves="canary,wave1,wave2")
    assert code == engine.PAUSED_EXIT and [w["status"] for w in ledger.waves(run_id)][:2] == ["done", "paused"]
    with pytest.raises(UserError, match="is paused"):
        scripted({}, resume=run_id)
    code, out, _, ledger = scripted({}, resume=run_id, decision="abort")
    assert code == 1 and "aborted on probation (h3): halting" in out
    assert ScriptedRollout.runs[0] == (engine.DECIDE_DEPLOY, ("h3",))
    assert ScriptedRollout.runs[1] == (engine.ROLLBACK_DEPLOY, ("h2",)), "the wave's changed host goes back too"
    assert ledger.run(run_id).status == "halted"
    with pytest.raises(UserError, match="halted, not paused: --approve has nothing to decide"):
        scripted({}, resume=run_id, decision="approve")


def test_a_wave_that_halts_aborts_its_hosts_on_probation_instead_of_leaving_them(scripted):
    code, out, run_id, ledger = scripted({"h2": Status.PAUSED, "h3": Status.ROLLED_BACK})
    assert code == 1 and "1 of 2 rolled back or failed" in out
    assert (engine.DECIDE_DEPLOY, ("h2",)) in ScriptedRollout.runs
    assert ledger.run(run_id).status == "halted"
