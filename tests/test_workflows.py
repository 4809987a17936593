"""The example ComfyUI workflows (flake/workflows) are valid API-format prompts: the lab's ComfyUI
stand-in accepts them on POST /prompt, and refuses broken ones with node_errors, as ComfyUI 0.3.64
does (REFERENCE.md); it queues and runs what it accepts, records the outcome in /history, and
starts or stops as ComfyUI does when the accelerator is hidden."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO

WORKFLOWS = REPO / "flake" / "workflows"
STAND_IN = REPO / "src" / "ipex_fleet" / "lab" / "labpkgs" / "services" / "comfyui.py"
FILES = ("models/checkpoints/v1-5-pruned-emaonly.safetensors",
         "models/controlnet/control_v11p_sd15_canny.safetensors", "input/controlnet-input.png")


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    state = tmp_path_factory.mktemp("comfyui")
    for f in FILES:
        (state / f).parent.mkdir(parents=True, exist_ok=True)
        (state / f).write_bytes(b"lab")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(STAND_IN), "--host", "127.0.0.1", "--port", str(port),
                             "--state", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/queue", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    yield url, state
    proc.terminate()
    proc.wait(timeout=10)


def post(url: str, prompt: dict, route: str = "/prompt") -> tuple[int, dict]:
    req = urllib.request.Request(url + route, data=json.dumps({"prompt": prompt}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text())


@pytest.mark.parametrize("name", ["txt2img.json", "controlnet-canny.json"])
@pytest.mark.parametrize("route", ["/prompt", "/api/prompt"])
def test_the_stand_in_accepts_each_example_workflow(comfyui, name, route):
    status, body = post(comfyui[0], workflow(name), route)
    assert status == 200, body
    assert body["node_errors"] == {} and body["prompt_id"]


def test_every_example_is_api_format():
    names = sorted(p.name for p in WORKFLOWS.glob("*.json"))
    assert names == ["controlnet-canny.json", "txt2img.json"]
    for name in names:
        prompt = workflow(name)
        assert all(isinstance(k, str) and set(v) == {"class_type", "inputs"} for k, v in prompt.items())


def test_object_info_lists_the_node_types_with_their_inputs(comfyui):
    info = json.loads(urllib.request.urlopen(comfyui[0] + "/object_info", timeout=10).read())
    used = {n["class_type"] for name in ("txt2img.json", "controlnet-canny.json") for n in workflow(name).values()}
    assert used <= set(info)
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["v1-5-pruned-emaonly.safetensors"]
    assert info["SaveImage"]["output_node"] is True


def _broken(change) -> dict:
    prompt = copy.deepcopy(workflow("txt2img.json"))
    change(prompt)
    return prompt


# As ComfyUI 0.3.64 answers them (REFERENCE.md): a link to a missing node raises inside validation and
# is reported on the node that holds the link as exception_during_inner_validation.
@pytest.mark.parametrize("change,node,kind", [
    (lambda p: p["3"]["inputs"].pop("model"), "3", "required_input_missing"),
    (lambda p: p["8"]["inputs"].update(vae=["4", 0]), "8", "return_type_mismatch"),
    (lambda p: p["8"]["inputs"].update(samples=["99", 0]), "8", "exception_during_inner_validation"),
    (lambda p: p["8"]["inputs"].update(samples=["3", 5]), "8", "exception_during_inner_validation"),
    (lambda p: p["8"]["inputs"].update(samples=["3"]), "8", "bad_linked_input"),
    (lambda p: p["3"]["inputs"].update(steps=0), "3", "value_smaller_than_min"),
    (lambda p: p["3"]["inputs"].update(steps="twenty"), "3", "invalid_input_type"),
    (lambda p: p["3"]["inputs"].update(sampler_name="warp"), "3", "value_not_in_list"),
    (lambda p: p["4"]["inputs"].update(ckpt_name="missing.safetensors"), "4", "value_not_in_list"),
])
def test_a_broken_workflow_is_refused_with_node_errors(comfyui, change, node, kind):
    status, body = post(comfyui[0], _broken(change))
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert [e["type"] for e in body["node_errors"][node]["errors"]] == [kind]
    assert body["node_errors"][node]["dependent_outputs"] == ["9"]


def test_a_link_to_a_missing_node_names_it_as_comfyui_does(comfyui):
    status, body = post(comfyui[0], _broken(lambda p: p["8"]["inputs"].update(samples=["99", 0])))
    error = body["node_errors"]["8"]["errors"][0]
    assert status == 400 and error["message"] == "Exception when validating inner node"
    assert error["details"] == "'99'" and error["extra_info"]["exception_type"] == "KeyError"
    assert body["node_errors"]["8"]["class_type"] == "VAEDecode"


@pytest.mark.parametrize("change,kind", [
    (lambda p: p.pop("9"), "prompt_no_outputs"),
    (lambda p: p.clear(), "prompt_no_outputs"),
    (lambda p: p["6"].update(class_type="NoSuchNode"), "invalid_prompt"),
    (lambda p: p["6"].pop("class_type"), "invalid_prompt"),
])
def test_a_prompt_that_cannot_run_is_refused(comfyui, change, kind):
    status, body = post(comfyui[0], _broken(change))
    assert status == 400 and body["error"]["type"] == kind and body["node_errors"] == {}


def test_no_prompt_at_all_is_no_prompt(comfyui):
    req = urllib.request.Request(comfyui[0] + "/prompt", data=b"{}", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    body = json.loads(err.value.read())
    assert err.value.code == 400 and body["error"]["type"] == "no_prompt" and body["node_errors"] == {}


@pytest.mark.parametrize("change", [
    lambda p: p["3"]["inputs"].update(steps="20"),      # "20" -> 20
    lambda p: p["3"]["inputs"].update(steps=20.7),      # 20.7 -> 20
    lambda p: p["3"]["inputs"].update(steps=True),      # True -> 1
    lambda p: p["3"]["inputs"].update(cfg="7.5"),       # "7.5" -> 7.5
    lambda p: p["6"]["inputs"].update(text=42),         # anything -> str
    lambda p: p["3"]["inputs"].update(sampler_name="lms", scheduler="kl_optimal"),
    lambda p: p["3"]["inputs"].update(model="not a link"),  # a constant where a link goes: accepted
])
def test_values_comfyui_converts_or_accepts_are_accepted(comfyui, change):
    status, body = post(comfyui[0], _broken(change))
    assert status == 200 and body["node_errors"] == {}, body


def test_ksampler_lists_comfyuis_samplers_and_schedulers(comfyui):
    info = json.loads(urllib.request.urlopen(comfyui[0] + "/object_info/KSampler", timeout=10).read())
    required = info["KSampler"]["input"]["required"]
    assert len(required["sampler_name"][0]) == 42 and {"lms", "uni_pc_bh2", "dpmpp_2m_sde"} <= set(required["sampler_name"][0])
    assert len(required["scheduler"][0]) == 9 and "kl_optimal" in required["scheduler"][0]
    assert list(info) == ["KSampler"]
    assert json.loads(urllib.request.urlopen(comfyui[0] + "/api/object_info/NoSuchNode", timeout=10).read()) == {}


def test_a_missing_input_image_fails_loadimages_own_validation(comfyui):
    prompt = copy.deepcopy(workflow("controlnet-canny.json"))
    loader = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    prompt[loader]["inputs"]["image"] = "gone.png"
    status, body = post(comfyui[0], prompt)
    error = body["node_errors"][loader]["errors"][0]
    assert status == 400 and error["type"] == "custom_validation_failed"
    assert error["details"] == "image - Invalid image file: gone.png"


def test_one_valid_and_one_invalid_output_runs_the_valid_one(comfyui):
    prompt = workflow("txt2img.json")
    prompt["20"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    prompt["21"] = {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}
    status, body = post(comfyui[0], prompt)
    assert status == 200, body
    assert body["node_errors"]["21"]["errors"][0]["type"] == "exception_during_validation"
    entry = wait_for(comfyui[0], body["prompt_id"])
    assert entry["status"]["status_str"] == "success" and sorted(entry["outputs"]) == ["20", "9"]
    assert sorted(entry["prompt"][4]) == ["20", "9"]  # only the valid outputs were queued


def wait_for(url: str, prompt_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = json.loads(urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=10).read())
        if entry:
            return entry[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"{prompt_id} never finished")


def test_a_queued_prompt_runs_and_its_history_says_so(comfyui):
    url, _ = comfyui
    numbers = []
    for i in range(4):  # each ~0.3 s to run (its own seed: not from the cache): the queue holds them
        status, body = post(url, _broken(lambda p: p["3"]["inputs"].update(steps=100, seed=time.time_ns() + i)))
        assert status == 200
        numbers.append(body["number"])
    assert numbers == sorted(numbers) and len(set(numbers)) == 4  # each prompt its own number
    queue = json.loads(urllib.request.urlopen(url + "/queue", timeout=10).read())
    entries = queue["queue_running"] + queue["queue_pending"]
    assert entries and all(len(e) == 5 and e[0] in numbers for e in entries)  # [number, id, prompt, extra, outputs]
    entry = wait_for(url, body["prompt_id"])
    status = entry["status"]
    assert status["status_str"] == "success" and status["completed"] is True
    assert [m[0] for m in status["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    image = entry["outputs"]["9"]["images"][0]
    prefix = workflow("txt2img.json")["9"]["inputs"]["filename_prefix"]
    assert image["type"] == "output" and re.fullmatch(rf"{prefix}_\d{{5}}_\.png", image["filename"]), image
    assert json.loads(urllib.request.urlopen(url + "/history/no-such-id", timeout=10).read()) == {}
    recent = json.loads(urllib.request.urlopen(url + "/history?max_items=2", timeout=10).read())
    assert list(recent)[-1] == body["prompt_id"] and len(recent) == 2


def test_free_answers_200(comfyui):
    req = urllib.request.Request(comfyui[0] + "/free", data=json.dumps({"unload_models": True, "free_memory": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b""


def test_a_constant_where_a_link_goes_fails_when_the_node_runs(comfyui):
    status, body = post(comfyui[0], _broken(lambda p: p["3"]["inputs"].update(model="not a link")))
    assert status == 200
    entry = wait_for(comfyui[0], body["prompt_id"])
    error = dict(entry["status"]["messages"])["execution_error"]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert error["node_id"] == "3" and error["node_type"] == "KSampler" and error["exception_type"] == "AttributeError"


def start(state: Path, *flags: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(STAND_IN), "--host", "127.0.0.1", "--port", str(port),
                             "--state", str(state), *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/queue", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    return proc, url


def test_the_fail_jobs_knob_fails_each_job_at_its_sampler(tmp_path):
    for f in FILES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"lab")
    proc, url = start(tmp_path, "--cpu", "--lab-fail-jobs")
    try:
        status, body = post(url, workflow("txt2img.json"))
        assert status == 200
        entry = wait_for(url, body["prompt_id"])
    finally:
        proc.kill()
        proc.wait(timeout=10)
    error = dict(entry["status"]["messages"])["execution_error"]
    assert entry["status"]["status_str"] == "error" and "execution_success" not in dict(entry["status"]["messages"])
    assert error["node_id"] == "3" and error["node_type"] == "KSampler" and error["exception_type"] == "RuntimeError"
    assert set(error["executed"]) == {"4", "5", "6", "7"}  # what ran before the sampler


HIDDEN = {"IPEX_FLEET_LAB_HIDE_ACCELERATOR": "1", "CUDA_VISIBLE_DEVICES": "-1"}


def test_with_cpu_a_hidden_accelerator_still_reports_the_cpu(tmp_path):
    proc, url = start(tmp_path, "--cpu", env=HIDDEN)
    try:
        stats = json.loads(urllib.request.urlopen(url + "/system_stats", timeout=10).read())
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert [d["type"] for d in stats["devices"]] == ["cpu"] and "--cpu" in stats["system"]["argv"]


def test_without_cpu_a_hidden_accelerator_stops_comfyui_at_start(tmp_path):
    proc, _ = start(tmp_path, env=HIDDEN)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert "get_torch_device" in err.decode() and err.decode().splitlines()[-1] == \
        "AssertionError: Torch not compiled with CUDA enabled"


def test_a_host_without_the_model_files_refuses_the_workflow(comfyui, tmp_path):
    url, state = comfyui
    ckpt = state / FILES[0]
    ckpt.rename(tmp_path / "ckpt")
    try:
        status, body = post(url, workflow("txt2img.json"))
    finally:
        (tmp_path / "ckpt").rename(ckpt)
    assert status == 400 and body["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"


def ws_connect(url: str, client_id: str) -> socket.socket:
    """A minimal WebSocket client (RFC 6455 handshake; the server's frames are unmasked)."""
    import base64

    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def ws_messages(sock: socket.socket) -> Iterator[dict]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the server closed the socket"
            data += chunk
        return data

    while True:
        first, second = exactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(exactly(8), "big")
        payload = exactly(length)
        if first & 0x0F == 0x1:
            yield json.loads(payload)


def test_ws_sends_comfyuis_progress_messages_to_the_prompts_client(comfyui):
    sock = ws_connect(comfyui[0], "probe-1")
    try:
        messages = ws_messages(sock)
        first = next(messages)
        assert first["type"] == "status" and first["data"]["sid"] == "probe-1"
        assert "queue_remaining" in first["data"]["status"]["exec_info"]
        prompt = _broken(lambda p: p["3"]["inputs"].update(steps=3))
        req = urllib.request.Request(comfyui[0] + "/prompt", data=json.dumps({"prompt": prompt, "client_id": "probe-1"}).encode(),
                                     headers={"Content-Type": "application/json"})
        prompt_id = json.loads(urllib.request.urlopen(req, timeout=10).read())["prompt_id"]
        seen = []
        for message in messages:
            if message["type"] != "status":
                seen.append(message)
            if message["type"] == "executing" and message["data"]["node"] is None:
                break
    finally:
        sock.close()
    kinds = [m["type"] for m in seen]
    assert kinds[:2] == ["execution_start", "execution_cached"] and kinds[-2:] == ["execution_success", "executing"]
    assert all(m["data"]["prompt_id"] == prompt_id for m in seen)
    assert [m["data"]["value"] for m in seen if m["type"] == "progress"] == [1, 2, 3]
    assert {m["data"]["node"] for m in seen if m["type"] == "executing"} >= {"3", "8", "9", None}  # the rest cached
    executed = next(m["data"] for m in seen if m["type"] == "executed")
    assert executed["node"] == "9" and executed["output"]["images"][0]["type"] == "output"


def test_an_unchanged_prompt_queued_again_is_answered_from_the_cache(comfyui):
    prompt = _broken(lambda p: p["3"]["inputs"].update(seed=4242))
    first = wait_for(comfyui[0], post(comfyui[0], prompt)[1]["prompt_id"])
    again = wait_for(comfyui[0], post(comfyui[0], prompt)[1]["prompt_id"])
    changed = wait_for(comfyui[0], post(comfyui[0], _broken(lambda p: p["3"]["inputs"].update(seed=4243)))[1]["prompt_id"])
    assert set(dict(first["status"]["messages"])["execution_cached"]["nodes"]) <= {"4", "5", "6", "7"}  # a new seed
    assert sorted(dict(again["status"]["messages"])["execution_cached"]["nodes"]) == sorted(prompt)
    assert again["outputs"] == first["outputs"] and again["status"]["status_str"] == "success"
    # A new seed runs the sampler and what follows it; the loader and the text encoders stay cached.
    assert sorted(dict(changed["status"]["messages"])["execution_cached"]["nodes"]) == ["4", "5", "6", "7"]
    assert changed["outputs"]["9"] != first["outputs"]["9"]


def _interrupt(url: str, body: bytes = b"") -> tuple[int, bytes]:
    req = urllib.request.Request(url + "/interrupt", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read()


def _running(url: str) -> list:
    return json.loads(urllib.request.urlopen(url + "/queue", timeout=10).read())["queue_running"]


def test_interrupt_stops_the_running_job_and_its_history_says_interrupted(comfyui):
    """POST /interrupt as ComfyUI serves it: a prompt_id that is not running is skipped; without one (or
    with the running one's) the job stops at its sampler's next step, and its history ends with
    `execution_interrupted`, status error, not completed, no execution_error."""
    url = comfyui[0]
    status, body = post(url, _broken(lambda p: p["3"]["inputs"].update(steps=999, seed=time.time_ns())))
    assert status == 200
    prompt_id = body["prompt_id"]
    assert wait_until(lambda: any(item[1] == prompt_id for item in _running(url)), 10)
    assert _interrupt(url, json.dumps({"prompt_id": "not-the-running-one"}).encode()) == (200, b"")
    time.sleep(0.2)
    assert [item[1] for item in _running(url)] == [prompt_id]  # still running: that interrupt was not for it
    assert _interrupt(url) == (200, b"")  # no body: a global interrupt, as ComfyUI reads it
    entry = wait_for(url, prompt_id)
    status = entry["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    kinds = [m[0] for m in status["messages"]]
    assert kinds == ["execution_start", "execution_cached", "execution_interrupted"], kinds
    stop = dict(status["messages"])["execution_interrupted"]
    assert stop["prompt_id"] == prompt_id and stop["node_id"] == "3" and stop["node_type"] == "KSampler"
    assert "3" not in stop["executed"] and "4" in stop["executed"] and stop["timestamp"] > 0
    # The next prompt runs: the interrupt was for the job that ran, not for what comes after it.
    after = wait_for(url, post(url, _broken(lambda p: p["3"]["inputs"].update(steps=2, seed=time.time_ns())))[1]["prompt_id"])
    assert after["status"]["status_str"] == "success"
    # An interrupted job is not a failure of the host: level 2's recent-jobs check does not count it.
    from ipex_fleet.host.fleetconfig import ServiceConfig
    from ipex_fleet.host.probe import comfyui as level2

    recent = level2.check_recent(ServiceConfig(url=url, models="/nonexistent", unit="comfyui.service"))
    assert recent.result.value == "pass" and recent.data["interrupted"] >= 1


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
