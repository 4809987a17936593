"""ComfyUI's level-2 checks against the lab's ComfyUI stand-in, run as a process on loopback: a tiny
prompt run end to end and read back from /history/{id}; the recent jobs all failing fails; a ComfyUI
that does not answer is reported with its unit's journal."""

from __future__ import annotations

import json
import urllib.request

import pytest

from ipex_fleet.host.fleetconfig import FleetConfig, ServiceConfig
from ipex_fleet.host.probe import checks, comfyui
from ipex_fleet.host.probe.journal import UnitTail
from ipex_fleet.host.probe.model import Result

from .test_workflows import start


def service(url: str) -> ServiceConfig:
    return ServiceConfig(url=url, models="/nonexistent", unit="comfyui.service")


@pytest.fixture
def healthy(tmp_path):
    proc, url = start(tmp_path, "--cpu")
    yield url
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def failing(tmp_path):
    proc, url = start(tmp_path, "--cpu", "--lab-fail-jobs")
    yield url
    proc.kill()
    proc.wait(timeout=10)


def test_a_healthy_comfyui_runs_the_tiny_prompt_end_to_end(healthy):
    outcome = comfyui.check_run(service(healthy))
    assert outcome.result is Result.PASS, outcome
    entry = json.loads(urllib.request.urlopen(f"{healthy}/history/{outcome.data['prompt_id']}", timeout=10).read())
    assert entry[outcome.data["prompt_id"]]["status"]["status_str"] == "success"  # it really ran
    assert comfyui.check_recent(service(healthy)).result is Result.PASS
    # Each run is a new prompt (its own colour): ComfyUI would answer a repeat from its cache.
    again = comfyui.check_run(service(healthy))
    history = json.loads(urllib.request.urlopen(f"{healthy}/history", timeout=10).read())
    colours = {history[o.data["prompt_id"]]["prompt"][2]["1"]["inputs"]["color"] for o in (outcome, again)}
    assert len(colours) == 2


def test_a_failing_job_fails_level_2_naming_the_node_and_the_exception(failing):
    outcome = comfyui.check_run(service(failing))
    assert outcome.result is Result.FAIL
    assert outcome.message == ("ComfyUI's probe prompt failed at node 1 (EmptyImage): RuntimeError: EmptyImage "
                               "failed on the device (lab fault fail_comfyui_jobs)")


def test_the_recent_jobs_all_failing_fails_and_a_few_do_not(failing):
    for n in range(comfyui.RECENT - 1):
        comfyui.check_run(service(failing))
    few = comfyui.check_recent(service(failing))
    assert few.result is Result.PASS and few.data == {"jobs": comfyui.RECENT - 1, "errored": comfyui.RECENT - 1}
    comfyui.check_run(service(failing))
    outcome = comfyui.check_recent(service(failing))
    assert outcome.result is Result.FAIL
    assert outcome.message == (f"the last {comfyui.RECENT} ComfyUI jobs all failed; the latest at node 1 (EmptyImage): "
                               "RuntimeError: EmptyImage failed on the device (lab fault fail_comfyui_jobs)")


def test_a_prompt_that_never_runs_is_a_failure_within_the_wait(healthy, monkeypatch):
    monkeypatch.setattr(comfyui, "TINY_PROMPT", {"1": {"class_type": "EmptyImage", "inputs": {
        "width": 64, "height": 64, "batch_size": 1, "color": 0}}})  # no output node: refused at once
    outcome = comfyui.check_run(service(healthy))
    assert outcome.result is Result.FAIL and "did not queue the probe's prompt: HTTP 400" in outcome.message
    assert "prompt_no_outputs" in outcome.message


def test_a_comfyui_that_does_not_answer_is_reported_with_its_journal(monkeypatch):
    tail = UnitTail("comfyui.service", "failed", ("Traceback (most recent call last):", "  ...",
                                                  "AssertionError: Torch not compiled with CUDA enabled"))
    monkeypatch.setattr(checks, "unit_tail", lambda unit: tail)
    exp = checks.Expectations(accelerator="cpu", config=FleetConfig("h", services={
        "comfyui": service("http://127.0.0.1:9")}))
    outcome = checks.check_comfyui(exp, {})
    assert outcome.result is Result.FAIL
    assert outcome.message.startswith("ComfyUI: http://127.0.0.1:9/system_stats does not answer")
    assert outcome.message.endswith("; comfyui.service failed; its journal ends: AssertionError: Torch not compiled "
                                    "with CUDA enabled")
    assert outcome.data["journal"][-1] == "AssertionError: Torch not compiled with CUDA enabled"


def test_without_systemd_a_dead_service_says_to_check_its_unit(monkeypatch):
    monkeypatch.setattr(checks, "unit_tail", lambda unit: None)
    exp = checks.Expectations(config=FleetConfig("h", services={"comfyui": service("http://127.0.0.1:9")}))
    assert checks.check_comfyui(exp, {}).message.endswith("; check the comfyui.service unit")
