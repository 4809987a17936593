#!/usr/bin/python3
"""Lab stand-in for ComfyUI (REFERENCE.md, ComfyUI HTTP API; tried against ComfyUI 0.3.64).

Served, also under /api/: GET /system_stats, /queue, /history, /history/{id}, /object_info,
/object_info/{class}, /ws?clientId= (status, execution_start, execution_cached, executing,
progress, executed, execution_success or execution_error, then executing with node null); POST /prompt (validated as ComfyUI validates, then queued and run by a fake
executor, see _jobs.py), /queue and /history ({"clear"} or {"delete": [...]}), /free, /interrupt
(the running job, or with {"prompt_id"} only that one if it runs; 200 and no body either way).

Its device: the lab has no GPU, so the CPU stands in for the host's accelerator. Started as a GPU
host starts ComfyUI (no --cpu), it stops at start when the generation hides the accelerator, as
real ComfyUI does (get_torch_device finds no device); with --cpu it reports the cpu device whatever
hides the GPU. `devices` is never empty.
"""

import json
import os
import queue
import sys
import threading
import uuid
from urllib.parse import parse_qs, unquote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _http import JSONHandler, fail_start, parse_args, serve  # noqa: E402
from _jobs import Jobs  # noqa: E402
from _nodes import node_types, object_info, validate  # noqa: E402
import _ws  # noqa: E402

VERSION = "0.3.64-lab"
FREE_LOCK = threading.Lock()


def meminfo():
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            values[key] = int(rest.split()[0]) * 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def no_device_crash():
    """What ComfyUI prints when it starts without --cpu and finds no usable device (then exits 1)."""
    sys.stderr.write(
        "Traceback (most recent call last):\n"
        '  File "/lab/comfyui/main.py", line 147, in <module>\n'
        "    import execution\n"
        '  File "/lab/comfyui/comfy/model_management.py", line 214, in <module>\n'
        "    total_vram = get_total_memory(get_torch_device()) / (1024 * 1024)\n"
        '  File "/lab/comfyui/comfy/model_management.py", line 160, in get_torch_device\n'
        "    return torch.device(torch.cuda.current_device())\n"
        '  File "/lab/torch/cuda/__init__.py", line 310, in _lazy_init\n'
        '    raise AssertionError("Torch not compiled with CUDA enabled")\n'
        "AssertionError: Torch not compiled with CUDA enabled\n")
    sys.stderr.flush()
    sys.exit(1)


class Handler(JSONHandler):
    def route(self):
        path, _, query = self.path.partition("?")
        path = path[4:] if path.startswith("/api/") else path
        return unquote(path), parse_qs(query)

    @property
    def jobs(self):
        return self.server.jobs

    def do_GET(self):
        path, query = self.route()
        if path == "/system_stats":
            self.send_json(200, self.system_stats())
        elif path == "/queue":
            self.send_json(200, self.jobs.queue())
        elif path == "/history":
            try:
                max_items = int(query["max_items"][0]) if "max_items" in query else None
            except ValueError:
                max_items = None
            self.send_json(200, self.jobs.get_history(max_items=max_items))
        elif path.startswith("/history/"):
            self.send_json(200, self.jobs.get_history(path[len("/history/"):]))
        elif path == "/object_info":
            self.send_json(200, object_info(self.server.state_dir))
        elif path.startswith("/object_info/"):
            self.send_json(200, object_info(self.server.state_dir, path[len("/object_info/"):]))
        elif path == "/ws":
            self.websocket((query.get("clientId") or [uuid.uuid4().hex])[0])
        else:
            self.send_json(404, {"error": "Not Found"})

    def do_POST(self):
        path, _ = self.route()
        body = self.read_json()
        if path == "/prompt":
            return self.prompt(body)
        if path in ("/queue", "/history") and isinstance(body, dict):
            clear = self.jobs.clear_queue if path == "/queue" else self.jobs.clear_history
            if body.get("clear"):
                clear()
            if isinstance(body.get("delete"), list):
                clear([str(x) for x in body["delete"]])
            return self.empty(200)
        if path == "/interrupt":  # ComfyUI reads a missing or broken body as {}: a global interrupt
            prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
            self.jobs.interrupt(str(prompt_id) if prompt_id else None)
            return self.empty(200)
        if path == "/free" and isinstance(body, dict):
            with FREE_LOCK:  # nothing is held between jobs here: unloading is a no-op that answers
                self.server.freed = {"unload_models": bool(body.get("unload_models")),
                                     "free_memory": bool(body.get("free_memory"))}
            return self.empty(200)
        self.send_json(404 if path not in ("/queue", "/history", "/free") else 400, {"error": "Not Found"})

    def websocket(self, sid):
        """ComfyUI's /ws: `status` at once, then the messages of this client's prompts (and of prompts
        queued without a client id), each as {"type", "data"}, until the client goes."""
        if not _ws.accept(self):
            return
        events = self.jobs.listen(sid)
        try:
            _ws.send_text(self, json.dumps({"type": "status", "data": {**self.jobs.status(), "sid": sid}}))
            while not _ws.closed(self):
                try:
                    kind, data = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                _ws.send_text(self, json.dumps({"type": kind, "data": data}))
        except OSError:
            pass  # the client went away mid-frame
        finally:
            self.jobs.leave(sid)

    def empty(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def prompt(self, body):
        body = body if isinstance(body, dict) else {}
        if "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}
            return self.send_json(400, {"error": error, "node_errors": {}})
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            prompt = {}  # ComfyUI finds no output node in it
        error, outputs, node_errors = validate(prompt, self.server.state_dir)
        if error:
            return self.send_json(400, {"error": error, "node_errors": node_errors})
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        try:
            number = float(body["number"]) if "number" in body else None
        except (TypeError, ValueError):
            number = None
        prompt_id, number = self.jobs.put(prompt, outputs, extra, front=bool(body.get("front")), number=number,
                                          prompt_id=body.get("prompt_id") or str(uuid.uuid4()))
        self.send_json(200, {"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def system_stats(self):
        total, free = meminfo()
        # With --cpu ComfyUI reports its cpu device whatever hides the GPU (it never starts without one).
        device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": free,
                  "torch_vram_total": total, "torch_vram_free": free}
        argv = ["main.py", "--listen", self.server.server_address[0]] + (["--cpu"] if self.server.cpu else [])
        return {
            "system": {"os": os.name, "ram_total": total, "ram_free": free, "comfyui_version": VERSION,
                       "python_version": sys.version, "pytorch_version": "lab", "embedded_python": False,
                       "argv": argv},
            "devices": [device],
        }


def own_arguments(parser):
    parser.add_argument("--cpu", action="store_true", help="run on the CPU, as ComfyUI's --cpu does")
    parser.add_argument("--lab-fail-jobs", action="store_true",
                        help="every job fails when it runs (lab knob fail_comfyui_jobs)")


if __name__ == "__main__":
    args = parse_args("ipex-fleet lab stand-in for ComfyUI", own_arguments)
    if args.fail_start:
        fail_start("comfyui")
    if not args.cpu and os.environ.get("IPEX_FLEET_LAB_HIDE_ACCELERATOR"):
        no_device_crash()
    jobs = Jobs(args.state, lambda: node_types(args.state), fail_jobs=args.lab_fail_jobs)
    serve(Handler, args, jobs=jobs, cpu=args.cpu, freed=None)
