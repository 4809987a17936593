"""The lab itself: hosts are isolated, faults are real, every command is idempotent."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from ipex_fleet.errors import UserError
from ipex_fleet.lab import namespaces

from .conftest import BIN, make_fleet


@pytest.fixture(scope="module")
def fleet2(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 2, tmp_path_factory)
    yield fleet
    fleet.lab.destroy()


def test_hosts_are_separate_nixos_like_machines(fleet2):
    a = fleet2.sh("host1", "hostname; . /etc/os-release; echo $ID; readlink -f /run/current-system")
    b = fleet2.sh("host2", "hostname; . /etc/os-release; echo $ID; readlink -f /run/current-system")
    assert a.splitlines()[:2] == ["host1", "nixos"] and b.splitlines()[:2] == ["host2", "nixos"]
    assert a.splitlines()[2] != b.splitlines()[2], "each host has its own store and generation"
    # The stand-in services of the generation answer on the host's own address.
    assert '"version"' in fleet2.sh("host1", f"curl -s http://{fleet2.spec.host('host1').address}:11434/api/version")


def test_up_again_starts_nothing_and_keeps_generations(fleet2):
    before = fleet2.system("host1")
    assert fleet2.lab.up(2) == []
    assert fleet2.system("host1") == before


def test_host_keys_are_checked(fleet2):
    known = fleet2.lab.layout.known_hosts.read_text()
    assert fleet2.spec.host("host1").address in known
    # A wrong known_hosts entry is refused: the lab never turns checking off.
    bad = fleet2.lab.layout.root / "bad_known_hosts"
    other_key = (fleet2.lab.layout.host_dir("host2") / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
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


def test_cli_errors_are_one_line(fleet2):
    root = str(fleet2.lab.layout.root)
    for args, message in (
        (["config", "host9", "version=2"], "no lab host named 'host9'"),
        (["config", "host1", "colour=red"], "unknown lab setting 'colour'"),
        (["cut", "nohost"], "no lab host named"),
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
    lab = fleet.lab
    lab.cut("host1")
    pid = namespaces.unshare_pid(lab.layout, lab.spec.host("host1"))
    inner = namespaces.namespace_pids(lab.layout, lab.spec.host("host1"))
    assert pid and len(inner) >= 3  # sshd plus the two services
    table = lab.spec.nft_table
    lab.destroy()
    lab.destroy()  # idempotent
    assert not lab.layout.root.exists()
    assert all(not os.path.exists(f"/proc/{p}") for p in [pid, *inner])
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert table not in tables
