"""The one-host transaction over real SSH on the systemd lab: paths that used to leave a host
half-done (issue 14) now end committed, or back on the recorded generation, verified.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from ipex_fleet.domain import Action, Status
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.transaction import hostagent

from .conftest import FAST, REPO, bump, wait_for, assert_ok


@pytest.fixture(scope="module")
def fleet(fleet2):
    return fleet2


pytestmark = pytest.mark.usefixtures("healthy")


def decisions(fleet, host: str, run_id: str) -> list[dict]:
    """The host agent's decided intents of one run (resolved/ID.WHO.json), each with `who`."""
    out = fleet.sh(host, "cd /var/lib/ipex-fleet/resolved 2>/dev/null && for f in *.json; do [ -e \"$f\" ] && "
                         "printf '%s %s\\n' \"${f%.json}\" \"$(cat \"$f\")\"; done; true")
    found = []
    for line in out.splitlines():
        name, _, data = line.partition(" ")
        record = json.loads(data)
        if record.get("run_id") == run_id:
            found.append({**record, "who": name.rsplit(".", 1)[1]})
    return found


def resolved(fleet, host: str, run_id: str) -> list[str]:
    """`RUN.WHO` for each decided intent of one run on the host (exactly one once it is decided)."""
    return sorted(f"{run_id}.{d['who']}" for d in decisions(fleet, host, run_id))


def reverted_by(fleet, host: str, run_id: str, bound: float) -> tuple[str, float, str]:
    """Wait for the run's revert to end on the host: (outcome, when it ended, who reverted)."""
    found: list[dict] = []

    def ended() -> bool:
        found[:] = [d for d in decisions(fleet, host, run_id) if d.get("outcome")]
        return bool(found)

    assert wait_for(ended, bound, 0.5), f"no revert of {run_id} ended within {bound:.0f}s"
    return found[0]["outcome"], float(found[0]["ended"]), found[0]["who"]


def test_retry_does_not_turn_a_rollback_into_success(fleet):
    fleet.deploy("--limit", "host1", *FAST)
    before = fleet.system("host1")
    bump(fleet, "host1")
    fleet.configure("host1", "fail_activation=true")
    proc, run_id = fleet.deploy("--limit", "host1", "--retry", "1", *FAST)
    assert proc.returncode != 0, proc.stdout
    assert fleet.result(run_id, "host1").status is Status.ROLLED_BACK
    assert fleet.system("host1") == before
    assert resolved(fleet, "host1", run_id) == [f"{run_id}.reverting-controller"]


def test_a_committed_deploy_leaves_no_open_intent_and_no_watchdog(fleet):
    bump(fleet, "host2")
    proc, run_id = fleet.deploy("--limit", "host2", *FAST)
    assert_ok(proc)
    assert resolved(fleet, "host2", run_id) == [f"{run_id}.committed"]
    assert fleet.sh("host2", "test -e /var/lib/ipex-fleet/intent.json && echo open || echo none") == "none"
    assert wait_for(lambda: fleet.sh("host2", "systemctl list-units --no-legend --state=active,activating "
                                              "'ipex-fleet-watchdog-*' | grep -c . || true") == "0", 10, 0.2)
    assert fleet.sh("host2", "test -e /var/lib/ipex-fleet/lock && echo held || echo free") == "free"


def test_mode_test_records_what_runs_and_reverts_by_reactivating(fleet):
    fleet.deploy("--limit", "host1", *FAST)
    gen, path, _ = fleet.system("host1")
    bump(fleet, "host1")
    proc, run_id = fleet.deploy("--limit", "host1", "--data", "mode=test", *FAST)
    assert_ok(proc)
    result = fleet.result(run_id, "host1")
    now_gen, now_path, running = fleet.system("host1")
    assert (now_gen, now_path) == (gen, path), "test does not touch the profile"
    assert result.status is Status.OK and result.final.path == running != path and result.final.number is None

    bump(fleet, "host1")
    fleet.configure("host1", "fail_service=ollama")
    proc, run_id = fleet.deploy("--limit", "host1", "--data", "mode=test", *FAST)
    assert proc.returncode != 0
    result = fleet.result(run_id, "host1")
    assert result.status is Status.ROLLED_BACK and result.final.path == path
    assert fleet.system("host1") == (gen, path, path), "the previous path is active again"


