#!/usr/bin/python3
"""Lab stand-in for the Ollama server: the HTTP API that the probe, the model installer and the
official clients use (REFERENCE.md, Ollama HTTP API; docs.ollama.com/api).

Served: GET / (liveness), /api/version, /api/tags, /api/ps; POST /api/pull, /api/show,
/api/generate, /api/chat, /api/embed; DELETE /api/delete; HEAD /api/blobs/:digest. Errors are shaped
as Ollama shapes them: an HTTP status with `{"error": "..."}`, or, once a stream has started, an NDJSON
line `{"error": "..."}` with the status left at 200. Generate and chat stream unless `stream: false`.
A request with an empty prompt (generate) or no messages (chat) loads the model (`done_reason:
"load"`); `keep_alive: 0` unloads it (`"unload"`); otherwise a model stays loaded for `keep_alive`
(default 5m), as /api/ps shows. Models come from a small built-in catalog standing in for the
registry; a name that is not there fails the pull as the registry does. Each token is real work (a
starved CPU gives fewer tokens/s); `--lab-slow-tokens F` (lab knob slow_ollama) makes each token F
times the work, as a model that lost its accelerator or a slower build generates.
"""

import hashlib
import json
import math
import os
import re
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _http import JSONHandler, fail_start, parse_args, serve  # noqa: E402

VERSION = "0.13.0"
# name -> (size in bytes of its one weights blob, capability). Small: the lab pulls for real.
CATALOG = {
    "llama3.2:1b": (3 << 20, "completion"),
    "qwen2.5:0.5b": (2 << 20, "completion"),
    "smollm2:135m": (1 << 20, "completion"),
    "nomic-embed-text:latest": (1 << 20, "embedding"),
}
EMBED_DIM = 16
DEFAULT_KEEP_ALIVE = 300.0
LOCK = threading.Lock()
_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)?$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def normalise(name):
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def now_iso():
    return datetime.now(timezone.utc).isoformat()


def blob_bytes(name, size):
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def keep_alive_seconds(value):
    """Ollama's keep_alive: seconds as a number, or a Go duration ("5m", "30s"); negative is forever."""
    if value is None or value == "":
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip())
        if not match:
            raise ValueError(value)
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return math.inf if seconds < 0 else seconds


class NotFound(Exception):
    pass


