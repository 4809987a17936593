"""Fixtures: real labs (systemd-nspawn hosts with systemd, sshd and Nix) on loopback, one /24 each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipex_fleet.domain import HostResult
from ipex_fleet.lab import Lab
from ipex_fleet.lab.layout import LabSpec

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
_net_locks: list = []


def _free_net() -> str:
    """A loopback /24 no other test process on this machine holds (each holds its nets' flocks for its
    whole life: parallel pytest runs never share addresses)."""
    import fcntl

    for n in range(20, 60):
        handle = open(f"/tmp/.ipex-fleet-test-net-{n}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _net_locks.append(handle)
        return f"127.0.{n}"
    raise RuntimeError("no free loopback /24 for a test lab (127.0.20-59 all held)")


# CI (.ci/run) sets this: there a test that cannot run is a broken suite, not a skip.
IN_CI = os.environ.get("IPEX_FLEET_CI") == "1"


def lab_available() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip a test that cannot run here; in CI, fail it loudly instead (a skip there hides a broken suite)."""
    if IN_CI:
        pytest.fail(f"cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def tail(text: str | bytes | None, limit: int = 4000) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text if len(text) <= limit else "[...]" + text[-limit:]


def assert_ok(proc: subprocess.CompletedProcess, what: str = "") -> subprocess.CompletedProcess:
    """Assert that a command worked; on failure show its exit code and the tail of what it printed."""
    if proc.returncode != 0:
        argv = proc.args if isinstance(proc.args, str) else " ".join(map(str, proc.args))
        parts = [f"{what or argv[:200]} exited {proc.returncode}"]
        if proc.stdout:
            parts.append("--- output ---\n" + tail(proc.stdout))
        if proc.stderr:
            parts.append("--- stderr ---\n" + tail(proc.stderr))
        pytest.fail("\n".join(parts), pytrace=False)
    return proc


@dataclass
class Fleet:
    """A running lab plus the controller state one test uses."""

    lab: Lab
    state: Path

    @property
    def spec(self) -> LabSpec:
        return self.lab.spec

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(IPEX_FLEET_LAB_ROOT=str(self.lab.layout.root), IPEX_FLEET_STATE=str(self.state),
                   PATH=f"{BIN}:{env.get('PATH', '')}")
        env.update(extra)
        return env

    def pyinfra_argv(self, deploy: str, *args: str, inventory: str = "inventories/lab.py") -> list[str]:
        return [str(BIN / "pyinfra"), inventory, deploy, "-y", *args]

    def deploy(self, *args: str, deploy: str = "deploys/prod.py", inventory: str = "inventories/lab.py",
               timeout: float = 240) -> tuple[subprocess.CompletedProcess, str]:
        run_id = "t-" + uuid.uuid4().hex[:8]
        proc = subprocess.run(self.pyinfra_argv(deploy, *args, inventory=inventory), cwd=REPO,
                              env=self.env(IPEX_FLEET_RUN_ID=run_id), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        return proc, run_id

    def result(self, run_id: str, host: str) -> HostResult:
        path = self.state / "runs" / run_id / "hosts" / f"{host}.json"
        return HostResult.from_json(json.loads(path.read_text()))

    def sh(self, host: str, command: str, timeout: float = 60) -> str:
        return self.lab.ssh(host, command, timeout=timeout).stdout.strip()

    def system(self, host: str) -> tuple[int, str, str]:
        """(profile generation number, profile store path, running system), read on the host."""
        out = self.sh(host, "readlink /nix/var/nix/profiles/system; readlink -f /nix/var/nix/profiles/system; "
                            "readlink -f /run/current-system").splitlines()
        return int(out[0].split("-")[1]), out[1], out[2]

    def host_path(self, host: str, path: str) -> Path:
        """Where a file the host writes at `path` lies on the controller: its overlay's upper layer."""
        return self.lab.layout.host_dir(host) / "upper" / path.lstrip("/")

    def configure(self, host: str, *assignments: str) -> None:
        self.lab.config(host, list(assignments))

    def reset(self) -> None:
        """Back to healthy settings (a fresh version each time, so the next deploy changes hosts)."""
        for h in self.spec.hosts:
            settings_path = self.lab.layout.host_settings(h.name)
            data = json.loads(settings_path.read_text())
            settings_path.write_text(json.dumps({"address": data["address"], "version": data["version"]}))
            self.lab.heal(h.name)


def destroy_checked(lab: Lab) -> None:
    """Destroy a lab, failing the test run if any of its hosts sent a packet off loopback. The count
    is also appended to $IPEX_FLEET_LEAK_LOG, which CI sums after the suite."""
    leaks = lab.leaks()["leaks"] if lab.layout.spec_file.exists() else 0
    if os.environ.get("IPEX_FLEET_LEAK_LOG") and lab.layout.spec_file.exists():
        with open(os.environ["IPEX_FLEET_LEAK_LOG"], "a") as log:
            log.write(json.dumps({"lab": str(lab.layout.root), "leaks": leaks}) + "\n")
    lab.destroy()
    assert leaks == 0, f"the lab at {lab.layout.root} dropped {leaks} packet(s) to addresses off loopback"


@pytest.fixture(scope="session")
def lab_roots():
    roots: list[Lab] = []
    yield roots
    for lab in roots:
        destroy_checked(lab)


def make_fleet(lab_roots: list, count: int, tmp_path_factory, deploy_user: str | None = None) -> Fleet:
    reason = lab_available()
    if reason:
        skip_or_fail(reason)
    net = _free_net()
    root = f"/srv/ipex-fleet-test-{os.getpid()}-{net.rsplit('.', 1)[1]}"
    lab = Lab(root)
    lab.destroy()
    lab_roots.append(lab)
    lab.up(count, net, deploy_user)
    return Fleet(lab, tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def fleet2(lab_roots, tmp_path_factory) -> Fleet:
    fleet = make_fleet(lab_roots, 2, tmp_path_factory)
    yield fleet
    destroy_checked(fleet.lab)


def bump(fleet: Fleet, host: str) -> None:
    """A new version for `host`: its next deploy builds a new generation."""
    fleet.configure(host, f"version=v{time.monotonic_ns()}")


@pytest.fixture(scope="module")
def fleet3(lab_roots, tmp_path_factory) -> Fleet:
    fleet = make_fleet(lab_roots, 3, tmp_path_factory)
    yield fleet
    destroy_checked(fleet.lab)


# Deploys in tests skip the benchmark unless they test it.
FAST = ("--data", "bench=false")


@pytest.fixture
def healthy(fleet):
    """Healthy lab settings before and after each test (modules use it with `usefixtures`; `fleet`
    is whichever fleet the module names)."""
    fleet.reset()
    yield
    fleet.reset()


def wait_for(predicate, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