def test_dry_activate_reports_and_nothing_else_runs(fleet):
    fleet.deploy("--limit", "host2", *FAST)
    before = fleet.system("host2")
    records = fleet.sh("host2", "wc -l < /var/lib/ipex-fleet/deploys.jsonl")
    bump(fleet, "host2")
    proc, run_id = fleet.deploy("--limit", "host2", "--data", "mode=dry-activate")
    assert_ok(proc)
    assert "would activate the configuration" in proc.stdout
    result = fleet.result(run_id, "host2")
    assert result.status is Status.UNCHANGED and result.health is None and result.bench is None
    assert fleet.system("host2") == before
    assert resolved(fleet, "host2", run_id) == [], "no intent: nothing was to change"
    assert int(fleet.sh("host2", "wc -l < /var/lib/ipex-fleet/deploys.jsonl")) == int(records) + 1


def test_mode_boot_without_reboot_sets_the_profile_and_runs_no_gates(fleet):
    fleet.deploy("--limit", "host1", *FAST)
    gen, path, running = fleet.system("host1")
    bump(fleet, "host1")
    proc, run_id = fleet.deploy("--limit", "host1", "--data", "mode=boot")
    assert_ok(proc)
    new_gen, new_path, still = fleet.system("host1")
    assert new_gen == gen + 1 and still == running
    result = fleet.result(run_id, "host1")
    assert result.status is Status.OK and result.final.number == new_gen
    assert f"nixos-generation-{new_gen}+3.conf" in fleet.sh("host1", "ls /boot/loader/entries")
    fleet.deploy("--limit", "host1", *FAST)  # back to a switched host for the tests that follow


def test_mode_boot_with_reboot_runs_the_gates_on_the_new_boot(fleet):
    fleet.deploy("--limit", "host2", *FAST)
    gen, _path, _ = fleet.system("host2")
    boot_before = fleet.sh("host2", "cat /proc/sys/kernel/random/boot_id")
    bump(fleet, "host2")
    proc, run_id = fleet.deploy("--limit", "host2", "--data", "mode=boot", "--data", "reboot=true", *FAST)
    assert_ok(proc)
    result = fleet.result(run_id, "host2")
    new_gen, new_path, running = fleet.system("host2")
    assert result.status is Status.OK and new_gen == gen + 1 and running == new_path == result.final.path
    assert fleet.sh("host2", "readlink -f /run/booted-system") == new_path
    assert fleet.sh("host2", "cat /proc/sys/kernel/random/boot_id") != boot_before
    assert result.health and result.health["checks"]["generation"] == "pass", "the gates ran on the new boot"


def test_mode_boot_with_reboot_detects_a_fallback_and_reverts_the_profile(fleet):
    fleet.deploy("--limit", "host1", *FAST)
    before = fleet.system("host1")
    bump(fleet, "host1")
    fleet.configure("host1", "fail_boot=true")
    proc, run_id = fleet.deploy("--limit", "host1", "--data", "mode=boot", "--data", "reboot=true",
                                "--data", "reboot_timeout=120", *FAST, timeout=300)
    assert proc.returncode != 0
    result = fleet.result(run_id, "host1")
    assert result.status is Status.ROLLED_BACK and "fell back" in result.error, result.error
    # Back where it was: the previous generation runs and is the profile's (and boot loader's) default.
    assert wait_for(lambda: fleet.lab.ssh("host1", "systemctl is-system-running --wait", timeout=60,
                                          check=False).stdout.strip() == "running", 60)
    assert fleet.system("host1") == before
    default = fleet.sh("host1", "sed -n 's/^default //p' /boot/loader/loader.conf")
    assert default == f"nixos-generation-{before[0]}.conf"


