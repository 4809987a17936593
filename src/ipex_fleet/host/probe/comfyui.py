"""ComfyUI level 2: a tiny prompt run end to end, and the outcome of the recent jobs.

It follows ComfyUI's API (REFERENCE.md): POST /prompt queues a prompt, GET /history/{id} holds its
outcome once it ran (`status.status_str` success or error, `messages` with `execution_error` naming
the node and the exception), GET /history?max_items=N the last N. The probe's prompt needs no model
file (EmptyImage into PreviewImage, core nodes of every ComfyUI), so any host can run it.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

from ipex_fleet.common.waiting import wait_until
from ipex_fleet.host.fleetconfig import ServiceConfig
from ipex_fleet.host.probe.httpjson import HTTPProblem, request
from ipex_fleet.host.probe.model import Outcome, failed, passed, skipped

TINY_PROMPT: dict[str, Any] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
}


def tiny_prompt() -> dict[str, Any]:
    """The tiny prompt with a colour of its own: ComfyUI caches a node whose inputs it has seen, and a
    cached run proves nothing."""
    prompt = {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in TINY_PROMPT.items()}
    if "color" in prompt.get("1", {}).get("inputs", {}):
        prompt["1"]["inputs"]["color"] = random.randrange(0x1000000)
    return prompt
RUN_WAIT = 60.0  # seconds for the tiny prompt to run, queue included
RECENT = 5  # the last N jobs: all of them failing fails the check


def execution_error(entry: dict[str, Any], kind: str = "execution_error") -> dict[str, Any] | None:
    """The `execution_error` message (or another `kind`) of a history entry, if it has one."""
    for message in (entry.get("status") or {}).get("messages") or []:
        if isinstance(message, list) and len(message) == 2 and message[0] == kind:
            return message[1] if isinstance(message[1], dict) else {}
    return None


def interrupted(entry: dict[str, Any]) -> bool:
    """A job someone stopped (POST /interrupt): `execution_interrupted`, status error, but no failure."""
    return execution_error(entry, "execution_interrupted") is not None


def describe_error(error: dict[str, Any]) -> str:
    """`node 3 (KSampler): RuntimeError: ...`, as a person reads it."""
    return (f"node {error.get('node_id')} ({error.get('node_type')}): "
            f"{error.get('exception_type')}: {str(error.get('exception_message') or '').strip()}")


def check_run(svc: ServiceConfig | None, wait: float = RUN_WAIT) -> Outcome:
    if svc is None:
        return skipped("no ComfyUI service configured on this host")
    started = time.monotonic()
    try:
        queued = request(f"{svc.url}/prompt", {"prompt": tiny_prompt(), "client_id": f"ipex-fleet-probe-{uuid.uuid4()}"},
                         timeout=15)
        prompt_id = queued["prompt_id"]
    except (HTTPProblem, KeyError, TypeError) as exc:
        return failed(f"ComfyUI did not queue the probe's prompt: {exc}")
    entry: dict[str, Any] = {}
    problem: list[str] = []

    def recorded() -> bool:
        try:
            entry.update(request(f"{svc.url}/history/{prompt_id}", timeout=10).get(prompt_id) or {})
        except (HTTPProblem, AttributeError) as exc:
            problem.append(f"ComfyUI /history/{prompt_id}: {exc}")
            return True
        return bool(entry)

    wait_until(recorded, max(0.0, wait - (time.monotonic() - started)), "the probe prompt's history", interval=0.25)
    if problem:
        return failed(problem[0])
    took = round(time.monotonic() - started, 2)
    if not entry:
        try:
            queue = request(f"{svc.url}/queue", timeout=10)
            where = f"{len(queue.get('queue_running', []))} running, {len(queue.get('queue_pending', []))} pending"
        except (HTTPProblem, AttributeError):
            where = "its queue unreadable"
        return failed(f"ComfyUI's probe prompt {prompt_id} did not run within {wait:g}s ({where})", prompt_id=prompt_id)
    status = entry.get("status") or {}
    error = execution_error(entry)
    if interrupted(entry):
        stop = execution_error(entry, "execution_interrupted") or {}
        return failed(f"ComfyUI's probe prompt was interrupted at node {stop.get('node_id')} ({stop.get('node_type')}): "
                      "someone called /interrupt while it ran", prompt_id=prompt_id)
    if error is not None or status.get("status_str") != "success":
        why = describe_error(error) if error is not None else f"status {status.get('status_str')!r}"
        return failed(f"ComfyUI's probe prompt failed at {why}", prompt_id=prompt_id, error=error)
    return passed(f"a prompt ran end to end in {took:g}s (EmptyImage to PreviewImage)", prompt_id=prompt_id,
                  seconds=took)


def check_recent(svc: ServiceConfig | None, recent: int = RECENT) -> Outcome:
    if svc is None:
        return skipped("no ComfyUI service configured on this host")
    try:
        history = request(f"{svc.url}/history?max_items={recent}", timeout=10)
    except HTTPProblem as exc:
        return failed(f"ComfyUI /history: {exc}")
    if not isinstance(history, dict):
        return failed("ComfyUI /history answered something that is not its history")
    entries = list(history.values())[-recent:]
    # A job someone interrupted ended in status error, but says nothing against the host.
    stopped = [e for e in entries if interrupted(e)]
    errored = [e for e in entries if (e.get("status") or {}).get("status_str") == "error" and not interrupted(e)]
    data = {"jobs": len(entries), "errored": len(errored), **({"interrupted": len(stopped)} if stopped else {})}
    if len(entries) >= recent and len(errored) == len(entries):
        last = execution_error(errored[-1]) or {}
        return failed(f"the last {len(entries)} ComfyUI jobs all failed; the latest at {describe_error(last)}", **data)
    if not entries:
        return passed("no jobs in ComfyUI's history yet", **data)
    return passed(f"{len(entries) - len(errored)} of the last {len(entries)} ComfyUI jobs succeeded", **data)
