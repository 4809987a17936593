"""An inconclusive canary pauses the rollout, on the lab over real SSH: --approve commits it (no revert,
its generation kept), --abort reverts it, and a pause nobody decides in time (the controller gone)
ends with the host reverted by its own watchdog, which the resumed rollout reports.

The inconclusive verdict is the real gate's: a CPU load outside the lab hosts (two busy processes on
this machine, bounded in time) slows the canary's benchmark while no process of its own is busy,
which the gate judges `inconclusive` (contended from outside), as it does on a shared GPU node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ipex_fleet.transaction import hostagent

from .conftest import assert_ok, destroy_checked, make_fleet
from .test_rollout import rollout, run_id_of

HOSTS = ("host1", "host2")


@pytest.fixture(scope="module")
def fleet(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 2, tmp_path_factory)
    yield fleet
    destroy_checked(fleet.lab)


@pytest.fixture
def inventory(fleet, tmp_path) -> Path:
    path = tmp_path / "fleet.py"
    path.write_text(
        "from ipex_fleet.lab.inventory import lab_hosts\n"
        f"_all = [(n, {{**d, 'health_levels': [1], 'min_free_mb': 64, 'command_timeout': 60,"
        f" 'lease_grace': 5}}) for n, d in lab_hosts({str(fleet.lab.layout.root)!r})]\n"
        "canary = _all[:1]\nwave1 = _all[1:]\n")
    return path


@contextmanager
def outside_load(seconds: float = 150):
    """Two busy processes on this machine (not in any lab host), each ending by itself."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
    hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def agent_status(fleet, host: str) -> dict:
    return json.loads(fleet.sh(host, hostagent.command("status")).splitlines()[-1])


def paused_rollout(fleet, inventory: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Roll out a new version until the canary's gate is inconclusive (a pass under load is possible:
    then the next version is tried, at most three times; wave1's host pausing instead is aborted first). Returns the paused run and the generations
    from before it."""
    for _ in range(3):
        rollout(fleet, str(inventory), "deploys/prod.py")  # settle: both hosts on the current version
        before = {h: fleet.system(h) for h in HOSTS}
        for h in HOSTS:
            fleet.configure(h, f"version=v{time.monotonic_ns()}")
        with outside_load():
            proc = rollout(fleet, str(inventory), "deploys/prod.py", "--pause-on-inconclusive", *extra)
        if proc.returncode == 3 and "canary: paused" in proc.stdout:
            return proc, before
        if proc.returncode == 3:  # the canary passed under the load and wave1's host paused instead
            assert "wave1: paused" in proc.stdout, proc.stdout
            aborted = rollout(fleet, "--resume", run_id_of(proc), "--abort")
            assert aborted.returncode == 1 and "aborted on probation (host2)" in aborted.stdout, aborted.stdout
            assert fleet.system("host2") == before["host2"]
            continue
        assert proc.returncode == 0, proc.stdout  # the gate passed under the load: try again
    pytest.fail("the canary's benchmark was never inconclusive under an outside load in three tries")


@pytest.mark.timeout(1500)
def test_an_inconclusive_canary_pauses_and_a_person_decides(fleet, inventory):
    assert_ok(rollout(fleet, str(inventory), "deploys/prod.py"))  # records each host's benchmark baseline

    # Paused: the canary switched and waits on probation, its intent open; wave1 untouched.
    proc, before = paused_rollout(fleet, inventory)
    run_id = run_id_of(proc)
    assert "paused, 1 host(s) on probation" in proc.stdout and "benchmark gate inconclusive" in proc.stdout
    assert f"ipex-fleet rollout --resume {run_id} --approve" in proc.stdout
    assert fleet.system("host1")[0] == before["host1"][0] + 1 and fleet.system("host2") == before["host2"]
    status = agent_status(fleet, "host1")
    assert status["intent"]["run_id"] == run_id and status["intent"]["left"] > 600, status
    assert status["lock"]["left"] > 600, "the lock is held for the pause, not released"

    # Approve: committed (its generation kept, no revert), and the rollout goes on to wave1 (whose host,
    # on the same loaded machine, may pause in turn: approved as well).
    approved = rollout(fleet, "--resume", run_id, "--approve")
    assert "canary   host1   ok" in approved.stdout, approved.stdout
    if approved.returncode == 3:
        assert "wave1: paused, 1 host(s) on probation" in approved.stdout.replace("== wave 2 ", "")
        approved = rollout(fleet, "--resume", run_id, "--approve")
    assert approved.returncode == 0, approved.stdout
    assert fleet.system("host1")[0] == before["host1"][0] + 1
    assert fleet.system("host2")[0] == before["host2"][0] + 1
    status = agent_status(fleet, "host1")
    assert status["intent"] is None and status["lock"] is None
    assert "committed" in fleet.sh("host1", "ls /var/lib/ipex-fleet/resolved/")

    # Abort: the canary goes back to its recorded generation; the rollout halts.
    proc, before = paused_rollout(fleet, inventory)
    aborted = rollout(fleet, "--resume", run_id_of(proc), "--abort")
    assert aborted.returncode == 1 and "aborted on probation (host1): halting" in aborted.stdout, aborted.stdout
    assert fleet.system("host1") == before["host1"] and fleet.system("host2") == before["host2"]
    assert agent_status(fleet, "host1")["intent"] is None


@pytest.mark.timeout(1500)
def test_a_pause_nobody_decides_reverts_by_itself_and_the_resume_says_so(fleet, inventory):
    assert_ok(rollout(fleet, str(inventory), "deploys/prod.py"))
    # The controller exits at the pause (it could as well have been killed): nothing of it is left.
    proc, before = paused_rollout(fleet, inventory, "--pause-timeout", "20")
    run_id = run_id_of(proc)
    deadline = time.monotonic() + 20 + 30
    while time.monotonic() < deadline and fleet.system("host1") != before["host1"]:
        time.sleep(1)
    assert fleet.system("host1") == before["host1"], "the host's watchdog reverted it after the pause timeout"
    late = rollout(fleet, "--resume", run_id, "--approve")
    assert late.returncode == 1, late.stdout
    assert "ran out before the approval" in late.stdout and "watchdog restored generation" in late.stdout
    assert fleet.system("host2") == before["host2"], "nothing went on after a pause that timed out"