class Handler(JSONHandler):
    @property
    def manifests(self):
        return os.path.join(self.server.state_dir, "models", "manifests")

    @property
    def blobs(self):
        return os.path.join(self.server.state_dir, "models", "blobs")

    def route(self):
        return self.path.split("?", 1)[0]

    def not_found(self):
        self.send_json(404, {"error": "404 page not found"})

    # -- routing -----------------------------------------------------------------------------

    def do_GET(self):
        path = self.route()
        if path == "/":
            body = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/api/version":
            self.send_json(200, {"version": VERSION})
        elif path == "/api/tags":
            self.send_json(200, {"models": [self.tag_entry(m) for m in self.installed()]})
        elif path == "/api/ps":
            self.send_json(200, {"models": self.running()})
        else:
            self.not_found()

    def do_HEAD(self):
        path = self.route()
        if not path.startswith("/api/blobs/"):
            return self.empty(404)
        digest = path[len("/api/blobs/"):]
        if not re.fullmatch(r"sha256[:-][0-9a-f]{64}", digest):
            return self.empty(400)
        self.empty(200 if os.path.exists(os.path.join(self.blobs, digest.replace(":", "-"))) else 404)

    def do_POST(self):
        handlers = {"/api/pull": self.pull, "/api/show": self.show, "/api/generate": self.generate,
                    "/api/chat": self.chat, "/api/embed": self.embed, "/api/delete": self.delete}
        handler = handlers.get(self.route())
        if handler is None:
            return self.not_found()
        self.dispatch(handler)

    def do_DELETE(self):
        if self.route() != "/api/delete":
            return self.not_found()
        self.dispatch(self.delete)

    def dispatch(self, handler):
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return self.send_json(400, {"error": "missing request body"})
        body = self.read_json()
        if not isinstance(body, dict):
            return self.send_json(400, {"error": "invalid character in request body"})
        try:
            handler(body)
        except NotFound as exc:
            self.send_json(404, {"error": f"model '{exc}' not found"})
        except ValueError as exc:
            self.send_json(400, {"error": str(exc)})

    def empty(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    # -- models on disk ------------------------------------------------------------------------

    def manifest_path(self, name):
        return os.path.join(self.manifests, name.replace("/", "_").replace(":", "__"))

    def installed(self):
        if not os.path.isdir(self.manifests):
            return []
        models = []
        for entry in sorted(os.listdir(self.manifests)):
            if entry.endswith(".tmp"):
                continue
            models.append(self.read_manifest(os.path.join(self.manifests, entry)))
        return models

    @staticmethod
    def read_manifest(path):
        with open(path) as f:
            m = json.load(f)
        m.setdefault("capability", CATALOG.get(m["name"], (0, "completion"))[1])  # written by an older stand-in
        m.setdefault("blob", "sha256:" + m["digest"])
        return m

    def model(self, body):
        """The installed model the request names; a missing name is 400, an unknown one 404."""
        raw = body.get("model") or body.get("name")
        if not raw:
            raise ValueError("model is required")
        name = normalise(str(raw))
        try:
            return self.read_manifest(self.manifest_path(name))
        except FileNotFoundError:
            raise NotFound(name) from None

    @staticmethod
    def tag_entry(m):
        return {k: m[k] for k in ("name", "model", "modified_at", "size", "digest", "details")}

    # -- loaded models and keep_alive --------------------------------------------------------------

    def loaded(self):
        if not hasattr(self.server, "loaded"):
            self.server.loaded = {}  # name -> expiry (time.monotonic()), inf for "forever"
        table = self.server.loaded
        for name, expires in list(table.items()):
            if expires <= time.monotonic():
                del table[name]
        return table

    def keep(self, model, body):
        """Load the model for keep_alive; 0 unloads it. Returns the done_reason of a load-only call."""
        try:
            seconds = keep_alive_seconds(body.get("keep_alive"))
        except ValueError:
            raise ValueError(f"time: invalid duration \"{body.get('keep_alive')}\"") from None
        with LOCK:
            if seconds == 0:
                self.loaded().pop(model["name"], None)
                return "unload"
            self.loaded()[model["name"]] = time.monotonic() + seconds
            return "load"

    def running(self):
        hidden = bool(os.environ.get("IPEX_FLEET_LAB_HIDE_ACCELERATOR"))
        with LOCK:
            table = dict(self.loaded())
        out = []
        for m in self.installed():
            if m["name"] not in table:
                continue
            left = table[m["name"]] - time.monotonic()
            expires = datetime.now(timezone.utc) + (timedelta(days=365 * 100) if left == math.inf
                                                     else timedelta(seconds=left))
            out.append({"name": m["name"], "model": m["name"], "size": m["size"], "digest": m["digest"],
                        "details": m["details"], "expires_at": expires.isoformat(),
                        "size_vram": 0 if hidden else m["size"], "context_length": 4096})
        return out

    # -- pull, show, delete ------------------------------------------------------------------------

    def pull(self, body):
        raw = body.get("model") or body.get("name")
        if not raw:
            raise ValueError("model is required")
        name = normalise(str(raw))
        stream = body.get("stream", True)
        lines = []
        emit = self.stream_line if stream else lines.append
        if stream:
            self.start_stream()
        emit({"status": "pulling manifest"})
        if name not in CATALOG:
            emit({"error": "pull model manifest: file does not exist"})
            return self.finish_pull(stream, lines, error=True)
        size, capability = CATALOG[name]
        data = blob_bytes(name, size)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        os.makedirs(self.blobs, exist_ok=True)
        blob_path = os.path.join(self.blobs, digest.replace(":", "-"))
        tmp = blob_path + "-partial"
        # What an earlier, cut pull fetched stays: this one resumes there, as Ollama resumes.
        have = size if os.path.exists(blob_path) else min(os.path.getsize(tmp), size) if os.path.exists(tmp) else 0
        emit({"status": f"pulling {digest[7:19]}", "digest": digest, "total": size,
              **({"completed": have} if have else {})})
        if have < size:
            with open(tmp, "r+b" if os.path.exists(tmp) else "wb") as f:
                f.truncate(have)
                f.seek(have)
                for off in range(have, size, 1 << 20):
                    f.write(data[off:off + (1 << 20)])
                    emit({"status": f"pulling {digest[7:19]}", "digest": digest, "total": size,
                          "completed": min(size, off + (1 << 20))})
            emit({"status": "verifying sha256 digest"})
            with open(tmp, "rb") as f:
                got = "sha256:" + hashlib.sha256(f.read()).hexdigest()
            if got != digest:
                os.unlink(tmp)
                emit({"error": f"digest mismatch, file must be downloaded again: want {digest}, got {got}"})
                return self.finish_pull(stream, lines, error=True)
            os.replace(tmp, blob_path)
        else:
            emit({"status": "verifying sha256 digest"})
        emit({"status": "writing manifest"})
        os.makedirs(self.manifests, exist_ok=True)
        layers = {"schemaVersion": 2, "layers": [{"mediaType": "application/vnd.ollama.image.model",
                                                  "digest": digest, "size": size}]}
        manifest = {
            "name": name, "model": name, "size": size,
            # As /api/tags shows it: the manifest's sha256, without the "sha256:" prefix.
            "digest": hashlib.sha256(json.dumps(layers, sort_keys=True).encode()).hexdigest(),
            "modified_at": now_iso(), "capability": capability, "blob": digest,
            "details": {"parent_model": "", "format": "gguf", "family": name.split(":")[0].split(".")[0],
                        "families": [name.split(":")[0].split(".")[0]], "parameter_size": "1B",
                        "quantization_level": "Q4_K_M"},
        }
        with LOCK:
            path = self.manifest_path(name)
            with open(path + ".tmp", "w") as f:
                json.dump(manifest, f)
            os.replace(path + ".tmp", path)
        emit({"status": "success"})
        return self.finish_pull(stream, lines)

    def finish_pull(self, stream, lines, error=False):
        if stream:
            self.end_stream()
        else:
            self.send_json(500 if error else 200, lines[-1])

    def show(self, body):
        m = self.model(body)
        family = m["details"]["family"]
        capabilities = ["embedding"] if m["capability"] == "embedding" else ["completion"]
        self.send_json(200, {
            "license": "lab stand-in, no licence", "modelfile": f"# Modelfile generated by \"ollama show\"\nFROM {m['blob']}\n",
            "parameters": "temperature 0.8\nstop \"<|eot_id|>\"", "template": "{{ .Prompt }}",
            "details": m["details"], "capabilities": capabilities, "modified_at": m["modified_at"],
            "model_info": {"general.architecture": family, "general.parameter_count": m["size"],
                           f"{family}.context_length": 4096, f"{family}.embedding_length": EMBED_DIM},
        })

    def delete(self, body):
        m = self.model(body)
        with LOCK:
            os.unlink(self.manifest_path(m["name"]))
            self.loaded().pop(m["name"], None)
        self.empty(200)

    # -- generate, chat, embed -----------------------------------------------------------------

    def tokens(self, m, count):
        """Real work per token, so a starved CPU shows up as fewer tokens/s; returns eval ns."""
        start = time.perf_counter_ns()
        seed = hashlib.sha256(m["name"].encode()).digest()
        for _ in range(round(count * 2000 * self.server.slow)):
            seed = hashlib.sha256(seed).digest()
        return max(1, time.perf_counter_ns() - start)

    def answer(self, m, body, idle, field, piece):
        """Shared by generate and chat: load or unload when idle, else count tokens, streamed or not."""
        if m["capability"] == "embedding":
            raise ValueError(f"\"{m['name']}\" does not support {'chat' if field == 'message' else 'generate'}")
        reason = self.keep(m, body)
        head = {"model": m["name"], "created_at": now_iso()}
        if idle:
            final = {**head, **piece(""), "done": True, "done_reason": reason}
            return self.send_json(200, final) if body.get("stream") is False else self.one_line_stream(final)
        options = body.get("options") or {}
        count = int(options.get("num_predict") or 8)
        eval_ns = self.tokens(m, count)
        stats = {"done": True, "done_reason": "length", "total_duration": eval_ns, "load_duration": 0,
                 "prompt_eval_count": 1, "prompt_eval_duration": 1, "eval_count": count, "eval_duration": eval_ns}
        if body.get("stream") is False:
            return self.send_json(200, {**head, **piece(" lab" * count), **stats})
        self.start_stream()
        for _ in range(count):
            self.stream_line({**head, **piece(" lab"), "done": False})
        self.stream_line({**head, **piece(""), **stats})
        self.end_stream()

    def one_line_stream(self, line):
        self.start_stream()
        self.stream_line(line)
        self.end_stream()

    def generate(self, body):
        m = self.model(body)
        self.answer(m, body, not body.get("prompt"), "response", lambda text: {"response": text})

    def chat(self, body):
        m = self.model(body)
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(x, dict) for x in messages):
            raise ValueError("messages must be a list of {role, content}")
        self.answer(m, body, not messages, "message",
                    lambda text: {"message": {"role": "assistant", "content": text}})

    def embed(self, body):
        m = self.model(body)
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise ValueError("invalid input type")
        self.keep(m, body)
        start = time.perf_counter_ns()
        vectors = []
        for text in inputs:
            raw = hashlib.sha256(f"{m['name']}\0{text}".encode()).digest()[:EMBED_DIM]
            vector = [b - 127.5 for b in raw]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            vectors.append([round(v / norm, 6) for v in vector])  # unit length, as Ollama normalises
        took = max(1, time.perf_counter_ns() - start)
        self.send_json(200, {"model": m["name"], "embeddings": vectors, "total_duration": took,
                             "load_duration": 0, "prompt_eval_count": sum(len(t.split()) for t in inputs)})


def own_arguments(parser):
    parser.add_argument("--lab-slow-tokens", type=float, default=1.0, metavar="F",
                        help="each token takes F times the work (lab knob slow_ollama)")


if __name__ == "__main__":
    args = parse_args("ipex-fleet lab stand-in for ollama serve", own_arguments)
    if args.fail_start:
        fail_start("ollama")
    serve(Handler, args, slow=max(args.lab_slow_tokens, 0.01))
