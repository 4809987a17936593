"""A 10-host lab as an operator sees it: a rollout in an 80-column terminal (a real tmux pane, its
screen captured with wrapped lines joined back, so a line wider than 80 would show), kept as an
artifact."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import uuid

import pytest

from .conftest import BIN, REPO, destroy_checked, make_fleet, wait_for, assert_ok

HOSTS = [f"host{i}" for i in range(1, 11)]
ARTIFACTS = REPO / ".ipex-fleet" / "artifacts"


@pytest.fixture(scope="module")
def fleet(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 10, tmp_path_factory)
    yield fleet
    destroy_checked(fleet.lab)


pytestmark = pytest.mark.usefixtures("healthy")


def in_tmux(fleet, tmp_path, command: list[str], timeout: float = 480) -> tuple[int, str]:
    """Run `command` in a detached 80x50 tmux pane (its own server); return its exit code and screen."""
    socket, done = f"ipex-fleet-test-{uuid.uuid4().hex[:8]}", tmp_path / "rc"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in fleet.env().items()
                   if k in ("IPEX_FLEET_LAB_ROOT", "IPEX_FLEET_STATE", "PATH"))
    script = f"cd {shlex.quote(str(REPO))} && env {env} {shlex.join(command)}; echo $? > {done}; sleep 600"
    tmux = ["tmux", "-L", socket, "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "50", "bash", "-c", script], check=True, timeout=30)
    try:
        assert wait_for(done.exists, timeout, interval=1), "the command did not end in time"
        screen = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-S", "-10000"], capture_output=True, text=True,
                                check=True, timeout=30).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], timeout=30)
    return int(done.read_text()), screen


@pytest.mark.timeout(1200)  # ten hosts' benchmarks take turns on two cores
def test_a_ten_host_rollout_reads_in_80_columns(fleet, tmp_path):
    for host in HOSTS:
        fleet.configure(host, f"version=v{time.monotonic_ns()}")
    fleet.configure("host9", "hide_accelerator=1")  # one host of the last wave fails its health check
    rc, screen = in_tmux(fleet, tmp_path, [str(BIN / "ipex-fleet"), "rollout", "inventories/lab.py",
                                           "deploys/prod.py", "--max-fail", "1"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "rollout-10-hosts-80-columns.txt").write_text(screen)
    lines = screen.rstrip("\n").splitlines()
    assert rc == 1, screen  # a host rolled back: the run is not a success, within budget
    assert max(len(line) for line in lines) <= 80, "a line wrapped in the 80-column pane:\n" + screen
    # A line per change of each host's state, then its end, as it happened.
    for host in HOSTS:
        states = [m.group(1) for line in lines if (m := re.match(rf"\d\d:\d\d:\d\d {host} +(\S+)", line))]
        assert states[:4] == ["preflight", "pushing", "building", "switching"], (host, states)
        assert states[-1] == ("rolled_back" if host == "host9" else "ok"), (host, states)
    assert "   wave canary: 1/1 ended (ok 1)" in lines
    assert "   wave wave2: 6/6 ended (ok 5 rolled_back 1)" in lines
    # The final table: one row per host, all columns on it.
    header = lines.index(next(line for line in lines if re.match(r"WAVE +HOST +STATUS +GEN +HEALTH +BENCH +TIME$", line)))
    rows = {m.group(1): line for line in lines[header:] if (m := re.match(r"\w+ +(host\d+) ", line))}
    assert set(rows) == set(HOSTS)
    assert re.search(r"rolled_back +(\d+)→\1 +fail", rows["host9"])
    assert all(re.search(r" ok +(\d+)→(\d+) +pass .*\d+s$", rows[h]) for h in HOSTS if h != "host9")
    assert any(line.startswith("host9: Health checks on the new generation") for line in lines)
    assert re.match(r"rollout rollout-\S+: done_with_failures$", lines[-1])


@pytest.mark.timeout(1200)  # ten hosts take turns on two cores for their benchmarks (bench_lock)
def test_a_maintenance_run_with_nothing_to_do_on_ten_hosts(fleet):
    def maintain(*args: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        proc = subprocess.run([str(BIN / "ipex-fleet"), "maintain", "inventories/lab.py", *args], cwd=REPO,
                              env=fleet.env(COLUMNS="80"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=900)
        return proc, time.monotonic() - started

    first, _ = maintain("--quick-bench")  # whatever the lab left behind goes now
    assert_ok(first)
    proc, took = maintain()
    assert_ok(proc)
    run_id = re.search(r"^maintain (maintain-\S+): done$", proc.stdout, re.M).group(1)
    reports = {h: fleet.result(run_id, h).report for h in HOSTS}
    for host, report in reports.items():
        assert report["tasks"]["retention"]["deleted"] == [] and report["tasks"]["pushed"]["removed"] == [], host
        assert report["tasks"]["drift"]["quick"] is False  # the full benchmark
    (ARTIFACTS / "maintenance-10-hosts-nothing-to-do.txt").write_text(f"{took:.1f} s\n\n{proc.stdout}")
    # Every line fits 80 columns, but the report's path, which is not folded (it is copied whole).
    assert max(len(line) for line in proc.stdout.splitlines() if not line.startswith("report: ")) <= 80
