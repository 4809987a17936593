"""The host agent's launcher (ipex_fleet.transaction.hostagent.launcher_text), run by a real sh: a
versioned agent is imported from its bytecode cache, the boot unit's agent.py as a script, and a
cache torn by a crash never stops the agent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ipex_fleet.host import agent as host_agent
from ipex_fleet.transaction import hostagent

VERSIONED = Path(hostagent.SCRIPT).name
# As on a host: Python writes its caches (this machine's shell may say otherwise).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """An agent folder as `hostagent.install` leaves it (the launcher for this folder, the versioned
    agent, agent.py linked to it), with this machine's python3 as the pinned interpreter."""
    folder = tmp_path / "agent"
    folder.mkdir()
    (folder / VERSIONED).write_bytes(hostagent.SOURCE)
    (folder / "agent.py").symlink_to(VERSIONED)
    (folder / "run").write_text(hostagent.launcher_text(str(folder)))
    (folder / "run").chmod(0o755)
    (folder / "python3").symlink_to(shutil.which("python3") or sys.executable)
    return folder


def status(folder: Path, script: str, *python: str) -> subprocess.CompletedProcess:
    """The agent's status through the launcher, from another folder (as over SSH)."""
    return subprocess.run([str(folder / "run"), *python, str(folder / script), "--root", str(folder.parent / "state"),
                           "status"], capture_output=True, text=True, timeout=60, cwd="/", env=ENV)


def caches(folder: Path) -> list[Path]:
    return sorted((folder / "__pycache__").glob("*.pyc")) if (folder / "__pycache__").exists() else []


def test_a_versioned_agent_is_imported_and_keeps_its_compiled_code(installed):
    got = status(installed, VERSIONED)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["lock"] is None
    [cache] = caches(installed)
    assert cache.name.startswith(Path(VERSIONED).stem + ".")
    written = cache.stat().st_mtime_ns
    # The next call reads the cache (python -v says "matches") and compiles nothing.
    verbose = subprocess.run([str(installed / "run"), "-v", "-c", hostagent.IMPORT_MAIN.format(module=Path(VERSIONED).stem), "--root",
                              str(installed.parent / "state"), "status"], capture_output=True, text=True,
                             timeout=60, cwd=str(installed), env=ENV)
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert f"{cache} matches {installed / VERSIONED}" in verbose.stderr
    assert cache.stat().st_mtime_ns == written


def test_the_boot_units_agent_py_runs_as_a_script(installed):
    got = status(installed, "agent.py")
    assert got.returncode == 0, got.stderr
    assert caches(installed) == []  # from its source alone: no cache is read or written


@pytest.mark.parametrize("torn", [b"", b"\x00" * 8, b"not a header at all, garbage"])
def test_a_torn_cache_falls_back_to_the_source(installed, torn):
    assert status(installed, VERSIONED).returncode == 0
    [cache] = caches(installed)
    cache.write_bytes(torn)
    got = status(installed, VERSIONED)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["lock"] is None


def test_the_agent_starts_its_units_through_its_launcher_where_it_has_one(installed, tmp_path):
    script = str(installed / VERSIONED)
    agent = host_agent.Agent(str(tmp_path / "state"), script=script)
    assert agent.again("watch", "--intent", "i") == [str(installed / "run"), script, "--root",
                                                      str(tmp_path / "state"), "watch", "--intent", "i"]
    alone = tmp_path / "alone.py"
    alone.write_bytes(hostagent.SOURCE)
    assert host_agent.Agent("/r", script=str(alone)).again("finish")[:3] == [sys.executable, "-S", str(alone)]
