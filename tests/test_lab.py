"""The lab itself: hosts are systemd machines, isolated, faults are real, every command is idempotent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from ipex_fleet.common.errors import UserError
from ipex_fleet.lab import container, faults, sshmaterial

from .conftest import BIN, make_fleet, wait_for, assert_ok


def test_hosts_are_separate_nixos_like_machines(fleet2):
    a = fleet2.sh("host1", "hostname; . /etc/os-release; echo $ID; readlink -f /run/current-system")
    b = fleet2.sh("host2", "hostname; . /etc/os-release; echo $ID; readlink -f /run/current-system")
    assert a.splitlines()[:2] == ["host1", "nixos"] and b.splitlines()[:2] == ["host2", "nixos"]
    assert a.splitlines()[2] != b.splitlines()[2], "each host has its own store and generation"
    ids = {fleet2.sh(h, "cat /etc/machine-id") for h in ("host1", "host2")}
    assert len(ids) == 2, "each host has its own machine id"
    # The stand-in services of the generation answer on the host's own address.
    assert '"version"' in fleet2.sh("host1", f"curl -s http://{fleet2.spec.host('host1').address}:11434/api/version")


def test_systemd_is_pid_1_and_the_system_is_running(fleet2):
    for h in ("host1", "host2"):
        out = fleet2.sh(h, "cat /proc/1/comm; systemctl is-system-running; systemd-detect-virt; "
                           "systemctl is-active ollama.service comfyui.service; readlink -f /run/booted-system; "
                           "readlink -f /nix/var/nix/profiles/system; journalctl --disk-usage >/dev/null && echo journal")
        comm, state, virt, ollama, comfyui, booted, profile, journal = out.splitlines()
        assert (comm, state, virt, ollama, comfyui, journal) == ("systemd", "running", "systemd-nspawn", "active",
                                                                 "active", "journal")
        assert booted == profile, "the first generation was booted, as an installed host's is"
    # sshd listens on the host's own loopback address only, never on every address.
    listening = fleet2.sh("host1", "ss -Hltn sport = :22").split()
    assert f"{fleet2.spec.host('host1').address}:22" in listening and "0.0.0.0:22" not in listening


def test_reboot_gives_a_new_boot_with_the_profiles_generation(fleet2):
    before = fleet2.sh("host2", "cat /proc/sys/kernel/random/boot_id")
    fleet2.lab.reboot("host2")
    out = fleet2.sh("host2", "cat /proc/sys/kernel/random/boot_id; readlink -f /run/booted-system; "
                             "readlink -f /nix/var/nix/profiles/system; journalctl --list-boots | tail -n +2 | wc -l")
    boot_id, booted, profile, boots = out.splitlines()
    assert boot_id != before and booted == profile and int(boots) >= 2
    assert wait_for(lambda: fleet2.lab.ssh("host2", "systemctl is-active --quiet ollama.service comfyui.service",
                                           check=False).ok, 30), "the services are back after the reboot"
    addr = fleet2.spec.host("host2").address
    assert '"version"' in fleet2.sh("host2", f"curl -s http://{addr}:11434/api/version")


def test_crash_kills_everything_then_boots_clean(fleet2):
    host = fleet2.spec.host("host1")
    before_boot = fleet2.sh("host1", "cat /proc/sys/kernel/random/boot_id; touch /run/crash-marker")
    old_init = container.init_pid(fleet2.spec, host)
    fleet2.lab.crash("host1")
    assert not os.path.exists(f"/proc/{old_init}") or container.init_pid(fleet2.spec, host) != old_init
    boot_id, marker = fleet2.sh("host1", "cat /proc/sys/kernel/random/boot_id; "
                                         "test -e /run/crash-marker && echo kept || echo gone").splitlines()
    assert boot_id != before_boot and marker == "gone"
    state = fleet2.lab.ssh("host1", "systemctl is-system-running --wait", timeout=60, check=False).stdout.strip()
    assert state == "running"


def test_guard_sees_the_hosts_packets_and_nothing_left(fleet2):
    """The nftables guard matches the hosts' cgroup: shown on a reserved loopback port, never off the machine."""
    before = fleet2.lab.leaks()
    addr, port = faults.GUARD_PROBE
    fleet2.sh("host1", f"for i in 1 2 3; do echo x > /dev/udp/{addr}/{port}; done 2>/dev/null; true")
    subprocess.run(["bash", "-c", f"echo x > /dev/udp/{addr}/{port}"], capture_output=True)  # the controller's own
    after = fleet2.lab.leaks()
    assert after["guard_probe"] - before["guard_probe"] == 3, "three packets from host1, none from the controller"
    assert after["leaks"] == 0
    status = subprocess.run([str(BIN / "ipex-fleet"), "lab", "status", "--root", str(fleet2.lab.layout.root)],
                            capture_output=True, text=True, timeout=60)
    assert "to addresses off loopback (dropped): 0" in status.stdout


