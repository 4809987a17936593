"""ComfyUI's prompt queue and history, with a fake executor (REFERENCE.md, ComfyUI HTTP API).

A queued prompt is `[number, prompt_id, prompt, extra_data, outputs_to_execute]`, as /queue shows it.
One worker runs them in order: each node of the outputs' graph takes a moment, an output node writes
an image, /ws listeners get ComfyUI's messages as it goes, and the history entry records `status` (`status_str`, `completed`, `messages` with
`execution_start`, `execution_cached`, then `execution_success` or `execution_error` naming the node
and the exception) and `outputs`, as ComfyUI's does. A node that was given a constant where a link
is expected fails when it runs, as in ComfyUI. Nodes whose class and inputs match the previous
prompt's are cached, as ComfyUI's cache keeps the last prompt's outputs: they do not run again and
`execution_cached` lists them (an unchanged prompt queued twice runs nothing the second time). The lab knob fail_comfyui_jobs fails every job at its
sampler (or its first node), as a broken device or driver makes real jobs fail. `interrupt` stops the
running job where ComfyUI checks for it (before each node, and at each sampler step): its history
entry ends with `execution_interrupted` (node, type, what had executed), `status_str` "error", as
ComfyUI's executor records an InterruptProcessingException.
"""

import heapq
import json
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict

from _nodes import VALUE_TYPES  # noqa: E402

MAX_HISTORY = 10000
NODE_SECONDS = 0.01
STEP_SECONDS = 0.002


def now_ms():
    return int(time.time() * 1000)


def _signature(prompt, node_id, memo):
    """What decides a node's output: its class and inputs, each link replaced by its source's signature."""
    if node_id not in memo:
        node, parts = prompt[node_id], []
        for name, value in sorted((prompt[node_id].get("inputs") or {}).items()):
            if isinstance(value, list) and len(value) == 2 and value[0] in prompt:
                parts.append((name, _signature(prompt, value[0], memo), value[1]))
            else:
                parts.append((name, json.dumps(value, sort_keys=True)))
        memo[node_id] = repr((node["class_type"], parts))
    return memo[node_id]


def _order(prompt, outputs):
    """The nodes the outputs need, each after the nodes it links to."""
    seen, order = set(), []

    def visit(node_id):
        if node_id in seen:
            return
        seen.add(node_id)
        for value in (prompt[node_id].get("inputs") or {}).values():
            if isinstance(value, list) and len(value) == 2 and value[0] in prompt:
                visit(value[0])
        order.append(node_id)

    for output in sorted(outputs):
        visit(output)
    return order


