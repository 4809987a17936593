"""Staged rollouts on a 6-host lab: waves, budgets, revert, resume, ledger, rollback --to."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import BIN, REPO, destroy_checked, make_fleet, wait_for, assert_ok


HOSTS = [f"host{i}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def fleet(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 6, tmp_path_factory)
    yield fleet
    destroy_checked(fleet.lab)


@pytest.fixture
def inventory(fleet, tmp_path) -> Path:
    """The lab's hosts in waves canary (1), wave1 (2), wave2 (3); health level 1, no bench (speed)."""
    path = tmp_path / "fleet.py"
    path.write_text(
        "from ipex_fleet.lab.inventory import lab_hosts\n"
        f"_all = [(n, {{**d, 'health_levels': [1], 'bench': False, 'min_free_mb': 64, 'command_timeout': 20,"
        f" 'activation_timeout': 60, 'lease_grace': 5}}) for n, d in lab_hosts({str(fleet.lab.layout.root)!r})]\n"
        "canary = _all[:1]\nwave1 = _all[1:3]\nwave2 = _all[3:6]\n")
    return path


pytestmark = pytest.mark.usefixtures("healthy")


def bump_all(fleet) -> None:
    version = f"v{time.monotonic_ns()}"
    for h in HOSTS:
        fleet.configure(h, f"version={version}")


