"""Model installation: whole, verified, resumable, once; and the manifest refuses bad input early."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ipex_fleet.common.errors import UserError
from ipex_fleet.host.models import manifest
from ipex_fleet.host.models.install import install
from ipex_fleet.host.models.manifest import FileModel, ModelPlan

from .conftest import REPO, assert_ok

SERVICES = REPO / "src/ipex_fleet/lab/labpkgs/services"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(argv: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{argv} did not listen")


@pytest.fixture
def mirror_dir(tmp_path) -> Path:
    d = tmp_path / "mirror"
    d.mkdir()
    return d


def start_mirror(directory: Path, drop_after: int = 0, rate: int = 0):
    port = free_port()
    proc = serve([sys.executable, "-m", "ipex_fleet.lab.mirror", "--dir", str(directory), "--port", str(port),
                  "--drop-after", str(drop_after), "--rate", str(rate)], port)
    return proc, f"http://127.0.0.1:{port}"


def stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_stats", timeout=5) as resp:
        return json.load(resp)


def make_blob(directory: Path, name: str, mib: int) -> tuple[str, int]:
    data = os.urandom(mib << 20)
    (directory / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest(), len(data)


def say_to(lines: list[str]):
    return lines.append


def test_interrupted_download_resumes(tmp_path, mirror_dir):
    sha, size = make_blob(mirror_dir, "m.safetensors", 4)
    proc, url = start_mirror(mirror_dir, drop_after=1 << 20)
    try:
        lines: list[str] = []
        plan = ModelPlan(files=(FileModel("checkpoints", "m.safetensors", f"{url}/m.safetensors", sha, size),))
        report = install(plan, tmp_path / "models", None, say_to(lines), timeout=5)
        assert report.failed == [] and report.installed == ["checkpoints/m.safetensors"]
        assert any("resuming at 1.0 MiB" in l for l in lines), lines
        assert report.bytes_downloaded == size, "the resumed download fetched only what was missing"
        assert stats(url)["bytes"] == size
        target = tmp_path / "models/checkpoints/m.safetensors"
        assert hashlib.sha256(target.read_bytes()).hexdigest() == sha
        assert not list((tmp_path / "models/checkpoints").glob(".*.part"))
    finally:
        proc.kill()


def test_wrong_sha256_fails_and_leaves_the_old_file(tmp_path, mirror_dir):
    _, size = make_blob(mirror_dir, "m.safetensors", 1)
    folder = tmp_path / "models/loras"
    folder.mkdir(parents=True)
    (folder / "m.safetensors").write_bytes(b"the old model")
    proc, url = start_mirror(mirror_dir)
    try:
        plan = ModelPlan(files=(FileModel("loras", "m.safetensors", f"{url}/m.safetensors", "0" * 64, size),))
        report = install(plan, tmp_path / "models", None, lambda _l: None, timeout=5)
        assert len(report.failed) == 1 and "does not match the declared" in report.failed[0]
        assert (folder / "m.safetensors").read_bytes() == b"the old model"
        assert [p.name for p in folder.iterdir()] == ["m.safetensors"], "no partial file left behind"
    finally:
        proc.kill()


def test_too_little_disk_fails_before_downloading(tmp_path, mirror_dir):
    sha, _ = make_blob(mirror_dir, "m.safetensors", 1)
    proc, url = start_mirror(mirror_dir)
    try:
        huge = 1 << 50  # 1 PiB declared: no disk here has that
        plan = ModelPlan(files=(FileModel("vae", "m.safetensors", f"{url}/m.safetensors", sha, huge),))
        report = install(plan, tmp_path / "models", None, lambda _l: None, timeout=5)
        assert len(report.failed) == 1 and "free; free space or move the models path" in report.failed[0]
        assert stats(url) == {"requests": 0, "bytes": 0}
    finally:
        proc.kill()


def test_second_run_transfers_and_hashes_nothing(tmp_path, mirror_dir):
    models = []
    for i in range(3):
        sha, size = make_blob(mirror_dir, f"m{i}.safetensors", 1)
        models.append((f"m{i}.safetensors", sha, size))
    proc, url = start_mirror(mirror_dir)
    try:
        plan = ModelPlan(files=tuple(FileModel("checkpoints", n, f"{url}/{n}", s, z) for n, s, z in models))
        first = install(plan, tmp_path / "models", None, lambda _l: None, timeout=5)
        assert len(first.installed) == 3
        before = stats(url)
        second = install(plan, tmp_path / "models", None, lambda _l: None, timeout=5)
        assert second.present == [f"checkpoints/{n}" for n, _, _ in models]
        assert second.bytes_downloaded == 0 and second.bytes_hashed == 0
        assert stats(url) == before, "no network transfer at all"
        # A file corrupted in place: --verify re-hashes, notices, and fetches it again.
        target = tmp_path / "models/checkpoints/m0.safetensors"
        with open(target, "r+b") as f:
            f.write(b"X")
        os.utime(target, ns=(target.stat().st_atime_ns, json.loads(
            (tmp_path / "models/.ipex-fleet/checkpoints/m0.safetensors.json").read_text())["mtime_ns"]))
        assert install(plan, tmp_path / "models", None, lambda _l: None, timeout=5).present[0] == "checkpoints/m0.safetensors"
        verified = install(plan, tmp_path / "models", None, lambda _l: None, verify=True, timeout=5)
        assert verified.installed == ["checkpoints/m0.safetensors"]
        assert hashlib.sha256(target.read_bytes()).hexdigest() == models[0][1]
    finally:
        proc.kill()


def test_prune_removes_only_what_the_tool_installed(tmp_path, mirror_dir):
    sha_a, size_a = make_blob(mirror_dir, "a.safetensors", 1)
    sha_b, size_b = make_blob(mirror_dir, "b.safetensors", 1)
    proc, url = start_mirror(mirror_dir)
    try:
        both = ModelPlan(files=(FileModel("loras", "a.safetensors", f"{url}/a.safetensors", sha_a, size_a),
                                FileModel("loras", "b.safetensors", f"{url}/b.safetensors", sha_b, size_b)))
        install(both, tmp_path / "models", None, lambda _l: None, timeout=5)
        (tmp_path / "models/loras/mine.safetensors").write_bytes(b"a user's own lora")
        only_a = ModelPlan(files=both.files[:1], prune=("loras",))
        report = install(only_a, tmp_path / "models", None, lambda _l: None, timeout=5)
        assert report.pruned == ["loras/b.safetensors"]
        assert sorted(p.name for p in (tmp_path / "models/loras").iterdir()) == ["a.safetensors", "mine.safetensors"]
        report = install(ModelPlan(files=both.files[:1], prune=("loras",), prune_foreign=True),
                         tmp_path / "models", None, lambda _l: None, timeout=5)
        assert report.pruned == ["loras/mine.safetensors"]
    finally:
        proc.kill()


def test_ollama_pull_installs_once_and_reports_stream_errors(tmp_path):
    port = free_port()
    proc = serve(["/usr/bin/python3", str(SERVICES / "ollama.py"), "--host", "127.0.0.1", "--port", str(port),
                  "--state", str(tmp_path / "ollama")], port)
    try:
        url = f"http://127.0.0.1:{port}"
        lines: list[str] = []
        report = install(ModelPlan(ollama=(manifest.OllamaModel("smollm2:135m"),)), tmp_path, url, lines.append)
        assert report.installed == ["ollama/smollm2:135m"] and report.failed == []
        assert any("pulled, digest" in l for l in lines)
        again = install(ModelPlan(ollama=(manifest.OllamaModel("smollm2:135m"),)), tmp_path, url, lines.append)
        assert again.present == ["ollama/smollm2:135m"]
        bad = install(ModelPlan(ollama=(manifest.OllamaModel("no-such-model:7b"),)), tmp_path, url, lines.append)
        assert bad.failed == ["ollama pull no-such-model:7b: pull model manifest: file does not exist"]
    finally:
        proc.kill()


@pytest.mark.parametrize("entry,message", [
    ({"kind": "checkpoint", "name": "a.safetensors", "url": "https://m/a", "sha256": "a" * 64}, "kind 'checkpoint'"),
    ({"kind": "loras", "name": "../../etc/cron.d/x.safetensors", "url": "https://m/a", "sha256": "a" * 64}, "plain file name"),
    ({"kind": "loras", "name": "/etc/x.safetensors", "url": "https://m/a", "sha256": "a" * 64}, "plain file name"),
    ({"kind": "loras", "name": "sub/x.safetensors", "url": "https://m/a", "sha256": "a" * 64}, "plain file name"),
    ({"kind": "loras", "name": "x.safetensors", "url": "https://m/a", "sha256": "abc"}, "64 hex digits"),
    ({"kind": "loras", "name": "x.safetensors", "url": "https://m/a"}, "64 hex digits"),
    ({"kind": "loras", "name": "x.safetensors", "url": "http://m/a", "sha256": "a" * 64}, "is not https"),
    ({"kind": "loras", "name": "x.txt", "url": "https://m/a", "sha256": "a" * 64}, "must end in"),
    ({"ollama": "llama3.2:1b; rm -rf /"}, "not an Ollama model name"),
    ({"ollama": "../llama"}, "not an Ollama model name"),
])
def test_manifest_refuses_bad_entries_in_one_line(entry, message):
    with pytest.raises(UserError) as err:
        manifest.parse([entry], "models.yaml")
    assert message in str(err.value) and "models.yaml entry 1" in str(err.value)
    assert "\n" not in str(err.value)


def test_manifest_trusts_listed_mirrors_and_reads_yaml(tmp_path):
    entry = {"kind": "loras", "name": "x.safetensors", "url": "http://127.0.0.1:8600/x", "sha256": "A" * 64}
    plan = manifest.parse([entry, {"ollama": "llama3.2:1b"}], "m", trusted=("http://127.0.0.1:8600/",))
    assert plan.files[0].sha256 == "a" * 64 and plan.ollama[0].name == "llama3.2:1b"
    (tmp_path / "models.yaml").write_text("prune: [loras]\nmodels:\n  - ollama: qwen2.5:0.5b\n")
    plan = manifest.from_host_data("h", {"models_manifest": "models.yaml"}, root=str(tmp_path))
    assert plan.prune == ("loras",) and plan.ollama[0].name == "qwen2.5:0.5b"
    with pytest.raises(UserError, match="does not exist"):
        manifest.from_host_data("h", {"models_manifest": "nope.yaml"}, root=str(tmp_path))


def _models_inventory(fleet, path: Path, models: list, extra: str = "") -> Path:
    inventory = path / "models_fleet.py"
    inventory.write_text(
        "from ipex_fleet.lab.inventory import lab_hosts\n"
        f"_models = {models!r}\n"
        f"hosts = [(n, {{**d, 'models': _models, 'trusted_mirrors': ['http://127.0.0.1:'], 'bench': False,"
        f" 'health_levels': [1], 'min_free_mb': 64{extra}}}) for n, d in lab_hosts({str(fleet.lab.layout.root)!r})"
        " if n == 'host1']\n")
    return inventory


def test_deploy_installs_models_and_a_failure_keeps_existing_files(fleet3, tmp_path, mirror_dir):
    sha, size = make_blob(mirror_dir, "sd.safetensors", 2)
    proc, url = start_mirror(mirror_dir)
    try:
        entry = {"kind": "checkpoints", "name": "sd.safetensors", "url": f"{url}/sd.safetensors", "sha256": sha,
                 "size": size}
        inventory = _models_inventory(fleet3, tmp_path, [entry, {"ollama": "smollm2:135m"}])
        run, run_id = fleet3.deploy(inventory=str(inventory))
        assert_ok(run)
        assert "checkpoints/sd.safetensors: installed" in run.stdout
        placed = "/var/lib/comfyui/models/checkpoints/sd.safetensors"
        assert fleet3.sh("host1", f"sha256sum {placed}").split()[0] == sha
        assert fleet3.result(run_id, "host1").health["models"]["installed"] == [
            "checkpoints/sd.safetensors", "ollama/smollm2:135m"]
        # A later manifest whose pull fails: the host fails with the reason; the file stays.
        bad = _models_inventory(fleet3, tmp_path, [entry, {"ollama": "no-such-model:1b"}])
        fleet3.configure("host1", f"version=m{time.monotonic_ns()}")
        run, run_id = fleet3.deploy(inventory=str(bad))
        assert run.returncode != 0
        result = fleet3.result(run_id, "host1")
        assert result.status.value == "rolled_back"
        assert "models: ollama pull no-such-model:1b: pull model manifest: file does not exist" in result.error
        assert fleet3.sh("host1", f"sha256sum {placed}").split()[0] == sha
    finally:
        proc.kill()


def test_path_traversal_is_refused_before_any_host_is_touched(fleet3, tmp_path):
    entry = {"kind": "loras", "name": "../../../etc/cron.d/evil.safetensors", "url": "https://mirror/x",
             "sha256": "a" * 64}
    inventory = _models_inventory(fleet3, tmp_path, [entry])
    lines = fleet3.sh("host1", "wc -l < /var/lib/ipex-fleet/deploys.jsonl 2>/dev/null || echo 0")
    run, _ = fleet3.deploy(inventory=str(inventory))
    assert run.returncode != 0
    assert "must be a plain file name" in run.stdout and "Traceback" not in run.stdout
    assert "Starting operation" not in run.stdout
    assert fleet3.sh("host1", "wc -l < /var/lib/ipex-fleet/deploys.jsonl 2>/dev/null || echo 0") == lines


def test_air_gapped_hosts_get_files_pushed_from_the_controller(fleet3, tmp_path, mirror_dir):
    sha, size = make_blob(mirror_dir, "up.safetensors", 3)
    proc, url = start_mirror(mirror_dir)
    try:
        entry = {"kind": "upscale_models", "name": "up.safetensors", "url": f"{url}/up.safetensors", "sha256": sha,
                 "size": size}
        inventory = tmp_path / "airgap.py"
        inventory.write_text(
            "from ipex_fleet.lab.inventory import lab_hosts\n"
            f"hosts = [(n, {{**d, 'models': [{entry!r}], 'models_source': 'controller',"
            " 'trusted_mirrors': ['http://127.0.0.1:'], 'bench': False, 'health_levels': [1], 'min_free_mb': 64})"
            f" for n, d in lab_hosts({str(fleet3.lab.layout.root)!r}) if n in ('host2', 'host3')]\n")
        run, run_id = fleet3.deploy(inventory=str(inventory))
        assert_ok(run)
        for h in ("host2", "host3"):
            placed = "/var/lib/comfyui/models/upscale_models/up.safetensors"
            assert fleet3.sh(h, f"sha256sum {placed}").split()[0] == sha
            models = fleet3.result(run_id, h).health["models"]
            assert models["installed"] == ["upscale_models/up.safetensors"] and models["bytes_downloaded"] == 0
        assert stats(url)["bytes"] == size, "the controller fetched the file once, for both hosts"
    finally:
        proc.kill()


def test_a_pinned_ollama_model_must_show_its_digest_after_the_pull(fleet3, tmp_path):
    api = f"http://{fleet3.spec.host('host1').address}:11434"

    def tags() -> dict[str, str]:
        with urllib.request.urlopen(f"{api}/api/tags", timeout=10) as resp:
            return {m["name"]: m["digest"] for m in json.load(resp)["models"]}

    wrong = "0" * 64
    fleet3.configure("host1", f"version=p{time.monotonic_ns()}")
    inventory = _models_inventory(fleet3, tmp_path, [{"ollama": "qwen2.5:0.5b", "digest": f"sha256:{wrong}"}])
    run, run_id = fleet3.deploy(inventory=str(inventory))
    assert run.returncode != 0
    result = fleet3.result(run_id, "host1")
    assert result.status.value == "rolled_back"
    assert f"models: ollama pull qwen2.5:0.5b: got digest " in result.error
    assert f"but {wrong[:12]} is declared" in result.error and "it was deleted again" in result.error
    assert "qwen2.5:0.5b" not in tags()  # the retagged model never serves
    # The digest the registry (the stand-in's catalog) really gives, pinned: the deploy passes.
    pull = urllib.request.Request(f"{api}/api/pull", data=json.dumps({"model": "qwen2.5:0.5b", "stream": False}).encode())
    urllib.request.urlopen(pull, timeout=60).read()
    digest = tags()["qwen2.5:0.5b"]
    urllib.request.urlopen(urllib.request.Request(f"{api}/api/delete", method="DELETE",
                                                  data=json.dumps({"model": "qwen2.5:0.5b"}).encode()), timeout=10)
    fleet3.configure("host1", f"version=p{time.monotonic_ns()}")
    pinned = _models_inventory(fleet3, tmp_path, [{"ollama": f"qwen2.5:0.5b@sha256:{digest}"}])
    run, run_id = fleet3.deploy(inventory=str(pinned))
    assert_ok(run)
    assert fleet3.result(run_id, "host1").health["models"]["installed"] == ["ollama/qwen2.5:0.5b"]
    assert tags()["qwen2.5:0.5b"] == digest
