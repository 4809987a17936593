"""The flake's evaluation harness (tests/nixeval): every host and single module through the real
nixpkgs `lib.evalModules`, with a skeleton of the NixOS options they touch.

nixpkgs' lib is not part of this repository and cannot be fetched here: these tests run against
../shared/nixpkgs-lib/lib beside the checkout, or the lib/ directory IPEX_FLEET_NIXPKGS_LIB names
(nix-community/nixpkgs.lib), and skip with one line otherwise (in CI they fail instead).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, skip_or_fail
from .nixeval import run

# The flake as it was before issue 10: every point of the issue must fail there.
FIRST_FLAKE_COMMIT = "9e10740"

NO_LIB = (f"no nixpkgs lib: set {run.LIB_ENV} to the lib/ directory of nix-community/nixpkgs.lib "
          f"(or put it at {run.SHARED_LIB})")


@pytest.fixture
def needs_lib_fixture():
    if run.lib_path() is None:
        skip_or_fail(NO_LIB)


needs_lib = pytest.mark.usefixtures("needs_lib_fixture")


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> run.Harness:
    lib = run.lib_path()
    if lib is None:
        skip_or_fail(NO_LIB)
    return run.Harness(lib, run.pushed_copy(REPO / "flake", tmp_path_factory.mktemp("pushed")))


@needs_lib
@pytest.mark.parametrize("name", [name for _, name, _ in run.ALL_CHECKS])
def test_the_pushed_flake_passes(pushed: run.Harness, name: str):
    check = {n: c for _, n, c in run.ALL_CHECKS}[name]
    assert check(pushed) == []


@needs_lib
def test_the_pushed_flake_is_alone_and_carries_its_source(pushed: run.Harness):
    assert not (pushed.flake.parent / "src").exists()
    facts = pushed.host("cpu-01").facts
    assert facts["fleet"]["package"]["source"] == f"{pushed.flake}/_source"


@needs_lib
def test_every_point_fails_on_the_first_flake(tmp_path: Path):
    archive = subprocess.run(["git", "-C", str(REPO), "archive", FIRST_FLAKE_COMMIT, "flake"],
                             capture_output=True, timeout=60)
    if archive.returncode != 0:
        pytest.skip(f"commit {FIRST_FLAKE_COMMIT} is not in this clone's history")
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True, timeout=60)
    lib = run.lib_path()
    assert lib is not None
    results = run.run_checks(run.Harness(lib, run.pushed_copy(tmp_path / "flake", tmp_path / "pushed")))
    passing = [name for name, problems in results.items() if not problems]
    assert passing == [], f"these checks pass on the flake that could not be deployed: {passing}"


# The flake with hosts as folders, before its modules followed the nixpkgs a user pins (issue 24).
BEFORE_SHAPES_COMMIT = "2eeb9cb"


def _archived(commit: str, tmp_path: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "flake"], capture_output=True, timeout=60)
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone's history")
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True, timeout=60)
    return tmp_path / "flake"


@needs_lib
def test_the_shape_checks_fail_where_modules_assume_one_nixpkgs(tmp_path: Path):
    """Before: modelsDir set unconditionally, comfyui overridden by python3 only, pkgs.comfyui required."""
    lib = run.lib_path()
    assert lib is not None
    h = run.Harness(lib, _archived(BEFORE_SHAPES_COMMIT, tmp_path))  # as-is: its push.json names files outside
    shapes = run.check_nixpkgs_shapes(h)
    assert any(p.startswith("ollama models, comfyui(python3): arc-a770-01: ") for p in shapes), shapes
    assert any(p.startswith("ollama modelsDir, comfyui(python3Packages): arc-a770-01: ") for p in shapes), shapes
    assert not any(p.startswith("ollama modelsDir, comfyui(python3):") for p in shapes), shapes
    assert run.check_comfyui_absent(h) != []


@needs_lib
def test_every_host_on_every_nixpkgs_shape(pushed: run.Harness):
    """The facts behind the shapes check, host by host: the model directory through either option name,
    and ComfyUI's torch for the XPU hosts on both comfyui signatures."""
    for name in run.HOSTS:
        for ollama in run.OLLAMA_SHAPES:
            for comfyui in run.COMFYUI_SHAPES:
                ev = pushed.host(name, ollamaShape=ollama, comfyuiShape=comfyui)
                assert ev.error is None, (name, ollama, comfyui, ev.error)
                assert ev.facts["failedAssertions"] == [] and ev.facts["warnings"] == [], (name, ollama, comfyui)
                o = ev.facts["ollama"]
                assert o["modelsDir"] == "/var/lib/ollama/models"
                # The package chosen runs, even where the older module would override its backend away.
                assert o["execStart"] == f"{o['execPackage']} serve", (name, ollama, o)
                assert o["accelerator"] == {"xpu": "vulkan"}.get(o["fleetAccelerator"], o["fleetAccelerator"])
                c = ev.facts["comfyui"]
                assert c["torch"] == ("cpu" if c["accelerator"] == "cpu" else c["accelerator"]), (name, comfyui, c)
    absent = pushed.host("arc-a770-01", comfyuiShape="absent")
    assert [m for m in absent.facts["failedAssertions"] if "needs pkgs.comfyui" in m]


@needs_lib
def test_the_metrics_check_fails_where_the_exporter_cannot_be_reached(tmp_path: Path):
    """Before metrics.allowFrom (commit f13a0f5): the exporter's port was closed with no way to open it."""
    lib = run.lib_path()
    assert lib is not None
    problems = run.check_metrics_reachable(run.Harness(lib, _archived("f13a0f5", tmp_path)))
    assert "cpu-01: the exporter's port is opened by ''" in problems, problems
    assert any("allowFrom = [] gives no warning" in p or "allowFrom = []:" in p for p in problems), problems


@needs_lib
def test_metrics_allow_from_facts(pushed: run.Harness):
    closed = pushed.host("h100-01", variant="metrics-closed").facts
    assert closed["warnings"] == ["services.ipex-fleet.metrics.allowFrom is empty: the node exporter's port 9100 "
                                  "stays closed and nothing can scrape this host's metrics; list your Prometheus "
                                  "addresses there"]
    assert 9100 not in closed["fleet"]["firewall"]["allowedTCPPorts"]
    bad = pushed.host("h100-01", variant="metrics-bad")
    assert bad.error and "metrics.allowFrom" in bad.error and "IPv4 or IPv6 address" in bad.error


@needs_lib
def test_the_host_package_check_fails_where_hosts_got_the_controllers_package(tmp_path: Path):
    """Before the host package (commit 4b5a476): every host's closure had the controller's dependencies
    (pyproject's `controller` extra)."""
    lib = run.lib_path()
    assert lib is not None
    flake = _archived("4b5a476", tmp_path)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")  # as in a checkout
    problems = run.check_host_package(run.Harness(lib, flake))
    assert ("cpu-01: the host package depends on ['click', 'jinja2', 'paramiko', 'pydantic', 'pyinfra', 'pyyaml', "
            "'rich']") in problems, problems


def test_without_a_lib_the_harness_says_so_and_evaluates_nothing():
    env = {**os.environ, run.LIB_ENV: ""}  # empty: no lib, not even the shared one
    proc = subprocess.run([sys.executable, "-m", "tests.nixeval.run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"no nixpkgs lib given; pass --lib or set {run.LIB_ENV}" in proc.stderr
    assert "Traceback" not in proc.stderr
