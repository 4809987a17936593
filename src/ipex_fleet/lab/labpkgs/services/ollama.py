#!/usr/bin/python3
"""Lab stand-in for the Ollama server: the HTTP API parts the probe and model installer use.

It follows REFERENCE.md (Ollama HTTP API). Models come from a small built-in catalog standing in
for the registry; a name that is not there fails the pull as the registry does.
"""

import hashlib
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _http import JSONHandler, fail_start, parse_args, serve  # noqa: E402

VERSION = "0.13.0"
# name -> size in bytes of its one weights blob (small: the lab pulls for real, bytes and all).
CATALOG = {
    "llama3.2:1b": 3 << 20,
    "qwen2.5:0.5b": 2 << 20,
    "smollm2:135m": 1 << 20,
    "nomic-embed-text:latest": 1 << 20,
}
LOCK = threading.Lock()


def normalise(name):
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def blob_bytes(name, size):
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Handler(JSONHandler):
    @property
    def manifests(self):
        return os.path.join(self.server.state_dir, "models", "manifests")

    def route(self):
        path = self.path.split("?", 1)[0]
        return path

    def do_GET(self):
        path = self.route()
        if path == "/":
            body = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/api/version":
            self.send_json(200, {"version": VERSION})
        elif path == "/api/tags":
            self.send_json(200, {"models": self.installed()})
        elif path == "/api/ps":
            self.send_json(200, {"models": self.loaded()})
        else:
            self.send_json(404, {"error": "404 page not found"})

    def do_POST(self):
        path = self.route()
        body = self.read_json()
        if body is None:
            self.send_json(400, {"error": "invalid character in request body"})
        elif path == "/api/pull":
            self.pull(body)
        elif path == "/api/generate":
            self.generate(body)
        elif path == "/api/delete":
            self.delete(body)
        else:
            self.send_json(404, {"error": "404 page not found"})

    def do_DELETE(self):
        body = self.read_json()
        if self.route() == "/api/delete" and body is not None:
            self.delete(body)
        else:
            self.send_json(404, {"error": "404 page not found"})

    def installed(self):
        models = []
        if not os.path.isdir(self.manifests):
            return models
        for entry in sorted(os.listdir(self.manifests)):
            with open(os.path.join(self.manifests, entry)) as f:
                models.append(json.load(f))
        return models

    def loaded(self):
        vram = 0 if os.environ.get("IPEX_FLEET_LAB_HIDE_ACCELERATOR") else None
        out = []
        for model in self.installed():
            if model["name"] in getattr(self.server, "loaded", set()):
                size = model["size"]
                out.append({"name": model["name"], "model": model["name"], "size": size,
                            "digest": model["digest"], "size_vram": size if vram is None else 0})
        return out

    def pull(self, body):
        name = normalise(str(body.get("model") or body.get("name") or ""))
        stream = body.get("stream", True)
        lines = []
        emit = self.stream_line if stream else lines.append
        if stream:
            self.start_stream()
        emit({"status": "pulling manifest"})
        if name not in CATALOG:
            emit({"error": "pull model manifest: file does not exist"})
            return self.finish_pull(stream, lines, error=True)
        size = CATALOG[name]
        data = blob_bytes(name, size)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs = os.path.join(self.server.state_dir, "models", "blobs")
        os.makedirs(blobs, exist_ok=True)
        blob_path = os.path.join(blobs, digest.replace(":", "-"))
        emit({"status": f"pulling {digest[7:19]}", "digest": digest, "total": size})
        tmp = blob_path + "-partial"
        with open(tmp, "wb") as f:
            for off in range(0, size, 1 << 20):
                f.write(data[off:off + (1 << 20)])
                emit({"status": f"pulling {digest[7:19]}", "digest": digest, "total": size,
                      "completed": min(size, off + (1 << 20))})
        emit({"status": "verifying sha256 digest"})
        os.replace(tmp, blob_path)
        emit({"status": "writing manifest"})
        os.makedirs(self.manifests, exist_ok=True)
        manifest = {
            "name": name, "model": name, "size": size, "digest": digest[7:],
            "modified_at": datetime.now(timezone.utc).isoformat(),
            "details": {"format": "gguf", "family": name.split(":")[0], "parameter_size": "1B",
                        "quantization_level": "Q4_K_M"},
        }
        with LOCK:
            path = os.path.join(self.manifests, name.replace("/", "_").replace(":", "__"))
            with open(path + ".tmp", "w") as f:
                json.dump(manifest, f)
            os.replace(path + ".tmp", path)
        emit({"status": "success"})
        return self.finish_pull(stream, lines)

    def finish_pull(self, stream, lines, error=False):
        if stream:
            self.end_stream()
        elif error:
            self.send_json(500, lines[-1])
        else:
            self.send_json(200, lines[-1])

    def delete(self, body):
        name = normalise(str(body.get("model") or body.get("name") or ""))
        path = os.path.join(self.manifests, name.replace("/", "_").replace(":", "__"))
        if not os.path.exists(path):
            return self.send_json(404, {"error": f"model '{name}' not found"})
        os.unlink(path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def generate(self, body):
        name = normalise(str(body.get("model") or ""))
        if name not in {m["name"] for m in self.installed()}:
            return self.send_json(404, {"error": f"model '{name}' not found, try pulling it first"})
        if not hasattr(self.server, "loaded"):
            self.server.loaded = set()
        self.server.loaded.add(name)
        options = body.get("options") or {}
        tokens = int(options.get("num_predict") or 8)
        # Real work per token, so a starved CPU shows up as fewer tokens/s.
        start = time.perf_counter_ns()
        seed = hashlib.sha256(name.encode()).digest()
        for _ in range(tokens * 2000):
            seed = hashlib.sha256(seed).digest()
        eval_ns = max(1, time.perf_counter_ns() - start)
        self.send_json(200, {
            "model": name, "created_at": datetime.now(timezone.utc).isoformat(),
            "response": " lab" * tokens, "done": True, "done_reason": "length",
            "eval_count": tokens, "eval_duration": eval_ns,
            "total_duration": eval_ns, "load_duration": 0, "prompt_eval_count": 1,
        })


if __name__ == "__main__":
    args = parse_args("ipex-fleet lab stand-in for ollama serve")
    if args.fail_start:
        fail_start("ollama")
    serve(Handler, args)
