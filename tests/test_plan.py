"""`ipex-fleet plan` and `pyinfra ... --dry`: what a deploy would change, found on the lab over real
SSH, while nothing that runs on the hosts changes."""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import BIN, REPO, assert_ok

pytestmark = pytest.mark.lab


def _footprint(fleet, host: str) -> tuple:
    """What a plan must leave as it was: profile, running and booted system, lock, deploy records."""
    return (fleet.system(host), fleet.sh(host, "readlink -f /run/booted-system; ls /boot/loader/entries; "
                                             "cat /var/lib/ipex-fleet/lock 2>/dev/null; "
                                             "wc -l < /var/lib/ipex-fleet/deploys.jsonl 2>/dev/null; "
                                             "ls /var/lib/ipex-fleet/intent.json 2>/dev/null; true"))


@pytest.fixture(scope="module")
def deployed(fleet3):
    fleet3.reset()
    proc, _ = fleet3.deploy("--data", "bench=false", "--data", "health_levels=1")
    assert_ok(proc)
    return fleet3


def test_dry_on_a_deployed_lab_says_unchanged_and_switches_nothing(deployed):
    hosts = [h.name for h in deployed.spec.hosts]
    before = {h: _footprint(deployed, h) for h in hosts}
    proc, _ = deployed.deploy("--dry", "--data", "bench=false")
    assert_ok(proc)
    for h in hosts:
        assert f"[{h}] unchanged: generation {before[h][0][0]}" in proc.stdout
    assert "Set the profile and activate" not in proc.stdout  # no step of the deploy was even planned
    assert {h: _footprint(deployed, h) for h in hosts} == before


def test_plan_groups_hosts_and_flags_the_reboot_and_changes_nothing(deployed):
    hosts = [h.name for h in deployed.spec.hosts]
    deployed.configure("host1", "kernel=6.13.1")
    try:
        before = {h: _footprint(deployed, h) for h in hosts}
        proc = subprocess.run([str(BIN / "ipex-fleet"), "plan", "inventories/lab.py", "--json"], cwd=REPO,
                              env=deployed.env(), capture_output=True, text=True, timeout=300)
        assert_ok(proc)
        document = json.loads(proc.stdout)
        groups = {tuple(g["hosts"]): g["plan"] for g in document["groups"]}
        assert set(groups) == {("host1",), ("host2", "host3")}
        assert groups[("host2", "host3")]["unchanged"] is True
        change = groups[("host1",)]
        assert change["unchanged"] is False and change["reboot_needed"] is True
        assert set(change["reboot"]) == {"kernel", "initrd", "kernel-modules"}
        assert "linux-lab: 6.12.0 → 6.13.1" in change["closure"]["changed"]
        assert change["closure"]["added"] == [] and change["closure"]["removed"] == []
        assert change["closure"]["bytes_new"] > 0
        assert change["current"]["generation"] == before["host1"][0][0]
        assert {h: _footprint(deployed, h) for h in hosts} == before
        text = subprocess.run([str(BIN / "ipex-fleet"), "plan", "inventories/lab.py"], cwd=REPO,
                              env=deployed.env(), capture_output=True, text=True, timeout=300).stdout
        assert "2 group(s) of identical change" in text and "reboot needed: kernel, initrd, kernel-modules" in text
        assert "host2, host3:\n  unchanged" in text
    finally:
        deployed.configure("host1", "kernel=")
