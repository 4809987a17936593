"""The example ComfyUI workflows (flake/workflows) are valid API-format prompts: the lab's ComfyUI
stand-in accepts them on POST /prompt, and refuses broken ones with node_errors, as ComfyUI does."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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


@pytest.mark.parametrize("change,node,kind", [
    (lambda p: p["3"]["inputs"].pop("model"), "3", "required_input_missing"),
    (lambda p: p["8"]["inputs"].update(vae=["4", 0]), "8", "return_type_mismatch"),
    (lambda p: p["8"]["inputs"].update(samples=["99", 0]), "8", "bad_linked_input"),
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


@pytest.mark.parametrize("change,kind", [
    (lambda p: p.pop("9"), "prompt_no_outputs"),
    (lambda p: p["6"].update(class_type="NoSuchNode"), "invalid_prompt"),
    (lambda p: p["6"].pop("class_type"), "invalid_prompt"),
])
def test_a_prompt_that_cannot_run_is_refused(comfyui, change, kind):
    status, body = post(comfyui[0], _broken(change))
    assert status == 400 and body["error"]["type"] == kind and body["node_errors"] == {}


def test_a_host_without_the_model_files_refuses_the_workflow(comfyui, tmp_path):
    url, state = comfyui
    ckpt = state / FILES[0]
    ckpt.rename(tmp_path / "ckpt")
    try:
        status, body = post(url, workflow("txt2img.json"))
    finally:
        (tmp_path / "ckpt").rename(ckpt)
    assert status == 400 and body["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