def _kill_controller_during(fleet, host: str, pattern: str, *extra: str,
                            inventory: str = "inventories/lab.py") -> tuple[str, float]:
    """Start a deploy, SIGKILL the controller while `pattern` runs on the host; return (run id, kill time)."""
    run_id = f"t-kill-{time.monotonic_ns()}"
    proc = subprocess.Popen(fleet.pyinfra_argv("deploys/prod.py", "--limit", host, *extra, inventory=inventory),
                            cwd=REPO,
                            env=fleet.env(IPEX_FLEET_RUN_ID=run_id), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        seen = wait_for(lambda: fleet.lab.ssh(host, f"pgrep -f '{pattern}' >/dev/null", timeout=10,
                                              check=False).ok, 120, 0.05)
        assert seen, f"{pattern} never ran on {host}"
        os.killpg(proc.pid, signal.SIGKILL)
        return run_id, time.time()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("step,pattern,extra", [
    ("health", "ipex_fleet [p]robe", ("--data", "bench=false", "--data", "health_timeout=10")),
    ("bench", "ipex_fleet [b]ench", ("--data", "bench_timeout=15")),
])
def test_controller_killed_in_a_gate_host_returns_by_itself(fleet, step, pattern, extra):
    host = "host2"
    fleet.deploy("--limit", host, *FAST)
    before = fleet.system(host)
    bump(fleet, host)
    grace = 3
    run_id, killed_at = _kill_controller_during(fleet, host, pattern, "--data", f"lease_grace={grace}", *extra)
    timeout = 10 if step == "health" else 15
    # The lease is the controller's heartbeat, not the step: one lease_grace, the watchdog's poll, the revert.
    bound = grace + 1 + 10
    reverted, at, who = reverted_by(fleet, host, run_id, bound + 20)
    assert (reverted, who) == ("reverted", "watchdog")
    took = at - killed_at
    print(f"\n{step}: the host was back on its recorded generation {took:.1f} s after the controller died "
          f"(step timeout {timeout} s; lease grace {grace} s)")
    assert took <= bound
    assert fleet.system(host) == before
    record = json.loads(fleet.sh(host, "grep '\"phase\": \"revert\"' /var/lib/ipex-fleet/deploys.jsonl | tail -1"))
    assert record["run_id"] == run_id and "by watchdog" in record["error"]
    # The next deploy proceeds, without break_lock.
    bump(fleet, host)
    proc, next_run = fleet.deploy("--limit", host, *FAST)
    assert_ok(proc)
    assert fleet.result(next_run, host).status is Status.OK


def test_an_activation_delivered_after_the_watchdogs_revert_switches_nothing(fleet):
    """A cut connection's retransmission can hand sshd the activation command after the controller gave
    up and the host's watchdog reverted (a chaos campaign saw a host left running the target with the
    profile reverted). The activation's unit asks the agent first: the intent was decided, so it exits
    ACTIVATION_FENCED and the host stays on its recorded generation."""
    host = "host2"
    fleet.deploy("--limit", host, *FAST)
    before = fleet.system(host)
    bump(fleet, host)
    run_id, _ = _kill_controller_during(fleet, host, "ipex_fleet [p]robe", "--data", "lease_grace=3",
                                        "--data", "bench=false", "--data", "health_timeout=10")
    reverted, _, who = reverted_by(fleet, host, run_id, 40)
    assert (reverted, who) == ("reverted", "watchdog") and fleet.system(host) == before
    dead = next(d for d in decisions(fleet, host, run_id))
    late = nixcmd.activate(dead["target"]["path"], Action.SWITCH, "late0000",
                           hostagent.command("fence", "--intent", dead["intent_id"]))
    got = fleet.lab.ssh(host, late, timeout=60, check=False)
    assert got.returncode == nixcmd.ACTIVATION_FENCED, (got.returncode, got.stdout, got.stderr)
    assert "activation refused" in got.stdout + got.stderr
    assert fleet.system(host) == before, "the late activation switched the reverted host"


def test_controller_killed_during_models_host_returns_and_no_half_file_is_visible(fleet, tmp_path):
    """The models step downloads slowly (a throttled mirror on loopback); the controller dies in it.
    The host's watchdog restores the recorded generation once the step's lease runs out, and the
    half-downloaded file never appears under its own name."""
    from .test_models import _models_inventory, make_blob, start_mirror

    host, grace, timeout = "host1", 3, 8
    fleet.deploy("--limit", host, *FAST)
    before = fleet.system(host)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sha, size = make_blob(mirror, "slow.safetensors", 4)
    server, url = start_mirror(mirror, rate=200_000)  # 4 MiB at 200 kB/s: about 20 s
    try:
        entry = {"kind": "checkpoints", "name": "slow.safetensors", "url": f"{url}/slow.safetensors",
                 "sha256": sha, "size": size}
        inventory = _models_inventory(fleet, tmp_path, [entry], extra=f", 'models_timeout': {timeout}, "
                                                                      f"'lease_grace': {grace}")
        bump(fleet, host)
        run_id, killed_at = _kill_controller_during(fleet, host, "ipex_fleet [m]odels install",
                                                    inventory=str(inventory))
        bound = grace + 1 + 10
        reverted, at, who = reverted_by(fleet, host, run_id, bound + 20)
        took = at - killed_at
        print(f"\nmodels: the host was back on its recorded generation {took:.1f} s after the controller died "
              f"(lease {timeout} s + grace {grace} s)")
        assert (reverted, who) == ("reverted", "watchdog") and took <= bound
        assert fleet.system(host) == before
        placed = "/var/lib/comfyui/models/checkpoints/slow.safetensors"
        # Never a half-written file under its own name: absent, or whole (the installer ran on).
        present = fleet.sh(host, f"test -e {placed} && sha256sum {placed} || true")
        assert present == "" or present.split()[0] == sha
        # The next deploy proceeds without break_lock, and finishes the download.
        bump(fleet, host)
        proc, next_run = fleet.deploy("--limit", host, "--data", "models_timeout=120", inventory=str(inventory),
                                      timeout=300)
        assert_ok(proc)
        assert fleet.result(next_run, host).status is Status.OK
        assert fleet.sh(host, f"sha256sum {placed}").split()[0] == sha
    finally:
        server.kill()


def test_a_dead_runs_intent_is_recovered_by_the_next_deploy(fleet):
    """A host whose watchdog did not survive (it rebooted while the controller was dead) still has the
    open intent on disk: the next deploy reverts it, verifies, records, and carries on."""
    host = "host1"
    fleet.deploy("--limit", host, *FAST)
    before = fleet.system(host)
    bump(fleet, host)
    grace = 25
    run_id, _ = _kill_controller_during(fleet, host, "ipex_fleet [p]robe", "--data", "bench=false",
                                        "--data", f"lease_grace={grace}", "--data", "health_timeout=60")
    fleet.sh(host, "systemctl stop 'ipex-fleet-watchdog-*'")  # as a reboot without the boot unit would end it
    assert json.loads(fleet.sh(host, "cat /var/lib/ipex-fleet/intent.json"))["run_id"] == run_id
    proc, refused = fleet.deploy("--limit", host, *FAST)
    assert proc.returncode != 0 and fleet.result(refused, host).status is Status.SKIPPED, "its lease still runs"
    assert f"run {run_id} is deploying this host" in fleet.result(refused, host).error
    time.sleep(grace)  # the dead controller's lease runs out on the host's clock
    bump(fleet, host)
    proc, next_run = fleet.deploy("--limit", host, *FAST)
    assert_ok(proc)
    assert "a dead run left intent(s)" in proc.stdout
    assert [(d["who"], d["outcome"]) for d in decisions(fleet, host, run_id)] == [("recovery", "reverted")]
    result = fleet.result(next_run, host)
    assert result.status is Status.OK and result.previous.path == before[1]


def test_commit_and_watchdog_race_has_exactly_one_winner(fleet):
    """Both claimants started together through the host agent on the real host, again and again: one
    wins each time, and the loser knows it lost."""
    from ipex_fleet.transaction import hostagent

    host = "host2"
    bump(fleet, host)
    assert_ok(fleet.deploy("--limit", host, *FAST)[0])  # the agent is in place
    gen, path, _ = fleet.system(host)
    for i in range(6):
        run_id = f"t-race-{i}-{time.monotonic_ns()}"
        token = json.loads(fleet.sh(host, hostagent.command("lock-take", "--owner", json.dumps({"run_id": run_id}),
                                                           "--for", "30")))["token"]
        intent = {"intent_id": f"{run_id}-x", "run_id": run_id, "previous": {"generation": gen, "path": path},
                  "target": {"path": path}, "mode": "switch", "profile": "/nix/var/nix/profiles/system",
                  "record": {"run_id": run_id, "phase": "revert"}}
        fleet.sh(host, hostagent.command("open", "--intent-json", json.dumps(intent), "--token", token, "--for", "0"))
        both = (f"( {hostagent.command('revert', '--intent', f'{run_id}-x', '--who', 'watchdog')} >/dev/null 2>&1 & "
                f"{hostagent.command('claim', '--intent', f'{run_id}-x', '--who', 'committed')}; wait ) 2>&1; true")
        claimed = json.loads(fleet.sh(host, both, timeout=60).splitlines()[0])
        winners = resolved(fleet, host, run_id)
        assert len(winners) == 1, winners
        if claimed.get("won"):
            assert winners == [f"{run_id}.committed"]
            fleet.sh(host, hostagent.command("lock-release", "--token", token))
        else:
            assert claimed.get("decided_by") == "watchdog" and winners == [f"{run_id}.watchdog"]
            assert reverted_by(fleet, host, run_id, 30)[0] == "reverted"
    assert fleet.system(host) == (gen, path, path)


def test_host_data_words_are_understood_or_refused_in_one_line(fleet):
    bump(fleet, "host1")
    before = fleet.system("host1")
    for data, message in (
        ("break_lock=maybe", "break_lock='maybe' is not yes or no"),
        ("magic_rollback=sometimes", "magic_rollback='sometimes' is not yes or no"),
        ("reboot=true", "reboot=true goes with mode=boot"),
        ('trusted_mirrors="http://mirror.lan/"', "trusted_mirrors='http://mirror.lan/' must be a list"),
    ):
        proc, _ = fleet.deploy("--limit", "host1", "--data", data)
        assert proc.returncode != 0
        lines = [l for l in proc.stdout.splitlines() if "pyinfra error" in l]
        assert len(lines) == 1 and message in lines[0], proc.stdout
        assert "Traceback" not in proc.stdout
    assert fleet.system("host1") == before, "nothing touched"
    proc, run_id = fleet.deploy("--limit", "host1", "--data", "bench=no", "--data", "magic_rollback=off")
    assert_ok(proc)
    result = fleet.result(run_id, "host1")
    assert result.status is Status.OK and result.bench is None, "bench=no means no benchmark"


def test_a_token_in_a_model_url_reaches_no_log_result_ledger_or_host_record(fleet, tmp_path):
    from .test_models import make_blob, start_mirror

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sha, size = make_blob(mirror, "sd.safetensors", 1)
    server, url = start_mirror(mirror)
    secret = "tok-SECRET-4711"
    try:
        def inventory(name: str) -> str:
            models = [{"kind": "checkpoints", "name": name, "url": f"{url}/{name}?token={secret}",
                       "sha256": sha, "size": size}]
            path = tmp_path / f"inv_{name.replace('.', '_')}.py"
            path.write_text(
                "from ipex_fleet.lab.inventory import lab_hosts\n"
                f"hosts = [(n, {{**d, 'models': {models!r}, 'trusted_mirrors': ['http://127.0.0.1:'],"
                f" 'bench': False, 'health_levels': [1], 'min_free_mb': 64}})"
                f" for n, d in lab_hosts({str(fleet.lab.layout.root)!r}) if n == 'host2']\n")
            return str(path)

        bump(fleet, "host2")
        good, good_run = fleet.deploy(inventory=inventory("sd.safetensors"))
        assert_ok(good)
        bump(fleet, "host2")
        bad, bad_run = fleet.deploy(inventory=inventory("missing.safetensors"))
        assert bad.returncode != 0
        result = fleet.result(bad_run, "host2")
        assert result.status is Status.ROLLED_BACK and "token=REDACTED" in result.error, result.error
        host_files = fleet.sh("host2", "cat /var/lib/ipex-fleet/deploys.jsonl; "
                                       "cat /var/lib/comfyui/models/.ipex-fleet/checkpoints/*")
        controller_files = [p.read_bytes() for p in fleet.state.rglob("*") if p.is_file()]
        for where, text in (("pyinfra output", good.stdout + bad.stdout), ("host records", host_files),
                            ("controller state and ledger", b"".join(controller_files).decode(errors="replace"))):
            assert secret not in text, f"the token reached the {where}"
        assert "token=REDACTED" in host_files, "the marker keeps where the file came from, redacted"
    finally:
        server.kill()


def test_rollback_twice_goes_further_back_never_forward(fleet):
    fleet.deploy("--limit", "host2", *FAST)
    first = fleet.system("host2")
    bump(fleet, "host2")
    fleet.deploy("--limit", "host2", *FAST)
    second = fleet.system("host2")
    bump(fleet, "host2")
    fleet.deploy("--limit", "host2", *FAST)
    third = fleet.system("host2")
    assert first[0] < second[0] < third[0]
    back, _ = fleet.deploy("--limit", "host2", deploy="deploys/rollback.py")
    assert back.returncode == 0 and fleet.system("host2") == second
    record = json.loads(fleet.sh("host2", "tail -n 1 /var/lib/ipex-fleet/deploys.jsonl"))
    assert record["phase"] == "rollback", "rollbacks are recorded with their phase"
    again, _ = fleet.deploy("--limit", "host2", deploy="deploys/rollback.py")
    assert again.returncode == 0 and fleet.system("host2") == first, "a second rollback goes further back"


@pytest.mark.parametrize("how", ["fail-percent", "prompt-no"])
def test_a_run_stopped_by_pyinfra_leaves_every_host_reverted_with_a_result(fleet, how):
    """host1's activation fails; pyinfra then ends the run between two steps (--fail-percent 0, or a
    "no" at its "continue?" prompt). host2 had switched, unchecked: it is rolled back, verified, and
    recorded, its lock released; the run exits non-zero."""
    before = {h: fleet.system(h) for h in ("host1", "host2")}
    fleet.configure("host1", "fail_activation=true")
    bump(fleet, "host1")
    bump(fleet, "host2")
    run_id = f"t-stop-{time.monotonic_ns()}"
    if how == "fail-percent":
        argv, stdin = fleet.pyinfra_argv("deploys/prod.py", "--fail-percent", "0", *FAST), None
    else:  # without -y: Enter at "Detected changes", then "n" when a host failed
        argv, stdin = [a for a in fleet.pyinfra_argv("deploys/prod.py", *FAST) if a != "-y"], "\nn\n"
    proc = subprocess.run(argv, cwd=REPO, env=fleet.env(IPEX_FLEET_RUN_ID=run_id), input=stdin, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "Over 0% of hosts failed" in proc.stdout if how == "fail-percent" else "continue?" in proc.stdout
    for h in ("host1", "host2"):
        result = fleet.result(run_id, h)
        assert result.status is Status.ROLLED_BACK, (h, result)
        assert fleet.system(h) == before[h]
        assert fleet.sh(h, "ls /var/lib/ipex-fleet/lock /var/lib/ipex-fleet/intent.json 2>/dev/null; true") == ""
    assert "the run stopped before this host's transaction finished" in fleet.result(run_id, "host2").error
