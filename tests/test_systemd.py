"""Deploys on lab hosts that run systemd, over real SSH: the path every NixOS host takes.

Activation through systemd-run, units that fail, an SSH session killed mid-activation, boot
counting across reboots, and a non-root deploy user with sudo.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from ipex_fleet.domain import Status

from .conftest import FAST, REPO, bump, destroy_checked, make_fleet, wait_for, assert_ok


@pytest.fixture(scope="module")
def fleet(fleet2):
    return fleet2


pytestmark = pytest.mark.usefixtures("healthy")


def test_activation_runs_in_a_systemd_unit_of_its_own_per_call(fleet):
    logs_before = set(fleet.sh("host1", "ls /var/lib/ipex-fleet/activation/").split())
    for _ in range(2):
        bump(fleet, "host1")
        proc, run_id = fleet.deploy("--limit", "host1", *FAST)
        assert_ok(proc)
        assert fleet.result(run_id, "host1").status is Status.OK
    new_logs = set(fleet.sh("host1", "ls /var/lib/ipex-fleet/activation/").split()) - logs_before
    units = {name.rsplit(".", 1)[0] for name in new_logs}
    assert len(units) == 2 and all(u.startswith("ipex-fleet-switch-") for u in units), new_logs
    # systemd ran them as units (its own journal says so), and they were collected afterwards.
    journal = fleet.sh("host1", "journalctl -b -o cat _PID=1")
    assert all(f"Started {u}.service" in journal for u in units)
    assert fleet.sh("host1", "systemctl list-units --all --no-legend --plain 'ipex-fleet-switch-*' | wc -l") == "0"
    assert fleet.sh("host1", "systemctl is-system-running") == "running"


def test_failing_service_shows_in_systemctl_and_rolls_back_clean(fleet):
    proc, _ = fleet.deploy("--limit", "host1", *FAST)
    before = fleet.system("host1")
    bump(fleet, "host1")
    fleet.configure("host1", "fail_service=comfyui")
    proc, run_id = fleet.deploy("--limit", "host1", *FAST)
    assert proc.returncode != 0
    result = fleet.result(run_id, "host1")
    assert result.status is Status.ROLLED_BACK
    # The probe's `units` check read `systemctl --failed` on the new generation and named the unit.
    assert result.health["checks"]["units"] == "fail"
    assert any("units" in f and "comfyui.service" in f for f in result.health["failing"]), result.health["failing"]
    assert fleet.system("host1") == before
    # After the rollback no unit has failed: the failed one was restarted from the old generation.
    assert fleet.sh("host1", "systemctl --failed --no-legend --plain | wc -l") == "0"
    assert fleet.sh("host1", "systemctl is-system-running") == "running"


def _kill_deploy_session(fleet, host: str) -> str:
    """Kill the sshd process serving the deploy's connection, from a new connection: walk up from the
    activation's systemd-run to the first sshd."""
    script = (
        "p=$(pgrep -xo systemd-run) || exit 3; "
        'while [ "$p" -gt 1 ]; do c=$(ps -o comm= -p "$p"); '
        '[ "$c" = sshd ] && { kill -9 "$p"; echo "killed $p"; exit 0; }; p=$(ps -o ppid= -p "$p" | tr -d " "); done; exit 4'
    )
    return fleet.sh(host, script)


def test_ssh_session_killed_mid_activation_leaves_a_known_generation(fleet):
    proc, _ = fleet.deploy("--limit", "host2", *FAST)
    bump(fleet, "host2")
    fleet.configure("host2", "slow_activation=4")
    run_id = "t-drop-" + str(time.monotonic_ns())
    deploy = subprocess.Popen(fleet.pyinfra_argv("deploys/prod.py", "--limit", "host2", *FAST,
                                                 "--data", "confirm_timeout=5"),
                              cwd=REPO, env=fleet.env(IPEX_FLEET_RUN_ID=run_id), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: fleet.lab.ssh("host2", "systemctl is-active --quiet 'ipex-fleet-switch-*'",
                                              check=False).ok, 60, 0.1), "the activation unit never started"
        assert _kill_deploy_session(fleet, "host2").startswith("killed")
        out, _ = deploy.communicate(timeout=180)
    finally:
        deploy.kill()
    # The activation outlived the session: it ran to its end and recorded its exit code.
    newest = fleet.sh("host2", "cd /var/lib/ipex-fleet/activation && ls -t *.rc | head -1")
    assert fleet.sh("host2", f"cat /var/lib/ipex-fleet/activation/{newest}") == "0"
    log = fleet.sh("host2", f"cat /var/lib/ipex-fleet/activation/{newest[:-3]}.log")
    assert "starting the following units" in log or "restarting the following units" in log
    # The host ends on a known generation, and the result names exactly what it runs.
    result = fleet.result(run_id, "host2")
    gen, path, running = fleet.system("host2")
    assert result.final.path == path == running and result.final.number == gen, (result, out)
    assert fleet.sh("host2", "systemctl is-system-running") == "running"