class Jobs:
    def __init__(self, state_dir, types_for, fail_jobs=False):
        self.state_dir = state_dir
        self.types_for = types_for  # () -> node types, read at run time (model folders change)
        self.fail_jobs = fail_jobs
        self.lock = threading.Condition()
        self.pending = []  # heap of (number, prompt_id, prompt, extra_data, outputs)
        self.running = None
        self.stop = False  # an interrupt asked for the running job (ComfyUI's interrupt_processing flag)
        self.history = OrderedDict()
        self.number = 0
        self.images = 0
        self.sockets = {}  # client id -> queue.Queue of (type, data) for its /ws connection
        self.cache = {}  # node signature -> its output, from the previous prompt (worker thread only)
        threading.Thread(target=self.worker, daemon=True).start()

    # -- /ws listeners: messages go to the prompt's client id, or to everyone without one ---------

    def listen(self, sid):
        with self.lock:
            self.sockets[sid] = queue.Queue()
            return self.sockets[sid]

    def leave(self, sid):
        with self.lock:
            self.sockets.pop(sid, None)

    def send(self, kind, data, sid=None):
        with self.lock:
            targets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
        for target in targets:
            target.put((kind, data))

    def status(self):
        with self.lock:
            remaining = len(self.pending) + (1 if self.running else 0)
        return {"status": {"exec_info": {"queue_remaining": remaining}}}

    # -- the queue --------------------------------------------------------------------------------

    def put(self, prompt, outputs, extra_data, front=False, number=None, prompt_id=None):
        with self.lock:
            if number is None:
                number = -self.number if front else self.number
                self.number += 1
            prompt_id = str(prompt_id or uuid.uuid4())
            heapq.heappush(self.pending, (number, prompt_id, prompt, extra_data, list(outputs)))
            self.lock.notify()
        self.send("status", self.status())
        return prompt_id, number

    def queue(self):
        with self.lock:
            running = [list(self.running)] if self.running else []
            return {"queue_running": running, "queue_pending": [list(item) for item in sorted(self.pending)]}

    def clear_queue(self, delete=None):
        with self.lock:
            if delete is None:
                self.pending = []
            else:
                self.pending = [item for item in self.pending if item[1] not in set(delete)]
                heapq.heapify(self.pending)

    def interrupt(self, prompt_id=None):
        """POST /interrupt: the running job stops at its next check; with a prompt_id, only if that one
        runs (ComfyUI skips an interrupt for a prompt that is not running). Returns whether it applies."""
        with self.lock:
            if self.running is None or (prompt_id is not None and self.running[1] != prompt_id):
                return False
            self.stop = True
            return True

    def get_history(self, prompt_id=None, max_items=None):
        with self.lock:
            if prompt_id is not None:
                return {prompt_id: self.history[prompt_id]} if prompt_id in self.history else {}
            items = list(self.history.items())
            if max_items is not None:
                items = items[-max_items:] if max_items > 0 else []
            return dict(items)

    def clear_history(self, delete=None):
        with self.lock:
            if delete is None:
                self.history.clear()
            for prompt_id in delete or ():
                self.history.pop(prompt_id, None)

    # -- the executor -----------------------------------------------------------------------------

    def worker(self):
        while True:
            with self.lock:
                while not self.pending:
                    self.lock.wait()
                item = heapq.heappop(self.pending)
                self.running = item
                self.stop = False  # as ComfyUI clears its interrupt flag when a prompt starts
            try:
                entry = self.execute(item)
            except Exception as ex:  # never lose a job: record what broke, as ComfyUI does
                entry = self.entry(item, {}, [["execution_start", {"prompt_id": item[1], "timestamp": now_ms()}],
                                              ["execution_error", {
                    "prompt_id": item[1], "node_id": None, "node_type": None, "executed": [],
                    "exception_message": str(ex), "exception_type": type(ex).__name__, "traceback": [],
                    "current_inputs": {}, "current_outputs": {}, "timestamp": now_ms()}]], "error")
            with self.lock:
                self.running = None
                self.history[item[1]] = entry
                while len(self.history) > MAX_HISTORY:
                    self.history.popitem(last=False)
            sid = item[3].get("client_id")
            self.send("executing", {"node": None, "prompt_id": item[1]}, sid)  # done, as main.py's worker says
            self.send("status", self.status())

    def entry(self, item, outputs, messages, status):
        return {"prompt": list(item), "outputs": outputs,
                "status": {"status_str": status, "completed": status == "success", "messages": messages},
                "meta": {node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
                         for node in outputs}}

    def failure(self, prompt, node_id, types):
        """(exception_type, message) when this node cannot run, else None."""
        node = prompt[node_id]
        spec = types.get(node["class_type"], {"input": {}})
        fields = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        for name, value in (node.get("inputs") or {}).items():
            kind = fields.get(name, ("*",))[0]
            if isinstance(kind, str) and kind not in VALUE_TYPES and not isinstance(value, list):
                return "AttributeError", f"'{type(value).__name__}' object has no attribute for the {kind} input {name!r}"
        return None

    def execute(self, item):
        number, prompt_id, prompt, extra_data, outputs = item
        sid = extra_data.get("client_id")
        types = self.types_for()
        order = _order(prompt, outputs)
        messages = []

        def say(kind, data, record=True):  # to the prompt's /ws client, and (most) into its history
            self.send(kind, data, sid)
            if record:
                messages.append([kind, data])

        memo = {}
        signatures = {n: _signature(prompt, n, memo) for n in order}
        cached = [n for n in order if signatures[n] in self.cache]
        cache, self.cache = self.cache, {}  # what this prompt does not reuse is dropped
        say("execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()})
        say("execution_cached", {"nodes": cached, "prompt_id": prompt_id, "timestamp": now_ms()})
        todo = [n for n in order if n not in cached]
        doomed = None
        if self.fail_jobs:  # lab fault: the sampler (or the first node) raises, as on a broken device
            doomed = next((n for n in todo if prompt[n]["class_type"] == "KSampler"), todo[0] if todo else None)
        executed, results = list(cached), {}

        def interrupted(node_id):
            """ComfyUI's throw_exception_if_processing_interrupted: an asked-for interrupt ends the job here."""
            if not self.stop:
                return False
            say("execution_interrupted", {"prompt_id": prompt_id, "node_id": node_id,
                                          "node_type": prompt[node_id]["class_type"], "executed": list(executed),
                                          "timestamp": now_ms()})
            return True

        for node_id in cached:
            self.cache[signatures[node_id]] = cache[signatures[node_id]]
            if cache[signatures[node_id]] is not None:
                results[node_id] = cache[signatures[node_id]]
        for node_id in todo:
            node = prompt[node_id]
            if interrupted(node_id):
                return self.entry(item, results, messages, "error")
            say("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, record=False)
            steps = node.get("inputs", {}).get("steps")
            time.sleep(NODE_SECONDS)
            if isinstance(steps, int) and 0 < steps < 1000:
                for step in range(1, steps + 1):
                    time.sleep(STEP_SECONDS)
                    if interrupted(node_id):
                        return self.entry(item, results, messages, "error")
                    say("progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": node_id}, record=False)
            broken = self.failure(prompt, node_id, types)
            if node_id == doomed:
                broken = ("RuntimeError", f"{node['class_type']} failed on the device "
                                          "(lab fault fail_comfyui_jobs)")
            if broken:
                say("execution_error", {
                    "prompt_id": prompt_id, "node_id": node_id, "node_type": node["class_type"],
                    "executed": list(executed), "exception_message": broken[1], "exception_type": broken[0],
                    "traceback": [f'  File "/lab/comfyui/execution.py", line 1, in execute\n'],
                    "current_inputs": {k: [v] for k, v in (node.get("inputs") or {}).items()},
                    "current_outputs": {}, "timestamp": now_ms()})
                return self.entry(item, results, messages, "error")
            executed.append(node_id)
            self.cache[signatures[node_id]] = None
            if types.get(node["class_type"], {}).get("output_node"):
                results[node_id] = self.cache[signatures[node_id]] = {"images": [self.save_image(node)]}
                say("executed", {"node": node_id, "display_node": node_id, "output": results[node_id],
                                 "prompt_id": prompt_id}, record=False)
        say("execution_success", {"prompt_id": prompt_id, "timestamp": now_ms()})
        return self.entry(item, results, messages, "success")

    def save_image(self, node):
        """An output image as ComfyUI names it (SaveImage to output/, PreviewImage to temp/)."""
        kind = "output" if node["class_type"] == "SaveImage" else "temp"
        prefix = str((node.get("inputs") or {}).get("filename_prefix") or
                     ("ComfyUI" if kind == "output" else "ComfyUI_temp"))
        with self.lock:
            self.images += 1
            name = f"{prefix}_{self.images:05}_.png"
        folder = os.path.join(self.state_dir, kind)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n(lab)")
        return {"filename": name, "subfolder": "", "type": kind}