def test_up_again_starts_nothing_and_keeps_generations(fleet2):
    before = fleet2.system("host1")
    assert fleet2.lab.up(2) == []
    assert fleet2.system("host1") == before


def test_host_keys_are_checked(fleet2):
    known = fleet2.lab.layout.known_hosts.read_text()
    assert fleet2.spec.host("host1").address in known
    # A wrong known_hosts entry is refused: the lab never turns checking off.
    bad = fleet2.lab.layout.root / "bad_known_hosts"
    other_key = sshmaterial.host_key_pub(fleet2.lab.layout, fleet2.spec.host("host2")).read_text().split()
    bad.write_text(f"{fleet2.spec.host('host1').address} {other_key[0]} {other_key[1]}\n")
    proc = subprocess.run(["ssh", "-F", str(fleet2.lab.layout.ssh_config), "-o", f"UserKnownHostsFile={bad}",
                           "host1", "true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "HOST IDENTIFICATION HAS CHANGED" in proc.stderr


def test_cut_drops_ssh_until_heal(fleet2):
    address = fleet2.spec.host("host2").address
    fleet2.lab.cut("host2")
    fleet2.lab.cut("host2")  # idempotent
    try:
        with pytest.raises(OSError):
            socket.create_connection((address, 22), timeout=1.5).close()
        assert fleet2.lab.status()[1].cut == "drop"
    finally:
        fleet2.lab.heal("host2")
    fleet2.lab.heal("host2")
    assert fleet2.sh("host2", "hostname") == "host2"


def test_cut_reject_refuses_at_once(fleet2):
    address = fleet2.spec.host("host2").address
    fleet2.lab.cut("host2", "reject")
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, 22), timeout=5).close()
        assert time.monotonic() - started < 1
    finally:
        fleet2.lab.heal("host2")


def test_freeze_stops_banner_then_thaw(fleet2):
    address = fleet2.spec.host("host1").address
    fleet2.lab.freeze("host1")
    try:
        assert fleet2.lab.status()[0].state == "frozen"
        with socket.create_connection((address, 22), timeout=2) as sock:
            sock.settimeout(1.5)
            with pytest.raises(socket.timeout):
                sock.recv(4)
    finally:
        fleet2.lab.thaw("host1")
    assert fleet2.sh("host1", "hostname") == "host1"


def test_exec_runs_argv_on_the_host(fleet2):
    proc = subprocess.run([str(BIN / "ipex-fleet"), "lab", "--root", str(fleet2.lab.layout.root), "exec",
                           "host2", "--", "sh", "-c", "hostname; exit 3"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3 and proc.stdout.strip() == "host2"


def test_root_works_before_and_after_the_command(fleet2):
    root = str(fleet2.lab.layout.root)
    for argv in (["lab", "--root", root, "status", "--json"], ["lab", "status", "--json", "--root", root]):
        proc = subprocess.run([str(BIN / "ipex-fleet"), *argv], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "IPEX_FLEET_LAB_ROOT": "/srv/no-such-lab"})
        assert_ok(proc)
        assert [h["name"] for h in json.loads(proc.stdout)["hosts"]] == ["host1", "host2"]


def test_cli_errors_are_one_line(fleet2):
    root = str(fleet2.lab.layout.root)
    for args, message in (
        (["config", "host9", "version=2"], "no lab host named 'host9'"),
        (["config", "host1", "colour=red"], "unknown lab setting 'colour'"),
        (["cut", "nohost"], "no lab host named"),
        (["reboot", "host7"], "no lab host named 'host7'"),
        (["up", "2", "--deploy-user", "bad name"], "is not a plain user name"),
    ):
        proc = subprocess.run([str(BIN / "ipex-fleet"), "lab", "--root", root, *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "Traceback" not in proc.stderr


def test_up_refuses_non_loopback_net(tmp_path):
    from ipex_fleet.lab import Lab

    with pytest.raises(UserError, match="loopback"):
        Lab("/srv/ipex-fleet-never").up(1, "10.0.0")
    assert not os.path.exists("/srv/ipex-fleet-never")


def test_destroy_leaves_nothing_behind(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 1, tmp_path_factory)
    lab, spec = fleet.lab, fleet.spec
    host = spec.host("host1")
    lab.cut("host1")
    pids = container.host_pids(spec, host)
    assert len(pids) >= 6  # supervisor, nspawn, systemd, journald, sshd, the services...
    cgroups = container.host_cgroups(spec, host)
    machine = container.machine_name(spec, host)
    lab.destroy()
    lab.destroy()  # idempotent
    assert not lab.layout.root.exists()
    assert all(not os.path.exists(f"/proc/{p}") for p in pids)
    assert all(not c.exists() and not c.parent.exists() for c in cgroups)
    assert str(lab.layout.root) not in open("/proc/self/mountinfo").read()
    assert not os.path.exists(f"/run/systemd/nspawn/propagate/{machine}")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert spec.nft_table not in tables
