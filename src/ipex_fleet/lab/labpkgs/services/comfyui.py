#!/usr/bin/python3
"""Lab stand-in for ComfyUI: /system_stats, /queue, /object_info and /prompt, also under /api/.

It follows REFERENCE.md (ComfyUI HTTP API). Its primary device is the CPU, or none at all when
the generation hides the accelerator.
"""

import os
import sys
import threading
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _http import JSONHandler, fail_start, parse_args, serve  # noqa: E402
from _nodes import object_info, validate  # noqa: E402

QUEUE_LOCK = threading.Lock()


def meminfo():
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            values[key] = int(rest.split()[0]) * 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


class Handler(JSONHandler):
    def route(self):
        path = self.path.split("?", 1)[0]
        return path[4:] if path.startswith("/api/") else path

    def do_GET(self):
        path = self.route()
        if path == "/system_stats":
            self.send_json(200, self.system_stats())
        elif path == "/queue":
            with QUEUE_LOCK:
                self.send_json(200, {"queue_running": [], "queue_pending": []})
        elif path == "/object_info":
            self.send_json(200, object_info(self.server.state_dir))
        else:
            self.send_json(404, {"error": "Not Found"})

    def do_POST(self):
        if self.route() != "/prompt":
            return self.send_json(404, {"error": "Not Found"})
        body = self.read_json()
        prompt = (body or {}).get("prompt")
        if not isinstance(prompt, dict) or not prompt:
            return self.send_json(400, {"error": {"type": "invalid_prompt",
                                                   "message": "Cannot execute because a node is missing the class_type property.",
                                                   "details": "", "extra_info": {}},
                                         "node_errors": {}})
        error, node_errors = validate(prompt, self.server.state_dir)
        if error:
            return self.send_json(400, {"error": error, "node_errors": node_errors})
        self.send_json(200, {"prompt_id": str(uuid.uuid4()), "number": 0, "node_errors": {}})

    def system_stats(self):
        total, free = meminfo()
        devices = []
        if not os.environ.get("IPEX_FLEET_LAB_HIDE_ACCELERATOR"):
            devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": total,
                            "vram_free": free, "torch_vram_total": total, "torch_vram_free": free})
        return {
            "system": {"os": os.name, "ram_total": total, "ram_free": free,
                       "comfyui_version": "0.3.68-lab", "python_version": sys.version,
                       "pytorch_version": "lab", "embedded_python": False,
                       "argv": ["main.py", "--listen", self.server.server_address[0]]},
            "devices": devices,
        }


if __name__ == "__main__":
    args = parse_args("ipex-fleet lab stand-in for ComfyUI")
    if args.fail_start:
        fail_start("comfyui")
    serve(Handler, args)
