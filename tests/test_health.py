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


# The benchmark gate's false alarms over N = 15 clean gated reruns (5 deploys of 3 hosts): at most
# FALSE_FAILS. Each case's false-alarm rate is 0.5 % (bench.stats). Other labs and test runs share the
# same two cores: a slowdown they cause (the kernel's CPU pressure high, no process of the host busy)
# is inconclusive, and an inconclusive run passes in the lab (lab_hosts: bench_inconclusive = warn). A
# fail while the gate names contention is a real slowdown, counted apart from false alarms.
FALSE_FAILS = 1


@pytest.mark.timeout(1200)  # 15 gated benchmarks, taking turns on two shared cores
def test_healthy_generations_pass_five_times_in_a_row(fleet):
    verdicts, contended_fails, false_fails = [], 0, 0
    for attempt in range(5):
        for h in ("host1", "host2", "host3"):
            bump(fleet, h)
        proc, run_id = fleet.deploy()
        results = {h: fleet.result(run_id, h) for h in ("host1", "host2", "host3")}
        verdicts += [r.bench["result"] for r in results.values() if r.bench]
        failed = [h for h, r in results.items() if r.bench and r.bench["result"] == "fail"]
        for h in failed:  # rolled back, and the error says why
            assert results[h].status is Status.ROLLED_BACK and "benchmark gate failed" in results[h].error
            if results[h].bench["shared"]:
                assert results[h].bench["shared"] in results[h].error
                contended_fails += 1
            else:
                false_fails += 1
        if failed:
            continue
        assert_ok(proc, f"attempt {attempt}")
        for h, result in results.items():
            assert result.status is Status.OK
            assert result.health["result"] in ("pass", "warn") and result.bench["result"] in ("pass", "inconclusive")
            if result.bench["result"] == "inconclusive":
                assert result.bench["inconclusive_accepted"] is True
            assert result.health["checks"]["generation"] == "pass"
    assert len(verdicts) == 15, verdicts
    print(f"15 clean gated reruns: {verdicts.count('pass')} pass, {verdicts.count('inconclusive')} inconclusive, "
          f"{verdicts.count('fail')} fail ({contended_fails} on a contended CPU, {false_fails} false alarms)")
    assert false_fails <= FALSE_FAILS, verdicts


@pytest.mark.parametrize("knob,check,message", [
    ("fail_service=ollama", "ollama", "does not answer"),
    ("fail_service=comfyui", "comfyui", "does not answer"),
    # ComfyUI without --cpu (as on a GPU host) stops at start when the accelerator is hidden, as real
    # ComfyUI does (it never answers with an empty device list): the check quotes the unit's journal.
    ("hide_accelerator=true", "comfyui",
     "comfyui.service failed; its journal ends: AssertionError: Torch not compiled with CUDA enabled"),
    # ComfyUI answers, but every job fails when it runs: level 2's own prompt names the node.
    ("fail_comfyui_jobs=true", "comfyui_run", "ComfyUI's probe prompt failed at node 1 (EmptyImage): RuntimeError"),
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
    level_1 = {"comfyui_run": "comfyui"}.get(check, check)  # the recheck after a rollback is level 1
    assert result.health["after_rollback"]["checks"][level_1] == "pass"


def test_starved_cpu_is_caught_by_the_benchmark_gate(fleet):
    before = fleet.system("host1")
    bump(fleet, "host1", "cpu_hog=true")
    proc, run_id = fleet.deploy("--limit", "host1")
    assert proc.returncode != 0
    result = fleet.result(run_id, "host1")
    assert result.status is Status.ROLLED_BACK
    assert "benchmark gate failed" in result.error and result.bench["result"] == "fail"
    failing = [c for c in result.bench["comparisons"] if c["verdict"] == "fail"]
    # Established with confidence: each failing case's whole interval below 1 - tolerance (0.75).
    assert failing and all(c["ratio"] <= 0.75 and c["ci"][1] < 0.75 and c["confidence"] >= 0.995 for c in failing)
    assert result.bench["confidence"] >= 0.995
    # ...and the verdict names the cause: the hog's processes were busy on the host's CPU.
    assert any("cpu-hog.py" in p["name"] for p in result.bench["shared_with"]), result.bench["shared_with"]
    assert "the device is shared with" in result.error
    assert fleet.system("host1") == before
    # The hog went with its generation.
    assert "cpu-hog" not in fleet.sh("host1", "ps ax -o args")


def test_with_cpu_comfyui_keeps_serving_when_the_accelerator_is_hidden(fleet):
    bump(fleet, "host3", "hide_accelerator=true", "comfyui_cpu=true")
    proc, run_id = fleet.deploy("--limit", "host3")
    result = fleet.result(run_id, "host3")
    assert result.status is Status.OK, result.error
    assert result.health["checks"]["comfyui"] == "pass" and result.health["checks"]["comfyui_run"] == "pass"
    assert_ok(proc)


def test_the_official_ollama_client_works_against_a_lab_host(fleet):
    import ollama

    client = ollama.Client(host=f"http://{fleet.spec.host('host2').address}:11434", timeout=60)
    assert client.pull("smollm2:135m").status == "success"
    assert "smollm2:135m" in {m.model for m in client.list().models}
    assert "completion" in client.show("smollm2:135m").capabilities
    assert client.chat("smollm2:135m", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}).message.content
    assert client.generate("smollm2:135m", "hi", options={"num_predict": 2}).eval_count == 2
    client.pull("nomic-embed-text")
    assert len(client.embed("nomic-embed-text", input="hi").embeddings[0]) == 16
    assert "smollm2:135m" in {m.model for m in client.ps().models}
    assert client.delete("nomic-embed-text").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nomic-embed-text")
    assert err.value.status_code == 404
