"""How a rollout decides, in seconds: the real engine (waves, budgets per kind, the ledger, the live
lines, the metrics) with each wave's pyinfra run replaced by scripted host results. The lab tests in
test_rollout.py prove the same over real SSH for the cases that matter most."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ipex_fleet.domain import Generation, HostResult, Status
from ipex_fleet.errors import UserError
from ipex_fleet.live import Live
from ipex_fleet.results import run_dir, write_host_result
from ipex_fleet.rollout import engine
from ipex_fleet.rollout.ledger import Ledger
from ipex_fleet.rollout.tally import Budgets, Tally, kind_of

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

    def _pyinfra(self, deploy, hosts, run_id, label, data=None, phase=None) -> int:
        self.runs.append((deploy, hosts))
        for host in hosts:
            status = self.script.get(host, Status.OK)
            if deploy == engine.ROLLBACK_DEPLOY:
                status = Status.OK
            if status is Status.UNREACHABLE:
                continue  # never connected: no result of ours, as with a real unreachable host
            write_host_result(HostResult(host, run_id, status, Generation(1, "/nix/store/a"),
                                         Generation(2, "/nix/store/b"),
                                         Generation(2, "/nix/store/b") if status is Status.OK
                                         else Generation(1, "/nix/store/a")))
        return 0


@pytest.fixture
def scripted(tmp_path, monkeypatch):
    monkeypatch.setenv("IPEX_FLEET_STATE", str(tmp_path / "state"))
    inventory = tmp_path / "fleet.py"
    inventory.write_text("canary = [('h1', {})]\nwave1 = [('h2', {}), ('h3', {})]\nwave2 = [('h4', {}), ('h5', {})]\n")
    deploy = tmp_path / "deploy.py"
    deploy.write_text("")

    def run(script: dict[str, Status], *, as_json: bool = False, **options) -> tuple[int, str, str, Ledger]:
        ScriptedRollout.script, ScriptedRollout.runs = script, []
        out = io.StringIO()
        ledger = Ledger()
        rollout, waves = ScriptedRollout.prepare(
            engine.RolloutOptions(str(inventory), str(deploy), **options), ledger,
            Live("json" if as_json else "plain", out))
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
