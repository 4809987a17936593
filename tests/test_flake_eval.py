"""The flake's evaluation harness (tests/nixeval): every host and single module through the real
nixpkgs `lib.evalModules`, with a skeleton of the NixOS options they touch.

nixpkgs' lib is not part of this repository and cannot be fetched here: these tests run against
../shared/nixpkgs-lib/lib beside the checkout, or the lib/ directory IPEX_FLEET_NIXPKGS_LIB names
(nix-community/nixpkgs.lib), and skip with one line otherwise (in CI they fail instead).
"""

from __future__ import annotations

import os
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


def test_without_a_lib_the_harness_says_so_and_evaluates_nothing():
    env = {**os.environ, run.LIB_ENV: ""}  # empty: no lib, not even the shared one
    proc = subprocess.run([sys.executable, "-m", "tests.nixeval.run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"no nixpkgs lib given; pass --lib or set {run.LIB_ENV}" in proc.stderr
    assert "Traceback" not in proc.stderr
