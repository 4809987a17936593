"""The host package (flake/packages/ipex-fleet-host.nix) carries none of the controller's dependencies:
its commands run here with pyinfra, paramiko, click, rich, jinja2, pydantic, gevent and yaml made
unimportable, as they are on a host built from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

BLOCKED = ("pyinfra", "paramiko", "click", "rich", "jinja2", "pydantic", "gevent", "yaml")
RUNNER = f"""
import importlib.abc, runpy, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("not in the host package: " + name)
sys.meta_path.insert(0, Blocked())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _host(*argv: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin",
                                            "IPEX_FLEET_STATE": str(tmp_path / "state")})


def test_the_blocker_blocks(tmp_path):
    proc = _host("ipex_fleet", "enroll", "--help", tmp_path=tmp_path)  # a controller command
    assert proc.returncode != 0 and "ImportError: not in the host package: " in proc.stderr


def test_probe_runs_without_the_controller(tmp_path):
    proc = _host("ipex_fleet", "probe", "--level", "1", "--json", "--accelerator", "cpu", tmp_path=tmp_path)
    assert "not in the host package" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["level"] == 1 and doc["result"] in ("pass", "warn") and doc["checks"]


@pytest.mark.parametrize("argv", [("ipex_fleet", "bench", "--help"), ("ipex_fleet", "models", "--help"),
                                  ("ipex_fleet.host.agent", "--help")])
def test_host_commands_load_without_the_controller(tmp_path, argv):
    proc = _host(*argv, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")


def test_metrics_write_without_the_controller(tmp_path):
    proc = _host("ipex_fleet", "metrics", "--textfile-dir", str(tmp_path / "prom"), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "prom" / "ipex_fleet_deploy.prom").is_file()
