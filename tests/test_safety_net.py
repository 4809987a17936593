"""The safety net decides on the right evidence, over real SSH and systemd (issue 21): a slow peer
never reverts a healthy host (the lease is the controller's heartbeat, not a step boundary); a host
that crashes with an open intent and no controller returns by itself from its next boot; two
controllers never both deploy one host."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time

import pytest

from ipex_fleet.domain import Status

from .conftest import BIN, FAST, REPO, assert_ok, bump, wait_for
from .test_transaction import _kill_controller_during, decisions, reverted_by


@pytest.fixture(scope="module")
def fleet(fleet2):
    return fleet2


pytestmark = pytest.mark.usefixtures("healthy")


def test_a_slow_peer_never_reverts_a_healthy_host(fleet):
    """host2's activation takes 25 s; host1's lease is 3 s. pyinfra waits for host2 at every step
    boundary, and host1 still commits: the heartbeat keeps it while the controller lives."""
    for h in ("host1", "host2"):
        bump(fleet, h)
    fleet.configure("host2", "slow_activation=25")
    started = time.monotonic()
    proc, run_id = fleet.deploy(*FAST, "--data", "lease_grace=3", "--data", "command_timeout=10", timeout=300)
    assert_ok(proc)
    print(f"\nmixed fleet: both hosts committed in {time.monotonic() - started:.1f} s "
          "(host2's activation 25 s, lease 3 s)")
    for h in ("host1", "host2"):
        assert fleet.result(run_id, h).status is Status.OK, h
        assert [d["who"] for d in decisions(fleet, h, run_id)] == ["committed"], h


def test_a_mixed_fleet_in_parallel_1_batches_never_reverts_a_healthy_host(fleet, tmp_path):
    """The issue's mixed fleet: host1 installs a model from a throttled mirror while host2 has none and
    activates 25 s slowly; `--parallel 1` runs each step on one host at a time, so each host sits with
    its intent open while the other works, far beyond its 3 s lease. Both commit, neither is reverted."""
    from .test_models import make_blob, start_mirror

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sha, size = make_blob(mirror, "slow.safetensors", 6)
    proc, url = start_mirror(mirror, rate=512 << 10)  # 6 MiB at 512 KiB/s: about 12 s
    model = {"kind": "checkpoints", "name": "slow.safetensors", "url": f"{url}/slow.safetensors", "sha256": sha,
             "size": size}
    inventory = tmp_path / "mixed.py"
    inventory.write_text(
        "from ipex_fleet.lab.inventory import lab_hosts\n"
        f"hosts = [(n, {{**d, 'trusted_mirrors': ['http://127.0.0.1:'], 'min_free_mb': 64,"
        f" **({{'models': [{model!r}]}} if n == 'host1' else {{}})}})"
        f" for n, d in lab_hosts({str(fleet.lab.layout.root)!r})]\n")
    for h in ("host1", "host2"):
        bump(fleet, h)
    fleet.configure("host2", "slow_activation=25")
    try:
        started = time.monotonic()
        run, run_id = fleet.deploy(*FAST, "--data", "lease_grace=3", "--data", "command_timeout=60",
                                   "--parallel", "1", inventory=str(inventory), timeout=400)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
    assert_ok(run)
    print(f"\nmixed fleet, --parallel 1: both committed in {elapsed:.1f} s (a 12 s model, a 25 s activation, "
          "lease 3 s)")
    for h in ("host1", "host2"):
        assert fleet.result(run_id, h).status is Status.OK, (h, fleet.result(run_id, h).error)
        assert [d["who"] for d in decisions(fleet, h, run_id)] == ["committed"], h
    assert fleet.result(run_id, "host1").timings["install_models"] > 6, "the model took its time"


def test_a_host_crashed_with_an_open_intent_and_no_controller_returns_after_its_boot(fleet):
    """The controller dies in the health step and the host crashes right after (its transient watchdog
    dies with it). At boot the agent's boot unit re-arms the intent, its lease counted from the new
    boot (reboot_timeout + lease_grace), and the host returns to the recorded generation by itself."""
    host = "host1"
    assert_ok(fleet.deploy("--limit", host, *FAST)[0])
    before = fleet.system(host)
    bump(fleet, host)
    grace, reboot_timeout = 20, 10
    run_id, _killed = _kill_controller_during(fleet, host, "ipex_fleet [p]robe", "--data", "bench=false",
                                              "--data", f"lease_grace={grace}", "--data",
                                              f"reboot_timeout={reboot_timeout}", "--data", "health_timeout=120")
    assert json.loads(fleet.sh(host, "cat /var/lib/ipex-fleet/intent.json"))["run_id"] == run_id
    fleet.lab.crash(host)
    booted = time.time()
    outcome, ended, who = reverted_by(fleet, host, run_id, grace + reboot_timeout + 40)
    took = ended - booted
    print(f"\ncrash with an open intent: back on the recorded generation {took:.1f} s after the boot "
          f"(bound: reboot_timeout {reboot_timeout} s + lease_grace {grace} s)")
    assert (outcome, who) == ("reverted", "watchdog")
    assert took <= grace + reboot_timeout + 12
    assert wait_for(lambda: fleet.system(host) == before, 30, 0.5)
    assert fleet.sh(host, "test -e /var/lib/ipex-fleet/lock && echo held || echo free") == "free"


def test_a_host_that_crashes_mid_activation_is_rolled_back_once_it_answers_not_after_activation_timeout(fleet):
    """host1 crashes while its activation's unit runs (30 s slow); the controller lives. Over a new
    connection the host answers from its new boot: the unit ended without an exit code. The controller
    rolls back at once, not after activation_timeout (300 s here; it waited that out before)."""
    host = "host1"
    assert_ok(fleet.deploy("--limit", host, *FAST)[0])
    before = fleet.system(host)
    bump(fleet, host)
    fleet.configure(host, "slow_activation=30")
    run_id = f"t-crash-activation-{time.monotonic_ns()}"
    proc = subprocess.Popen(fleet.pyinfra_argv("deploys/prod.py", "--limit", host, *FAST, "--data", "lease_grace=20",
                                               "--data", "activation_timeout=300", "--data", "reboot_timeout=30"),
                            cwd=REPO, env=fleet.env(IPEX_FLEET_RUN_ID=run_id), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        running = "systemctl list-units --plain --no-legend --state=active 'ipex-fleet-switch-*' | grep -q ."
        assert wait_for(lambda: fleet.lab.ssh(host, running, timeout=10, check=False).ok, 120, 0.2), \
            "the activation's unit never ran"
        fleet.lab.crash(host)
        crashed = time.monotonic()
        output = proc.communicate(timeout=200)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    took = time.monotonic() - crashed
    result = fleet.result(run_id, host)
    print(f"\ncrash mid-activation: rolled back {took:.1f} s after the crash (activation_timeout 300 s)")
    assert result.status is Status.ROLLED_BACK, (result, output[-3000:])
    assert "the activation was interrupted before it recorded its exit code" in result.error, result.error
    assert took < 60, (took, output[-3000:])
    assert fleet.system(host) == before
    assert [d["who"] for d in decisions(fleet, host, run_id)] in (["reverting-controller"], ["watchdog"])
    assert fleet.sh(host, "test -e /var/lib/ipex-fleet/lock && echo held || echo free") == "free"


def test_the_activations_outcome_reads_real_systemd(fleet):
    """nixcmd.activation_outcome on a real systemd: no unit and no log is `never started`; a unit whose
    start job waits in the queue (systemd shows it `inactive`, with a job) and a unit that runs are
    running; one that recorded its exit code answers it; one killed before it did is `interrupted`."""
    import uuid

    from ipex_fleet.domain import Action
    from ipex_fleet.nix import commands as nixcmd

    host = "host2"

    def outcome(call_id: str):
        got = fleet.lab.ssh(host, nixcmd.activation_outcome(Action.SWITCH, call_id), timeout=30, check=False)
        return got.returncode, got.stderr.strip()

    def start(call_id: str, script: str, *extra: str) -> None:
        unit = nixcmd.activation_unit(Action.SWITCH, call_id)
        log, rc = f"{nixcmd.ACTIVATION_DIR}/{unit}.log", f"{nixcmd.ACTIVATION_DIR}/{unit}.rc"
        fleet.sh(host, f"mkdir -p {nixcmd.ACTIVATION_DIR}; systemd-run --unit={unit} --collect --quiet --no-block "
                       f"--service-type=exec --property=StandardOutput=append:{log} {' '.join(extra)} "
                       f"/bin/sh -c {shlex.quote(script.replace('RC', rc))}")

    never = uuid.uuid4().hex[:12]
    assert outcome(never) == (nixcmd.ACTIVATION_GONE, nixcmd.ACTIVATION_NEVER_STARTED)

    queued, blocker = uuid.uuid4().hex[:12], f"t-blocker-{uuid.uuid4().hex[:8]}"
    fleet.sh(host, f"systemd-run --unit={blocker} --collect --quiet --no-block --service-type=oneshot sleep 4")
    start(queued, "echo activating; sleep 2; echo 0 > RC", f"--property=After={blocker}.service")
    assert outcome(queued)[0] == nixcmd.ACTIVATION_RUNNING  # queued behind the blocker
    assert fleet.sh(host, f"systemctl show -p Job --value {nixcmd.activation_unit(Action.SWITCH, queued)}.service").isdigit()
    assert wait_for(lambda: outcome(queued)[0] == 0, 30, 0.2)
    answer = fleet.lab.ssh(host, nixcmd.activation_outcome(Action.SWITCH, queued), timeout=30, check=False)
    assert answer.stdout.splitlines() == [nixcmd.ACTIVATION_RECORDED, "activating"]  # its own code, said so

    killed = uuid.uuid4().hex[:12]
    start(killed, "echo activating; sleep 60; echo 0 > RC")
    assert wait_for(lambda: outcome(killed)[0] == nixcmd.ACTIVATION_RUNNING, 10, 0.1)
    fleet.sh(host, f"systemctl kill --signal=KILL {nixcmd.activation_unit(Action.SWITCH, killed)}.service")
    assert wait_for(lambda: outcome(killed) == (nixcmd.ACTIVATION_GONE, nixcmd.ACTIVATION_INTERRUPTED), 10, 0.2)


def test_two_controllers_at_once_exactly_one_deploys(fleet):
    """Two pyinfra processes deploy host2 at the same moment: one deploys, the other is skipped naming
    the holder, and nothing records a stale `previous`."""
    host = "host2"
    bump(fleet, host)
    before = fleet.system(host)
    runs = [f"t-two-{i}-{time.monotonic_ns()}" for i in range(2)]
    procs = [subprocess.Popen(fleet.pyinfra_argv("deploys/prod.py", "--limit", host, *FAST), cwd=REPO,
                              env=fleet.env(IPEX_FLEET_RUN_ID=r), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in runs]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    results = [fleet.result(r, host) for r in runs]
    statuses = sorted(r.status.value for r in results)
    assert statuses == ["ok", "skipped"], (statuses, [o[-2000:] for o in outputs])
    ok = next(r for r in results if r.status is Status.OK)
    skipped = next(r for r in results if r.status is Status.SKIPPED)
    assert ok.previous.path == before[1]
    assert f"locked by run {ok.run_id}" in skipped.error or f"run {ok.run_id} is deploying" in skipped.error, \
        skipped.error
    assert fleet.system(host)[1] == ok.final.path


def test_boot_mode_reboot_and_a_controller_that_never_returns_the_host_reverts_by_itself(fleet):
    """mode=boot with reboot: the controller is killed once the host rebooted into the new generation.
    The boot unit re-armed the intent from the new boot; with no controller to renew it, the host
    returns to the recorded generation by itself: profile, running system and boot entry."""
    host = "host2"
    assert_ok(fleet.deploy("--limit", host, *FAST)[0])
    before = fleet.system(host)
    bump(fleet, host)
    grace, reboot_timeout = 5, 20
    boot_id = fleet.lab.boot_id(host)
    run_id = f"t-bootkill-{time.monotonic_ns()}"
    proc = subprocess.Popen(fleet.pyinfra_argv("deploys/prod.py", "--limit", host, "--data", "mode=boot",
                                               "--data", "reboot=true", "--data", f"lease_grace={grace}",
                                               "--data", f"reboot_timeout={reboot_timeout}", *FAST),
                            cwd=REPO, env=fleet.env(IPEX_FLEET_RUN_ID=run_id), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: fleet.lab.boot_id(host) not in (None, boot_id), 120, 0.2), "it never rebooted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    booted = time.time()
    outcome, ended, who = reverted_by(fleet, host, run_id, reboot_timeout + grace + 60)
    print(f"\nboot mode, controller gone after the reboot: back on the recorded generation "
          f"{ended - booted:.1f} s after the reboot (bound: reboot_timeout {reboot_timeout} s + lease_grace {grace} s)")
    assert (outcome, who) == ("reverted", "watchdog")
    assert ended - booted <= reboot_timeout + grace + 15
    gen, path, running = fleet.system(host)
    assert (gen, path, running) == before
    default = fleet.sh(host, "sed -n 's/^default //p' /boot/loader/loader.conf")
    assert default == f"nixos-generation-{before[0]}.conf"


def test_a_revert_whose_old_generation_fails_to_activate_is_revert_failed(fleet):
    """host1 runs a generation that activates once only (lab knob fail_reactivation); the next deploy
    fails its health check, and the revert to it cannot activate: `revert-failed`, non-zero, recorded
    on the host and in `ipex-fleet status`, never `rolled_back`."""
    host = "host1"
    bump(fleet, host)
    fleet.configure(host, "fail_reactivation=true")
    assert_ok(fleet.deploy("--limit", host, *FAST)[0])
    fleet.configure(host, "fail_reactivation=", "fail_service=ollama")
    bump(fleet, host)
    proc, run_id = fleet.deploy("--limit", host, *FAST)
    assert proc.returncode != 0
    result = fleet.result(run_id, host)
    assert result.status is Status.REVERT_FAILED, result
    assert "rollback FAILED" in result.error and "exited 2" in result.error, result.error
    record = json.loads(fleet.sh(host, "grep '\"phase\": \"revert\"' /var/lib/ipex-fleet/deploys.jsonl | tail -1"))
    assert record["status"] == "revert-failed" and record["run_id"] == run_id
    status = subprocess.run([str(BIN / "ipex-fleet"), "status", "inventories/lab.py"], cwd=REPO, env=fleet.env(),
                            capture_output=True, text=True, timeout=60)
    assert "revert-failed" in status.stdout, status.stdout
    # A healthy deploy puts the host right.
    fleet.reset()
    bump(fleet, host)
    again, again_id = fleet.deploy("--limit", host, *FAST)
    assert_ok(again)
    assert fleet.result(again_id, host).status is Status.OK