def rollout(fleet, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ipex-fleet"), "rollout", *args], cwd=REPO, env=fleet.env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def run_id_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.split("rollout ", 1)[1].split(":", 1)[0]


def ledger(fleet) -> sqlite3.Connection:
    db = sqlite3.connect(fleet.state / "ledger.sqlite3")
    db.row_factory = sqlite3.Row
    return db


def deploy_lines(fleet, host: str) -> int:
    return int(fleet.sh(host, "cat /var/lib/ipex-fleet/deploys.jsonl 2>/dev/null | wc -l"))


def test_healthy_change_promotes_through_every_wave(fleet, inventory):
    before = {h: fleet.system(h) for h in HOSTS}
    bump_all(fleet)
    proc = rollout(fleet, str(inventory), "deploys/prod.py")
    assert_ok(proc)
    assert proc.stdout.index("wave 1 canary") < proc.stdout.index("wave 2 wave1") < proc.stdout.index("wave 3 wave2")
    run_id = run_id_of(proc)
    rows = {r["host"]: r for r in ledger(fleet).execute(
        "SELECT * FROM host_results WHERE run_id=? AND phase='deploy'", (run_id,))}
    assert set(rows) == set(HOSTS)
    for h in HOSTS:
        gen, path, _ = fleet.system(h)
        assert gen == before[h][0] + 1
        assert rows[h]["status"] == "ok"
        assert (rows[h]["previous_generation"], rows[h]["previous_path"]) == (before[h][0], before[h][1])
        assert (rows[h]["final_generation"], rows[h]["final_path"]) == (gen, path)
    waves = [w["status"] for w in ledger(fleet).execute("SELECT status FROM waves WHERE run_id=? ORDER BY idx", (run_id,))]
    assert waves == ["done", "done", "done"]
    assert "rollout " + run_id + ": done" in proc.stdout


def test_broken_canary_is_rolled_back_and_nothing_else_is_touched(fleet, inventory):
    rollout(fleet, str(inventory), "deploys/prod.py")
    before = {h: fleet.system(h) for h in HOSTS}
    lines = {h: deploy_lines(fleet, h) for h in HOSTS}
    bump_all(fleet)
    fleet.configure("host1", "hide_accelerator=true")
    proc = rollout(fleet, str(inventory), "deploys/prod.py")
    assert proc.returncode != 0
    assert "halting" in proc.stdout and "wave 2" not in proc.stdout.split("halting")[0].split("==")[-1]
    assert fleet.system("host1") == before["host1"]
    for h in HOSTS[1:]:
        assert fleet.system(h) == before[h]
        assert deploy_lines(fleet, h) == lines[h], f"{h} was touched"


def test_wave_over_budget_reverts_its_changed_hosts_and_stops(fleet, inventory):
    rollout(fleet, str(inventory), "deploys/prod.py")
    before = {h: fleet.system(h) for h in HOSTS}
    bump_all(fleet)
    fleet.configure("host2", "fail_service=ollama")
    fleet.configure("host3", "fail_activation=true")
    proc = rollout(fleet, str(inventory), "deploys/prod.py", "--waves", "1,3,2", "--max-fail", "1")
    assert proc.returncode != 0, proc.stdout
    # batch2 (host2-4): 2 failed > 1; host4 changed, so it is rolled back; batch3 never starts.
    for h in ("host2", "host3", "host4"):
        assert fleet.system(h) == before[h], h
    assert fleet.system("host1")[0] == before["host1"][0] + 1, "the canary stays promoted (scope wave)"
    for h in ("host5", "host6"):
        assert fleet.system(h) == before[h]
    run_id = run_id_of(proc)
    rb = {r["host"]: r["status"] for r in ledger(fleet).execute(
        "SELECT * FROM host_results WHERE run_id=? AND phase='rollback'", (run_id,))}
    assert rb == {"host4": "ok"}


def test_rollback_scope_all_reverts_earlier_waves_too(fleet, inventory):
    rollout(fleet, str(inventory), "deploys/prod.py")
    before = {h: fleet.system(h) for h in HOSTS}
    bump_all(fleet)
    fleet.configure("host2", "fail_service=comfyui")
    fleet.configure("host3", "fail_activation=true")
    proc = rollout(fleet, str(inventory), "deploys/prod.py", "--waves", "1,3,2", "--max-fail", "1",
                   "--rollback-scope", "all")
    assert proc.returncode != 0
    for h in HOSTS:
        assert fleet.system(h) == before[h], h


def test_killed_controller_resumes_without_redeploying_done_hosts(fleet, inventory):
    rollout(fleet, str(inventory), "deploys/prod.py")
    bump_all(fleet)
    argv = [str(BIN / "ipex-fleet"), "rollout", str(inventory), "deploys/prod.py", "--waves", "1,2,3"]
    proc = subprocess.Popen(argv, cwd=REPO, env=fleet.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # Kill it (SIGKILL) once wave 2 is under way: host2 holds the deploy lock.
    lock = fleet.host_path("host2", "/var/lib/ipex-fleet/lock")
    try:
        assert wait_for(lock.exists, timeout=120)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    run_id = next(r["run_id"] for r in ledger(fleet).execute(
        "SELECT run_id FROM runs WHERE kind='rollout' ORDER BY started DESC LIMIT 1"))
    assert ledger(fleet).execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()[0] == "running"
    done = {h: (fleet.system(h), deploy_lines(fleet, h)) for h in ("host1",)}
    time.sleep(1)  # the killed wave's pyinfra child dies with its parent
    resumed = rollout(fleet, "--resume", run_id)
    assert_ok(resumed)
    assert "done before, skipped" in resumed.stdout
    for h, (system, lines) in done.items():
        assert fleet.system(h) == system and deploy_lines(fleet, h) == lines, f"{h} was deployed again"
    rows = {r["host"]: r["status"] for r in ledger(fleet).execute(
        "SELECT host, status FROM host_results WHERE run_id=? AND phase='deploy'", (run_id,))}
    assert set(rows) == set(HOSTS) and all(s in ("ok", "unchanged") for s in rows.values()), rows


def test_a_rollout_killed_twice_at_the_same_wave_resolves_each_intent_once(fleet, inventory):
    """Killed while host2's intent is open, resumed, killed again at the same wave, resumed: each of
    host2's intents is decided exactly once, by its own id (the dead attempts' by the host itself),
    one of them committed, and the rollout ends with every host deployed."""
    bump_all(fleet)
    intent = fleet.host_path("host2", "/var/lib/ipex-fleet/intent.json")

    def killed_when_open(args: list[str], not_this: str | None = None) -> str:
        proc = subprocess.Popen([str(BIN / "ipex-fleet"), "rollout", *args], cwd=REPO, env=fleet.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def opened() -> str | None:
            try:
                found = json.loads(intent.read_text())["intent_id"]
            except (OSError, ValueError, KeyError):
                return None
            return found if found != not_this else None

        try:
            assert wait_for(lambda: opened() is not None, 180, 0.05), "host2's intent never opened"
            return str(opened())
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    first = killed_when_open([str(inventory), "deploys/prod.py", "--waves", "1,2,3"])
    run_id = next(r["run_id"] for r in ledger(fleet).execute(
        "SELECT run_id FROM runs WHERE kind='rollout' ORDER BY started DESC LIMIT 1"))
    time.sleep(1)  # the killed wave's pyinfra child dies with its parent
    second = killed_when_open(["--resume", run_id], not_this=first)
    time.sleep(1)
    resumed = rollout(fleet, "--resume", run_id)
    assert_ok(resumed)
    claims = [json.loads(line) for line in fleet.sh("host2", "cat /var/lib/ipex-fleet/resolved/*.json").splitlines()]
    mine = [c for c in claims if c["run_id"] == run_id]
    ids = [c["intent_id"] for c in mine]
    assert len(ids) == len(set(ids)) >= 3 and {first, second} <= set(ids), ids
    committed = [c for c in mine if c.get("claimed", {}).get("by") == "committed"]
    assert len(committed) == 1, mine
    for c in mine:
        if c is not committed[0]:
            assert c["claimed"]["by"] in ("watchdog", "recovery") and c["outcome"] == "reverted", c
    assert fleet.system("host2")[2] == committed[0]["target"]["path"]
    rows = {r["host"]: r["status"] for r in ledger(fleet).execute(
        "SELECT host, status FROM host_results WHERE run_id=? AND phase='deploy'", (run_id,))}
    assert set(rows) == set(HOSTS) and all(s in ("ok", "unchanged") for s in rows.values()), rows


def test_rollback_to_restores_an_earlier_run(fleet, inventory):
    bump_all(fleet)
    first = rollout(fleet, str(inventory), "deploys/prod.py")
    assert_ok(first)
    state_a = {h: fleet.system(h) for h in HOSTS}
    bump_all(fleet)
    second = rollout(fleet, str(inventory), "deploys/prod.py")
    assert_ok(second)
    assert all(fleet.system(h) != state_a[h] for h in HOSTS)
    proc = subprocess.run([str(BIN / "ipex-fleet"), "rollback", str(inventory), "--to", run_id_of(first)], cwd=REPO,
                          env=fleet.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert_ok(proc)
    for h in HOSTS:
        gen, path, running = fleet.system(h)
        assert (path, running) == (state_a[h][1], state_a[h][2]), h


def test_history_and_status_read_the_ledger(fleet, inventory):
    bump_all(fleet)
    proc = rollout(fleet, str(inventory), "deploys/prod.py")
    run_id = run_id_of(proc)
    hist = subprocess.run([str(BIN / "ipex-fleet"), "history", run_id, "--json"], cwd=REPO, env=fleet.env(),
                          capture_output=True, text=True, timeout=60)
    doc = json.loads(hist.stdout)
    assert doc["run"]["status"] == "done" and len([h for h in doc["hosts"] if h["phase"] == "deploy"]) == 6
    status = subprocess.run([str(BIN / "ipex-fleet"), "status", str(inventory), "--json"], cwd=REPO,
                            env=fleet.env(), capture_output=True, text=True, timeout=300)
    rows = {r["host"]: r for r in json.loads(status.stdout)}
    assert_ok(status)
    assert all(r["matches_last_good"] is True and r["generation"] == fleet.system(h)[0] for h, r in rows.items())


def test_bad_rollout_input_is_one_line(fleet, inventory):
    for args, message in ((["--max-fail", "lots"], "--max-fail 'lots'"),
                          (["--waves", "canary,nosuch"], "no group nosuch"),
                          (["--waves", "0,50%"], "each part is a host count")):
        proc = rollout(fleet, str(inventory), "deploys/prod.py", *args)
        assert proc.returncode == 2 and message in proc.stdout and "Traceback" not in proc.stdout
        assert len(proc.stdout.strip().splitlines()) == 1
    proc = rollout(fleet, "--resume", "no-such-run")
    assert proc.returncode == 2 and "no rollout or maintenance run no-such-run" in proc.stdout


def test_generation_that_locks_ssh_out_reverts_by_itself(fleet, inventory):
    rollout(fleet, str(inventory), "deploys/prod.py")
    before = {h: fleet.system(h) for h in HOSTS}
    bump_all(fleet)
    fleet.configure("host1", "lock_ssh=true")
    text = inventory.read_text().replace("'activation_timeout': 60",
                                         "'activation_timeout': 10, 'confirm_timeout': 5, 'lease_grace': 3")
    inventory.write_text(text)
    started = time.monotonic()
    proc = rollout(fleet, str(inventory), "deploys/prod.py")
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert "the host's watchdog restored generation" in proc.stdout
    assert fleet.system("host1") == before["host1"], "the host reverted to its recorded generation"
    for h in HOSTS[1:]:
        assert fleet.system(h) == before[h], "the canary halted the rollout"
    run_id = run_id_of(proc)
    row = ledger(fleet).execute("SELECT * FROM host_results WHERE run_id=? AND host='host1' AND phase='deploy'",
                                (run_id,)).fetchone()
    assert row["status"] == "rolled_back" and row["final_generation"] == before["host1"][0]
    timings = json.loads(row["timings"])
    # The controller waited for the watchdog, which reverted once the lease ran out: confirm_timeout
    # plus lease_grace (plus the revert and polling).
    assert timings["revert_wait"] < 5 + 3 + 15, timings
    assert elapsed < 120


def test_an_unreachable_host_spends_its_own_budget_and_a_rolled_back_one_halts(fleet, inventory):
    rollout(fleet, str(inventory), "deploys/prod.py")
    before = {h: fleet.system(h) for h in HOSTS}
    bump_all(fleet)
    fleet.lab.cut("host2", "reject")  # wave1: host2 never takes the change
    try:
        proc = rollout(fleet, str(inventory), "deploys/prod.py", "--max-unreachable", "1")
    finally:
        fleet.lab.heal("host2")
    assert proc.returncode == 1, proc.stdout  # a host that never took the change: not a success
    assert "wave wave1: unreachable 1 (host2)" in proc.stdout and "halting" not in proc.stdout
    run_id = run_id_of(proc)
    waves = ledger(fleet).execute("SELECT status, tally FROM waves WHERE run_id=? ORDER BY idx", (run_id,)).fetchall()
    assert [w["status"] for w in waves] == ["done", "done", "done"]
    assert json.loads(waves[1]["tally"])["unreachable"] == 1 and json.loads(waves[1]["tally"])["rolled_back"] == 0
    assert fleet.system("host2") == before["host2"]
    assert all(fleet.system(h)[0] == before[h][0] + 1 for h in HOSTS if h != "host2")

    # The same unreachable host beside a rolled-back one: the rolled-back one spends --max-fail 0.
    before = {h: fleet.system(h) for h in HOSTS}
    bump_all(fleet)
    fleet.configure("host3", "fail_activation=true")
    fleet.lab.cut("host2", "reject")
    try:
        proc = rollout(fleet, str(inventory), "deploys/prod.py", "--max-unreachable", "1")
    finally:
        fleet.lab.heal("host2")
    assert proc.returncode == 1 and "1 of 2 rolled back or failed, budget --max-fail 0: halting" in proc.stdout
    assert "wave wave1: rolled_back 1 (host3), unreachable 1 (host2)" in proc.stdout
    for h in HOSTS[1:]:
        assert fleet.system(h) == before[h], h


def test_the_same_failure_on_two_canaries_opens_the_breaker(fleet, inventory):
    rollout(fleet, str(inventory), "deploys/prod.py")
    bump_all(fleet)
    fleet.configure("host1", "fail_service=ollama")
    runs = []
    for _ in range(2):  # the same flake, the same failing check, two runs
        proc = rollout(fleet, str(inventory), "deploys/prod.py")
        assert proc.returncode == 1 and "halting" in proc.stdout
        runs.append(run_id_of(proc))
    assert "== circuit breaker open for flake" in proc.stdout
    third = rollout(fleet, str(inventory), "deploys/prod.py")
    assert third.returncode == 2 and len(third.stdout.strip().splitlines()) == 1, third.stdout
    assert f"host1 (run {runs[0]}), host1 (run {runs[1]})" in third.stdout and "Traceback" not in third.stdout
    assert "ipex-fleet breaker reset" in third.stdout
    cli = [str(BIN / "ipex-fleet")]
    listed = subprocess.run([*cli, "breaker", "--json"], cwd=REPO, env=fleet.env(), capture_output=True, text=True,
                            timeout=60)
    assert_ok(listed)
    assert json.loads(listed.stdout)[0]["signature"].startswith("units: ")
    status = subprocess.run([*cli, "status", str(inventory)], cwd=REPO, env=fleet.env(), capture_output=True,
                            text=True, timeout=300)
    assert "circuit breaker open for flake" in status.stdout
    reset = subprocess.run([*cli, "breaker", "reset"], cwd=REPO, env=fleet.env(), capture_output=True, text=True,
                           timeout=60)
    assert_ok(reset)
    fleet.configure("host1", "fail_service=")
    assert_ok(rollout(fleet, str(inventory), "deploys/prod.py"))


def test_status_live_from_a_second_controller_shows_a_deploy_made_from_the_first(fleet, inventory, tmp_path):
    bump_all(fleet)
    proc = rollout(fleet, str(inventory), "deploys/prod.py")
    assert_ok(proc)
    run_id = run_id_of(proc)
    other = {**fleet.env(), "IPEX_FLEET_STATE": str(tmp_path / "second-controller")}
    cli = [str(BIN / "ipex-fleet")]
    live = subprocess.run([*cli, "status", str(inventory), "--live", "--json"], cwd=REPO, env=other,
                          capture_output=True, text=True, timeout=300)
    assert_ok(live)
    rows = {r["host"]: r for r in json.loads(live.stdout)}
    for h in HOSTS:
        assert rows[h]["agree"] is False and rows[h]["ledger_says"] is None, rows[h]
        assert f"run {run_id}" in rows[h]["host_says"] and "made by another controller" in rows[h]["disagreement"]
        assert rows[h]["open"] is None, "no intent or lock is left"
    # The first controller agrees with its hosts.
    mine = subprocess.run([*cli, "status", str(inventory), "--live", "--json"], cwd=REPO, env=fleet.env(),
                          capture_output=True, text=True, timeout=300)
    assert all(r["agree"] is True for r in json.loads(mine.stdout)), mine.stdout
    # history of that run, from the second controller: what the hosts recorded.
    hist = subprocess.run([*cli, "history", run_id, "--inventory", str(inventory), "--json"], cwd=REPO, env=other,
                          capture_output=True, text=True, timeout=300)
    assert_ok(hist)
    doc = json.loads(hist.stdout)
    assert doc["run"]["source"] == "hosts" and {r["host"] for r in doc["hosts"] if r["status"] == "ok"} == set(HOSTS)