def test_fail_boot_uses_up_its_tries_then_the_previous_generation_boots(fleet):
    proc, _ = fleet.deploy("--limit", "host1", *FAST)
    previous = fleet.system("host1")
    bump(fleet, "host1")
    fleet.configure("host1", "fail_boot=true")
    proc, run_id = fleet.deploy("--limit", "host1", "--data", "mode=boot", "--data", "health_levels=[]", *FAST)
    assert_ok(proc)
    new_gen, new_path, running = fleet.system("host1")
    assert new_gen > previous[0] and running == previous[1], "mode=boot changes the profile, not what runs"
    assert f"nixos-generation-{new_gen}+3.conf" in fleet.sh("host1", "ls /boot/loader/entries")

    fleet.lab.reboot("host1")

    def fell_back() -> bool:
        got = fleet.lab.ssh("host1", "readlink -f /run/booted-system; ls /boot/loader/entries", timeout=10,
                            check=False)
        lines = got.stdout.split()
        return got.ok and lines[:1] == [previous[1]] and f"nixos-generation-{new_gen}+0-3.conf" in lines

    assert wait_for(fell_back, 120, 0.5), "the host never fell back to the previous generation"
    # What can be read on the host: the booted generation is the previous one, the profile still
    # names the new one, its entry spent 3 tries, and the journal has the failed boot checks.
    assert fleet.system("host1")[0] == new_gen
    boots = int(fleet.sh("host1", "journalctl --list-boots | tail -n +2 | wc -l"))
    assert boots >= 5  # the first, three failed tries, the fallback
    assert "lab fault fail_boot" in fleet.sh("host1", "journalctl -b -1 -u lab-boot-check -o cat")
    assert fleet.lab.ssh("host1", "systemctl is-system-running --wait", timeout=60, check=False).stdout.strip() \
        == "running"


def test_deploy_user_with_sudo_deploys_and_a_changed_host_key_is_refused(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 1, tmp_path_factory, deploy_user="deploy")
    try:
        before = fleet.system("host1")
        bump(fleet, "host1")
        proc, run_id = fleet.deploy(*FAST)
        assert_ok(proc)
        assert fleet.result(run_id, "host1").status is Status.OK
        assert fleet.system("host1")[0] == before[0] + 1
        # It logged in as `deploy` (sshd says so) and did root's work through sudo.
        assert "Accepted publickey for deploy" in fleet.sh("host1", "journalctl -u ssh -o cat")
        assert fleet.sh("host1", "stat -c %U /var/lib/ipex-fleet/deploys.jsonl") == "root"
        assert "sudo" in fleet.sh("host1", "id -nG deploy") or fleet.sh("host1", "ls /etc/sudoers.d")

        back, _ = fleet.deploy(deploy="deploys/rollback.py")
        assert_ok(back)
        assert fleet.system("host1") == before

        known = fleet.lab.layout.known_hosts
        good = known.read_text()
        other = tmp_path_factory.mktemp("key") / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        keytype, key = other.with_suffix(".pub").read_text().split()[:2]
        known.write_text(f"{fleet.spec.host('host1').address} {keytype} {key}\n")
        try:
            bump(fleet, "host1")
            refused, _ = fleet.deploy(*FAST)
        finally:
            known.write_text(good)
        assert refused.returncode != 0
        assert "host key" in refused.stdout.lower(), refused.stdout
        assert fleet.system("host1") == before, "nothing ran on a host whose key changed"
    finally:
        destroy_checked(fleet.lab)
