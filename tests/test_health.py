"""The health gate in the deploy, on the lab: broken generations roll back, healthy ones pass."""

from __future__ import annotations

import time

import pytest

from ipex_fleet.domain import Status

from .conftest import destroy_checked, make_fleet, assert_ok


@pytest.fixture(scope="module")
def fleet(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 3, tmp_path_factory)
    proc, _ = fleet.deploy()  # first deploy: records each host's benchmark baseline
    assert_ok(proc)
    yield fleet
    destroy_checked(fleet.lab)


@pytest.fixture(autouse=True)
def healthy(fleet):
    fleet.reset()
    yield
    fleet.reset()


def bump(fleet, host: str, *knobs: str) -> None:
    fleet.configure(host, f"version=v{time.monotonic_ns()}", *knobs)


def test_healthy_generations_pass_five_times_in_a_row(fleet):
    for attempt in range(5):
        for h in ("host1", "host2", "host3"):
            bump(fleet, h)
        proc, run_id = fleet.deploy()
        assert_ok(proc, f"attempt {attempt}")
        for h in ("host1", "host2", "host3"):
            result = fleet.result(run_id, h)
            assert result.status is Status.OK
            assert result.health["result"] in ("pass", "warn") and result.bench["result"] in ("pass", "warn")
            assert result.health["checks"]["generation"] == "pass"


@pytest.mark.parametrize("knob,check,message", [
    ("fail_service=ollama", "ollama", "does not answer"),
    ("fail_service=comfyui", "comfyui", "does not answer"),
    ("hide_accelerator=true", "comfyui", "reports no device; expected cpu"),
])
def test_broken_generation_is_rolled_back_naming_the_check(fleet, knob, check, message):
    before = fleet.system("host2")
    bump(fleet, "host2", knob)
    proc, run_id = fleet.deploy("--limit", "host2")
    assert proc.returncode != 0
    result = fleet.result(run_id, "host2")
    assert result.status is Status.ROLLED_BACK
    assert f"{check}: " in result.error and message in result.error
    assert fleet.system("host2") == before
    # The old generation was probed again after the rollback, and it is healthy.
    assert result.health["after_rollback"]["result"] in ("pass", "warn")
    assert result.health["after_rollback"]["checks"][check] == "pass"


def test_starved_cpu_is_caught_by_the_benchmark_gate(fleet):
    before = fleet.system("host1")
    bump(fleet, "host1", "cpu_hog=true")
    proc, run_id = fleet.deploy("--limit", "host1")
    assert proc.returncode != 0
    result = fleet.result(run_id, "host1")
    assert result.status is Status.ROLLED_BACK
    assert "benchmark gate failed" in result.error
    failing = [c for c in result.bench["comparisons"] if c["verdict"] == "fail"]
    assert failing and all(c["ratio"] <= 0.75 for c in failing)
    assert fleet.system("host1") == before
    # The hog went with its generation.
    assert "cpu-hog" not in fleet.sh("host1", "ps ax -o args")
