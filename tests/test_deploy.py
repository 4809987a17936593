"""`pyinfra inventories/lab.py deploys/prod.py` over real SSH against real Nix on the lab."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from ipex_fleet.transaction import hostagent
from ipex_fleet.domain import Status

from .conftest import REPO, wait_for, assert_ok


@pytest.fixture(autouse=True)
def healthy(fleet3):
    fleet3.reset()
    yield
    fleet3.reset()


def bump(fleet, host: str) -> str:
    version = f"v{time.monotonic_ns()}"
    fleet.configure(host, f"version={version}")
    return version


def test_deploy_switches_every_host_then_changes_nothing(fleet3):
    before = {h: fleet3.system(h) for h in ("host1", "host2", "host3")}
    for h in before:
        bump(fleet3, h)
    proc, run_id = fleet3.deploy()
    assert_ok(proc)
    for h, (gen, path, running) in before.items():
        new_gen, new_path, new_running = fleet3.system(h)
        assert new_gen > gen and new_path != path and new_running == new_path
        result = fleet3.result(run_id, h)
        assert result.status is Status.OK
        assert result.previous.number == gen and result.final.number == new_gen
        assert result.final.path == new_running
        # The host keeps its own record of the deploy.
        records = fleet3.sh(h, "cat /var/lib/ipex-fleet/deploys.jsonl").splitlines()
        assert json.loads(records[-1])["run_id"] == run_id
        # The agent's compiled code, written at install, and its deployment metrics, written by its commit.
        module = hostagent.SCRIPT.rsplit("/", 1)[1][:-len(".py")]
        assert fleet3.sh(h, f"ls {hostagent.DIR}/__pycache__").startswith(f"{module}.cpython-")
        metrics = fleet3.sh(h, "cat /var/lib/prometheus-node-exporter-text/ipex_fleet_deploy.prom")
        assert f'run_id="{run_id}"' in metrics and f"ipex_fleet_current_generation {float(new_gen)}" in metrics

    again, run_id2 = fleet3.deploy()
    assert_ok(again)
    assert "unchanged" in again.stdout
    for h in before:
        assert fleet3.result(run_id2, h).status is Status.UNCHANGED
        assert fleet3.system(h)[0] == fleet3.result(run_id, h).final.number


def test_version_change_gives_only_that_host_a_new_generation(fleet3):
    fleet3.deploy()
    before = {h: fleet3.system(h) for h in ("host1", "host2", "host3")}
    bump(fleet3, "host2")
    proc, run_id = fleet3.deploy()
    assert_ok(proc)
    assert fleet3.system("host2")[0] == before["host2"][0] + 1
    assert fleet3.system("host1") == before["host1"] and fleet3.system("host3") == before["host3"]
    assert fleet3.result(run_id, "host1").status is Status.UNCHANGED


def test_failed_activation_rolls_that_host_back(fleet3):
    fleet3.deploy()
    before = {h: fleet3.system(h) for h in ("host1", "host2", "host3")}
    for h in before:
        bump(fleet3, h)
    fleet3.configure("host2", "fail_activation=true")
    proc, run_id = fleet3.deploy()
    assert proc.returncode != 0
    # host2 is back on its recorded generation: profile link and running system, read on the host.
    assert fleet3.system("host2") == before["host2"]
    result = fleet3.result(run_id, "host2")
    assert result.status is Status.ROLLED_BACK
    assert result.final.number == before["host2"][0] and result.target.number == before["host2"][0] + 1
    assert "exited 2" in result.error and "lab-fail-activation" in result.error
    # Its services run again after the rollback.
    addr = fleet3.spec.host("host2").address
    assert '"version"' in fleet3.sh("host2", f"curl -s -m 5 http://{addr}:11434/api/version")
    # The other hosts stay on the new generation.
    for h in ("host1", "host3"):
        assert fleet3.system(h)[0] == before[h][0] + 1
        assert fleet3.result(run_id, h).status is Status.OK
    assert fleet3.sh("host2", "test -e /var/lib/ipex-fleet/lock && echo locked || echo free") == "free"


def test_reboot_required_is_reported(fleet3):
    bump(fleet3, "host1")
    fleet3.configure("host1", "reboot_required=true")
    proc, run_id = fleet3.deploy("--limit", "host1")
    assert_ok(proc)
    result = fleet3.result(run_id, "host1")
    assert result.status is Status.OK and result.reboot_required
    assert "reboot required" in proc.stdout


def test_host_cut_mid_run_fails_fast_as_unreachable(fleet3):
    fleet3.deploy()
    for h in ("host1", "host2", "host3"):
        bump(fleet3, h)
    lock = fleet3.host_path("host3", "/var/lib/ipex-fleet/lock")
    argv = fleet3.pyinfra_argv("deploys/prod.py", "--data", "command_timeout=4", "--data",
                               "activation_timeout=4", "--data", "build_timeout=4", "--data", "lease_grace=5")
    env = fleet3.env(IPEX_FLEET_RUN_ID="t-cut")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lock.exists, timeout=60), "the deploy never locked host3"
        fleet3.lab.cut("host3")
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        fleet3.lab.heal("host3")
    assert proc.returncode != 0
    result = fleet3.result("t-cut", "host3")
    assert result.status is Status.UNREACHABLE, out
    # Its own transaction ends within a few command timeouts; the healthy hosts' gates take what they take.
    assert result.timings["total"] < 60, f"the cut host held its transaction for {result.timings['total']:.0f}s"
    assert "Traceback" not in out, out  # the heartbeat of a cut host keeps trying, quietly
    for h in ("host1", "host2"):
        assert fleet3.result("t-cut", h).status is Status.OK
    # Healed, the host deploys again: the cut run's lock is recognised as finished and taken over (an
    # intent it may have opened ran out with its heartbeat's lease: 5 s, on the host's clock).
    time.sleep(6)
    proc2, run_id = fleet3.deploy()
    assert_ok(proc2)
    assert fleet3.result(run_id, "host3").status.succeeded


def test_second_deploy_is_refused_by_the_lock(fleet3):
    fleet3.deploy()
    before = fleet3.system("host1")
    bump(fleet3, "host1")
    owner = json.dumps({"run_id": "other-run", "controller": "ops-laptop", "since": "2026-11-21T10:00:00+00:00"})
    # Another controller's lock, taken through the host agent with a live lease (its heartbeat runs).
    fleet3.sh("host1", hostagent.command("lock-take", "--owner", owner, "--for", "600"))
    try:
        proc, run_id = fleet3.deploy("--limit", "host1")
        assert proc.returncode != 0
        assert "locked by run other-run (controller ops-laptop" in proc.stdout
        assert fleet3.system("host1") == before
        assert fleet3.result(run_id, "host1").status is Status.SKIPPED
        assert "other-run" in fleet3.sh("host1", "cat /var/lib/ipex-fleet/lock"), "the holder's lock stays"
    finally:
        fleet3.sh("host1", "rm -f /var/lib/ipex-fleet/lock")


@pytest.mark.parametrize("args,message", [
    (["--data", "mode=swtch"], "mode='swtch' is an unknown mode"),
    (["--data", "flake=/nonexistent/flake"], "has no flake.nix"),
    (["--data", "flake={unlocked}"], "has no flake.lock: run `nix flake lock` there"),
])
def test_bad_host_data_is_one_line_before_any_host_is_touched(fleet3, tmp_path, args, message):
    unlocked = tmp_path / "unlocked"  # the lab's flake without its flake.lock
    unlocked.mkdir()
    for f in fleet3.lab.layout.flake_dir.rglob("*"):
        if f.is_file() and f.name != "flake.lock":
            (unlocked / f.relative_to(fleet3.lab.layout.flake_dir)).parent.mkdir(parents=True, exist_ok=True)
            (unlocked / f.relative_to(fleet3.lab.layout.flake_dir)).write_bytes(f.read_bytes())
    args = [a.format(unlocked=unlocked) for a in args]
    before = {h: fleet3.system(h) for h in ("host1", "host2", "host3")}
    records = fleet3.sh("host1", "wc -l < /var/lib/ipex-fleet/deploys.jsonl 2>/dev/null || echo 0")
    bump(fleet3, "host1")
    proc, _ = fleet3.deploy(*args)
    assert proc.returncode != 0
    errors = [l for l in (proc.stdout).splitlines() if message in l]
    assert len(errors) == 1 and "Traceback" not in proc.stdout
    assert "Starting operation" not in proc.stdout
    assert {h: fleet3.system(h) for h in before} == before
    assert fleet3.sh("host1", "wc -l < /var/lib/ipex-fleet/deploys.jsonl 2>/dev/null || echo 0") == records


def test_host_name_with_shell_metacharacters_is_refused(fleet3, tmp_path):
    inventory = tmp_path / "evil.py"
    address = fleet3.spec.host("host1").address
    layout = fleet3.lab.layout
    inventory.write_text(
        "hosts = [('host1;touch /tmp/pwned', {"
        f"'ssh_hostname': '{address}', 'ssh_user': 'root', 'ssh_key': '{layout.client_key}', "
        f"'ssh_known_hosts_file': '{layout.known_hosts}', 'ssh_strict_host_key_checking': 'yes', "
        f"'flake': '{layout.flake_dir}'}})]\n")
    proc, _ = fleet3.deploy(inventory=str(inventory))
    assert proc.returncode != 0
    assert "the name may hold only" in proc.stdout
    assert "Starting operation" not in proc.stdout
    assert fleet3.sh("host1", "test -e /tmp/pwned && echo yes || echo no") == "no"


def test_rollback_deploy_returns_to_the_generation_asked_for(fleet3):
    fleet3.deploy()
    first = fleet3.system("host1")
    bump(fleet3, "host1")
    fleet3.deploy("--limit", "host1")
    second = fleet3.system("host1")
    bump(fleet3, "host1")
    fleet3.deploy("--limit", "host1")
    third = fleet3.system("host1")
    assert first[0] < second[0] < third[0]

    proc, run_id = fleet3.deploy("--limit", "host1", deploy="deploys/rollback.py")
    assert_ok(proc)
    assert fleet3.system("host1") == second, "without a number: back to before the last deploy"

    proc, run_id = fleet3.deploy("--limit", "host1", "--data", f"generation={first[0]}", deploy="deploys/rollback.py")
    assert_ok(proc)
    assert fleet3.system("host1") == first
    assert fleet3.result(run_id, "host1").final.number == first[0]

    proc, _ = fleet3.deploy("--limit", "host1", "--data", "generation=9999", deploy="deploys/rollback.py")
    assert proc.returncode != 0 and "has no generation 9999" in proc.stdout
    assert fleet3.system("host1") == first
