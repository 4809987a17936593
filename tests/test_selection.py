"""A --limit that selects no host is one line and exit 2, before anything connects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipex_fleet.fleet.selection import unmatched

ROOT = Path(__file__).resolve().parents[1]
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
GROUPS = {"canary": ["a1"], "wave1": ["a2", "b1"], "wave2": []}


@pytest.mark.parametrize("patterns, missing", [
    (["a1"], []), (["a*"], []), (["canary", "b1"], []), (["prod"], []),
    (["nosuchhost"], ["nosuchhost"]), (["wave2"], ["wave2"]), (["a1", "z*"], ["z*"]),
])
def test_unmatched_follows_pyinfra_matching(patterns: list[str], missing: list[str]) -> None:
    assert unmatched(patterns, GROUPS, "prod") == missing


def _pyinfra(*args: str, inventory: str = "inventories/prod.py") -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYINFRA, inventory, "deploys/prod.py", "-y", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYINFRA_PROGRESS": "off"})


def test_limit_matching_no_host_is_one_line_before_connecting() -> None:
    proc = _pyinfra("--limit", "nosuchhost")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.startswith("ipex-fleet:")]
    assert lines == [lines[0]] and "--limit nosuchhost matches no host" in lines[0]
    assert "Connecting" not in proc.stderr + proc.stdout


def test_inventory_without_hosts_is_refused(tmp_path: Path) -> None:
    inventory = tmp_path / "empty.py"
    inventory.write_text("from ipex_fleet.fleet.selection import refuse_empty_selection\n"
                         "canary = []\nrefuse_empty_selection(globals())\n")
    proc = _pyinfra(inventory=str(inventory))
    assert proc.returncode == 2
    assert "lists no host" in proc.stderr and "Traceback" not in proc.stderr


def test_a_matching_limit_goes_on_to_connect(tmp_path: Path) -> None:
    # A loopback port that nothing listens on: pyinfra gets past the inventory and fails to
    # connect, which proves the guard let a matching limit through (and nothing leaves the machine).
    inventory = tmp_path / "one.py"
    inventory.write_text("from ipex_fleet.fleet.selection import refuse_empty_selection\n"
                         "canary = [('cpu-01', {'ssh_hostname': '127.0.0.1', 'ssh_port': 9})]\n"
                         "refuse_empty_selection(globals())\n")
    proc = _pyinfra("--limit", "cpu-*", inventory=str(inventory))
    assert "matches no host" not in proc.stderr
    assert "Connecting" in proc.stderr + proc.stdout
    assert proc.returncode != 0
