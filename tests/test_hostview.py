"""status --live's reconciliation of a host's own records with this controller's ledger."""

from __future__ import annotations

from ipex_fleet.domain import Generation, HostResult, Status
from ipex_fleet.fleet import hostview
from ipex_fleet.ledger.runs import Ledger


def record(run_id: str, status: str = "ok", generation: int = 2, phase: str = "deploy") -> dict:
    return {"run_id": run_id, "phase": phase, "status": status, "previous": {"generation": generation - 1},
            "final": {"generation": generation, "path": f"/nix/store/g{generation}"}}


def test_a_host_and_a_ledger_agree_disagree_or_do_not_know(tmp_path, monkeypatch):
    monkeypatch.setenv("IPEX_FLEET_STATE", str(tmp_path))
    ledger = Ledger()
    ledger.start_run("r1", "rollout", None, None, {})
    ledger.record(HostResult("h1", "r1", Status.OK, Generation(1, "/a"), Generation(2, "/nix/store/g2"),
                             Generation(2, "/nix/store/g2")))
    last = ledger.last("h1")
    report = {"records": [record("r1")], "intent": None, "lock": None}
    assert hostview.reconcile("h1", report, last, ledger)["agree"] is True
    # Another controller deployed since: the host knows r2, this ledger does not.
    report["records"].append(record("r2", generation=3))
    seen = hostview.reconcile("h1", report, last, ledger)
    assert seen["agree"] is False and "run r2 (deploy: ok, generation 3) was made by another controller" \
        in seen["disagreement"]
    assert seen["host_says"] == "ok gen 3 run r2" and seen["ledger_says"] == "ok gen 2 run r1"
    # The same run, told differently (h2's row in r1 is not h1's).
    report = {"records": [record("r1", status="rolled_back", generation=1)],
              "intent": {"run_id": "r9", "phase": "confirmed", "left": 12.4},
              "lock": {"run_id": "r9", "controller": "ci", "left": 20}}
    seen = hostview.reconcile("h1", report, last, ledger)
    assert seen["agree"] is False and "the host recorded rolled_back on generation 1, this ledger ok on 2" \
        in seen["disagreement"]
    assert seen["open"] == "intent of run r9 (confirmed, 12s left); lock of run r9 (ci, 20s left)"
    # Unreachable: nothing to compare.
    assert hostview.reconcile("h1", None, last, ledger)["agree"] is None


def test_rollback_to_a_run_only_the_hosts_remember():
    reports = {"h1": {"records": [record("r1"), record("r2", generation=3)]},
               "h2": {"records": [record("r2", status="rolled_back", generation=1)]}, "h3": None}
    assert hostview.final_generations_from_hosts("r2", reports) == {"h1": (3, "/nix/store/g3")}
