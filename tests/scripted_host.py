"""A scripted host: the real transaction's commands, answered by a model of a NixOS host.

It receives the exact shell strings the transaction sends (through ipex_fleet.remote, wrapped and
quoted as for SSH), recognises each by the builder that made it, and answers as a host would:
profiles and generations, /run/current-system, the intent journal with its lease and claims, the
lock, the deploy records. A fault can be set on the n-th command of a kind: it fails, times out,
the host drops (every later command too), or the controller dies (a BaseException that no step
catches, as a SIGKILL ends everything).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace
from pathlib import Path
from typing import Any

from ipex_fleet.transaction import hostagent
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.host import agent as host_agent
from ipex_fleet.remote import HostUnreachable, SessionLost, StepTimeout, _RC_MARK

STATE = "/var/lib/ipex-fleet"
PROFILE = "/nix/var/nix/profiles/system"


class ControllerDied(BaseException):
    """The controller is gone mid-command (SIGKILL): nothing of it runs after this."""


@dataclass
class Fault:
    kind: str
    nth: int  # 1 = the first command of that kind
    how: str  # fail | timeout | drop | die | die_after | lost_* (activate: LOST_HOWS)


# An activation whose SSH session ends before its exit code: the command never reached the host, it
# ran to its end, the host crashed and booted again during it, or its unit ran on for a while.
LOST_HOWS = ("lost_before", "lost_after", "lost_crash", "lost_running")


@dataclass
class ScriptedHost:
    name: str
    data: dict[str, Any]
    generations: dict[int, str] = field(default_factory=lambda: {1: "/nix/store/aaa-nixos-system-1"})
    current: int = 1
    running: str = "/nix/store/aaa-nixos-system-1"
    booted: str = "/nix/store/aaa-nixos-system-1"
    target_build: str = "/nix/store/bbb-nixos-system-2"
    # The host agent: the real program (ipex_fleet.host.agent) on this host's own clock and directory.
    host_clock: "HostClock" = field(default_factory=lambda: HostClock())
    agent_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="scripted-agent-"))
    agent_installed: bool = False
    armed: dict[str, str] = field(default_factory=dict)  # intent id -> run id of each watchdog started
    revert_fails: bool = False  # the old generation's activation fails (a revert that cannot verify)
    bench_verdict: str = "pass"  # the benchmark gate's verdict (pass, fail, inconclusive)
    probe_result: str = "pass"  # the probe's result (pass, warn, fail)
    tokens_verdict: str | None = None  # level 2's Ollama tokens/s gate (pass, fail, inconclusive), None: none
    records: list[dict[str, Any]] = field(default_factory=list)
    fault: Fault | None = None
    second: Fault | None = None  # a second fault, for double faults (a gate fails, then the controller dies)
    seen: dict[str, int] = field(default_factory=dict)
    dropped: bool = False
    logs: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    fenced: int = 0  # activations their fence refused (the intent decided before they began)
    # Each activation's unit by its call id: ("done", exit code, output), ("interrupted",) or
    # ("running", answers left before it ends, its end); none for a command that never reached the host.
    units: dict[str, tuple] = field(default_factory=dict)
    trips: list[str] = field(default_factory=list)  # the kind of each round trip's command (kinds: of each part)
    fresh_trips: list[str] = field(default_factory=list)  # those of them over a new connection
    agent_starts: int = 0  # the agent's program started on the host (each call, each status it printed)
    state: Any = field(default_factory=SimpleNamespace)  # pyinfra's State of the current run

    # -- what pyinfra's Host offers the transaction ---------------------------------------------

    def log(self, message: str, _fn: Any = None) -> None:
        self.logs.append(message)

    def put_file(self, *_args: Any, **_kwargs: Any) -> bool:
        if self.dropped:
            raise OSError("connection lost")
        return True

    def run_shell_command(self, wrapped: str, print_output: bool = False, _timeout: float | None = None,
                          **_kwargs: Any):
        command = wrapped[len("( "):wrapped.rindex("\n); printf")]
        self.trips.append(classify(command))
        rc, out = self.answer(command)
        return rc == 0, SimpleNamespace(stdout_lines=[*out, "", f"{_RC_MARK}{rc}"], stderr_lines=[])

    def fresh(self, command: str):
        """run_fresh: the same host over a new connection."""
        from ipex_fleet.remote import _result

        self.trips.append(classify(command))
        self.fresh_trips.append(classify(command))
        rc, out = self.answer(command)
        return _result([*out, f"{_RC_MARK}{rc}"], [])

    # -- the host agent's state, read from its own files ----------------------------------------

    @property
    def agent(self) -> host_agent.Agent:
        return host_agent.Agent(self.agent_dir, host_agent.Clock(self.host_clock.now, self.host_clock.boot_id,
                                                                  self.host_clock.sleep), ScriptedSystem(self))

    @property
    def intent(self) -> dict[str, Any] | None:
        return host_agent.read_json(f"{self.agent_dir}/intent.json")

    @property
    def lock(self) -> dict[str, Any] | None:
        held = host_agent.read_json(f"{self.agent_dir}/lock")
        return None if held is None else {**held["owner"], "token": held["token"]}

    @property
    def resolved(self) -> dict[str, str]:
        """"RUN.WHO" -> the revert's outcome ("" while deciding or committed)."""
        out = {}
        for path in sorted(Path(self.agent_dir, "resolved").glob("*.json")):
            data = json.loads(path.read_text())
            who = path.name[:-5].rsplit(".", 1)[1]
            out[f"{data['run_id']}.{who}"] = data.get("outcome") or ""
        return out

    @property
    def watchdogs(self) -> set[str]:
        return set(self.armed.values())

    def inject_intent(self, run_id: str, previous: dict[str, Any], target: dict[str, Any], mode: str = "switch",
                      left: float = -1) -> None:
        """An intent a dead run left (its lease `left` seconds from now on the host's clock)."""
        host_agent.write_json(f"{self.agent_dir}/intent.json", {
            "intent_id": f"{run_id}-dead", "run_id": run_id, "previous": previous, "target": target, "mode": mode,
            "profile": PROFILE, "phase": "confirmed", "record": {"run_id": run_id},
            "lease": {"boot_id": self.host_clock.boot_id(), "deadline": self.host_clock.now() + left,
                      "reboot_grace": 60}})

    def agent_call(self, command: str) -> tuple[int, list[str]]:
        self.agent_starts += 1
        argv = agent_argv(command)
        for option in ("--metrics-dir", "--textfile-dir"):  # metrics: in this host's directory, never this machine's
            if option in argv:
                argv[argv.index(option) + 1] = f"{self.agent_dir}/metrics"
        if "--push-json" in argv:  # the push's folders: this host's, never this machine's
            at = argv.index("--push-json") + 1
            push = json.loads(argv[at])
            argv[at] = json.dumps({**push, "flakes": f"{self.agent_dir}/flake", "roots": f"{self.agent_dir}/gcroots"})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = host_agent.main(argv, make=lambda _root: self.agent)
        return rc, out.getvalue().splitlines()

    def agent_status_line(self) -> str:
        self.agent_starts += self.agent_installed
        return "agent=" + (json.dumps(self.agent.status()) if self.agent_installed else "missing")

    # -- the model -------------------------------------------------------------------------------

    def answer(self, command: str) -> tuple[int, list[str]]:
        kind = classify(command)
        self.kinds.append(kind)
        if self.dropped:
            raise HostUnreachable(f"no answer from {self.name} (dropped)")
        self.seen[kind] = self.seen.get(kind, 0) + 1
        fault = next((f for f in (self.fault, self.second) if f and f.kind == kind and f.nth == self.seen[kind]), None)
        if fault:
            how = fault.how
            if how == "die":
                raise ControllerDied(kind)
            if how == "drop":
                self.dropped = True
                raise HostUnreachable(f"no answer from {self.name} (dropped during {kind})")
            if how == "timeout":
                raise StepTimeout(f"{kind} did not finish")
            if how in LOST_HOWS:
                self.lose_activation(how, command)
            if how == "die_after":  # the host ran it; the controller died before hearing back
                getattr(self, f"do_{kind}")(command)
                raise ControllerDied(kind)
            return self.failing(kind, command)
        return getattr(self, f"do_{kind}")(command)

    def lose_activation(self, how: str, command: str) -> None:
        """The activation's session ends before its exit code (SessionLost), after what `how` says."""
        call_id = _call_id(command)
        if how in ("lost_after", "lost_running"):
            rc, out = self.do_activate(command)
            self.units[call_id] = ("done", rc, out) if how == "lost_after" else ("running", 3, (rc, out))
        elif how == "lost_crash":  # switched, then the host crashed mid-activation and booted again
            self.running = self.target_build
            self.units[call_id] = ("interrupted",)
            self.reboot()
        raise SessionLost(f"the SSH session ended before the command reported its exit code ({how})")

    def do_activation_outcome(self, command: str) -> tuple[int, list[str]]:
        """nixcmd.activation_outcome: its exit code once recorded (after the line that says so); 75 while the unit runs; 76 for a unit
        that ended without one (interrupted) or never started."""
        call_id = _call_id(command)
        unit = self.units.get(call_id)
        if unit is None:
            return nixcmd.ACTIVATION_GONE, [nixcmd.ACTIVATION_NEVER_STARTED]
        if unit[0] == "interrupted":
            return nixcmd.ACTIVATION_GONE, [nixcmd.ACTIVATION_INTERRUPTED]
        if unit[0] == "running":
            left, end = unit[1], unit[2]
            self.units[call_id] = ("running", left - 1, end) if left > 1 else ("done", *end)
            return nixcmd.ACTIVATION_RUNNING, []
        return unit[1], [nixcmd.ACTIVATION_RECORDED, *unit[2]]

    def failing(self, kind: str, command: str) -> tuple[int, list[str]]:
        if kind == "probe":
            return 1, [json.dumps({"result": "fail", "level": 2, "checks": [
                {"name": "units", "result": "fail", "message": "failed units: ollama.service"}]})]
        if kind == "bench":
            return 1, [json.dumps({"gate": {"result": "fail", "comparisons": [
                {"name": "matmul", "verdict": "fail", "message": "40% slower"}]}, "results": [], "device": {}})]
        if kind == "models":
            return 1, [json.dumps({"installed": [], "present": [], "pruned": [], "failed": ["a: HTTP 404"],
                                   "bytes_downloaded": 0, "bytes_hashed": 0})]
        if kind == "activate":  # NixOS activates on, then reports the failed snippet (exit 2: not marked)
            self.do_activate(command, exit_code=2)
            return 2, ["Activation script snippet 'x' failed (1)"]
        if kind == "renew":
            return 1, ["mv: cannot move"]
        return 1, [f"{kind} failed"]

    @property
    def profile_path(self) -> str:
        return self.generations[self.current]

    def do_preflight(self, command: str) -> tuple[int, list[str]]:
        agent = None
        if f"agent={hostagent.QUIET}" in command and self.agent_installed:  # the fast path's look, without the agent
            status = self.agent.status()
            if not (status["lock"] or status["intent"] or status["unfinished"]):
                agent = f"agent={hostagent.QUIET}"
        agent = agent or self.agent_status_line()
        lines = ["os_id=nixos", "nix=nix (Nix) 2.18", "free_kb=99999999", agent]
        if "last_deploy=" in command:  # what the last deploy left (the no-change fast path)
            deploys = [r for r in self.records if r.get("phase") == "deploy"]
            lines += [f"profile={self.profile_path}", f"running={self.running}"]
            lines += [f"last_deploy={json.dumps(deploys[-1])}"] if deploys else []
        return 0, lines

    def do_agent_missing(self, _c: str) -> tuple[int, list[str]]:
        return 0, [self.agent_status_line()]

    def do_install_agent(self, _c: str) -> tuple[int, list[str]]:
        self.agent_installed = True
        return 0, [json.dumps(self.agent.status())]

    def do_read_intent(self, _c: str) -> tuple[int, list[str]]:
        return 0, [] if self.intent is None else [f"intent={json.dumps(self.intent)}"]

    def do_agent(self, command: str) -> tuple[int, list[str]]:
        return self.agent_call(command)

    def do_commit(self, command: str) -> tuple[int, list[str]]:
        """The agent's commit: the record comes on its stdin (printf, piped); what it wrote is the host's record."""
        line = shlex.split(command.split("printf '%s\\n' ", 1)[1])[0]
        with _stdin(line + "\n"):
            rc, out = self.agent_call(command)
        if rc == 0 and hostagent.parse(out).get("recorded") and not hostagent.parse(out).get("again"):
            self.records.append(json.loads(line))
        return rc, out

    def do_lock(self, command: str) -> tuple[int, list[str]]:
        rc, out = self.agent_call(command)
        if rc == 0 and nixcmd.PROFILE_LINKS in command:  # the profile, read in the lock's round trip
            out += self.do_profile_state(command)[1]
        return rc, out

    def do_open_intent(self, command: str) -> tuple[int, list[str]]:
        """The agent's open; then, in the same round trip once it is open, the profile's switch (a part
        of its own: its faults fire as a round trip's would)."""
        rc, out = self.agent_call(command)
        if rc == 0 and nixcmd.THEN_MARK in command:
            then = command.split("; then ( ", 1)[1].rsplit("\n); printf", 1)[0]
            then_rc, then_out = self.answer(then)
            out += [*then_out, "", f"{nixcmd.THEN_MARK}{then_rc}"]
        return rc, out

    do_release = do_renew = do_claim = do_revert = do_outcome = do_recover = do_agent
    do_arm = do_agent_status = do_restore = do_agent

    def do_profile_state(self, _c: str) -> tuple[int, list[str]]:
        lines = [f"system-{n}-link 1700000000 {p}" for n, p in sorted(self.generations.items())]
        return 0, [*lines, f"current system-{self.current}-link"]

    def do_noop(self, _c: str) -> tuple[int, list[str]]:
        return 0, []

    def do_build(self, command: str) -> tuple[int, list[str]]:
        out = [json.dumps([{"drvPath": "/nix/store/x.drv", "outputs": {"out": self.target_build}}])]
        if nixcmd.RUNNING_MARK in command:  # the running system, in the same round trip
            out += ["", f"{nixcmd.RUNNING_MARK}{self.running}"]
        return 0, out

    def do_running(self, _c: str) -> tuple[int, list[str]]:
        return 0, [self.running]

    def do_set_profile(self, command: str) -> tuple[int, list[str]]:
        words = shlex.split(command)
        path = words[words.index("--set") + 1]
        number = max(self.generations) + 1
        self.generations[number] = path
        self.current = number
        if nixcmd.PROFILE_LINKS in command:  # read back in the same round trip
            return self.do_profile_state(command)
        return 0, []

    def do_switch_generation(self, command: str) -> tuple[int, list[str]]:
        number = int(shlex.split(command)[-1])
        if number not in self.generations:
            return 1, [f"generation {number} does not exist"]
        self.current = number
        return 0, []

    def do_activate(self, command: str, exit_code: int = 0) -> tuple[int, list[str]]:
        words = shlex.split(command)
        stc = next(w for w in words if w.endswith("/bin/switch-to-configuration") and not w.startswith("test"))
        action = words[words.index(stc) + 1]
        path = stc.rsplit("/bin/", 1)[0]
        fence = next((w for w in words if w.startswith("if ") and " fence --intent " in w), None)
        if fence is not None:  # inside the unit, before switch-to-configuration: the real agent's answer
            fenced, _ = self.agent_call(fence[3:].split(" >/dev/null;", 1)[0])
            if fenced != 0:
                self.fenced += 1
                return nixcmd.ACTIVATION_FENCED, ["ipex-fleet: activation refused: its intent was decided"]
        if action in ("switch", "test"):
            self.running = path
        out = [f"activating the configuration {path} ({action})"]
        if nixcmd.RUNNING_MARK in command:  # the running system, in the same round trip
            out += ["", f"{nixcmd.RUNNING_MARK}{self.running}"]
        if nixcmd.THEN_MARK in command and self.running == path and f"[ $r = {exit_code} ]" in command:
            # the intent marked `activated` there too, where the activation's exit is one the controller accepts
            marked, _ = self.answer(command[command.rindex(hostagent.LAUNCHER):].split("\n)", 1)[0])
            out.append(f"{nixcmd.THEN_MARK}{marked}")
        return 0, out

    def do_probe(self, _c: str) -> tuple[int, list[str]]:
        check = {"name": "host_link", "result": self.probe_result, "message": "host-device copies are slow: 3.1 GB/s"}
        checks, result = [{"name": "units", "result": "pass"}, check], self.probe_result
        if self.tokens_verdict:  # as probe/tokens.py reports it in the ollama_generate check
            kind = {"pass": "pass", "fail": "fail", "inconclusive": "warn"}[self.tokens_verdict]
            checks.append({"name": "ollama_generate", "result": kind, "data": {"gate": {
                "result": self.tokens_verdict, "model": "llama3.2:1b", "value": 61.0, "baseline": 80.0, "ratio": 0.76}},
                "message": "llama3.2:1b: 61.0 tokens/s, 76% of the 80.0 tokens/s recorded on this host"})
            result = "fail" if "fail" in (kind, result) else "warn" if "warn" in (kind, result) else "pass"
        return 0, [json.dumps({"result": result, "level": 2, "checks": checks})]

    def do_bench(self, _c: str) -> tuple[int, list[str]]:
        comparisons = [] if self.bench_verdict == "pass" else [
            {"name": "matmul", "verdict": self.bench_verdict, "message": "0.81 of baseline, 90% interval 0.62-1.02"}]
        return 0, [json.dumps({"gate": {"result": self.bench_verdict, "comparisons": comparisons}, "results": [],
                               "device": {}})]

    def do_models(self, _c: str) -> tuple[int, list[str]]:
        return 0, [json.dumps({"installed": ["checkpoints/a.safetensors"], "present": [], "pruned": [],
                               "failed": [], "bytes_downloaded": 1, "bytes_hashed": 1})]

    def do_record(self, command: str) -> tuple[int, list[str]]:
        if "printf '%s\\n' " in command:
            self.records.append(json.loads(shlex.split(command.split("printf '%s\\n' ", 1)[1])[0]))
        if "lock-release" in command:  # the same round trip releases the lock (ours, by its token), its last
            release = command.rindex(" lock-release ")  # agent call (the agent's metrics may come before it)
            self.agent_call(command[command.rindex(hostagent.LAUNCHER, 0, release):])
        return 0, []

    def do_deploy_log(self, _c: str) -> tuple[int, list[str]]:
        return 0, [json.dumps(r) for r in self.records]

    # -- maintenance ------------------------------------------------------------------------------

    def do_upkeep_facts(self, command: str) -> tuple[int, list[str]]:
        _, lines = self.do_profile_state(command)
        intent = [] if not self.intent else ["intent=" + json.dumps(
            {"previous": self.intent.get("previous"), "target": self.intent.get("target")})]
        return 0, [*lines, f"running={self.running}", f"booted={self.booted}", *intent,
                   *[f"record={json.dumps(r)}" for r in self.records], "free_kb=99999999"]

    def do_maint_probe(self, command: str) -> tuple[int, list[str]]:
        _, facts = self.do_upkeep_facts(command)
        agent = next(line for line in self.do_preflight(command)[1] if line.startswith("agent="))  # quiet or not, as there
        tmp = ["tmp_recent=1"] if getattr(self, "tmp_recent", False) else ["tmp_before_kb=8", "tmp_after_kb=4"]
        return 0, [agent, *facts, *[f"due={d}" for d in getattr(self, "due", ())],
                   f"records={len(self.records)}", "journal_kb=1024", *tmp]

    def do_delete_generations(self, command: str) -> tuple[int, list[str]]:
        words = shlex.split(command)
        numbers = [int(w) for w in words[words.index("--delete-generations") + 1:] if w.isdigit()]
        if self.current in numbers:  # as nix-env: never the current one
            return 1, [f"error: cannot delete current generation {self.current}"]
        for n in numbers:
            self.generations.pop(n, None)
        return 0, []

    def do_gc(self, _c: str) -> tuple[int, list[str]]:
        return 0, ["free_before_kb=100", "gc=3 store paths deleted, 1.00 MiB freed", "free_after_kb=1124"]

    def do_prune_pushed(self, _c: str) -> tuple[int, list[str]]:
        return 0, ["trimmed=0"]

    def do_vacuum(self, _c: str) -> tuple[int, list[str]]:
        return 0, ["journal_before_kb=2048", "journal_after_kb=1024", "disk_usage=1.0M",
                   "tmp_before_kb=8", "tmp_after_kb=4"]

    def do_restart(self, _c: str) -> tuple[int, list[str]]:
        return 0, ["restarted=ollama.service", "restarted=comfyui.service"]

    def do_history(self, _c: str) -> tuple[int, list[str]]:
        return 0, []

    # -- what the host does by itself ------------------------------------------------------------

    def lease_runs_out(self) -> bool:
        """Time passes on the host with no controller: every lease runs out, an armed watchdog reverts."""
        self.dropped = False
        self.fault = self.second = None
        self.host_clock.t += 10**6
        intent = self.intent
        if intent and intent["intent_id"] in self.armed:
            try:
                self.agent.watch(intent["intent_id"], poll=1)
            except host_agent.Refused:
                pass
            return True
        return False

    def watchdog_tick(self) -> None:
        """The armed watchdog looks once (it polls every second on a real host)."""
        intent = self.intent
        if intent and intent["intent_id"] in self.armed and self.agent.left(intent["lease"]) <= 0:
            try:
                self.agent.revert(intent["intent_id"], "watchdog")
            except host_agent.Refused:
                pass

    def reboot(self) -> None:
        """A boot: transient units end; the boot unit re-arms what is open."""
        self.host_clock.reboot()
        self.armed.clear()
        self.units = {k: ("interrupted",) if u[0] == "running" else u for k, u in self.units.items()}
        self.running = self.profile_path
        self.agent.boot()


@contextlib.contextmanager
def _stdin(text: str):
    import sys

    saved, sys.stdin = sys.stdin, io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


class ScriptedSystem:
    """The agent's view of the scripted host: profile, activation, running system."""

    def __init__(self, host: ScriptedHost) -> None:
        self.host = host

    def profile(self, _profile: str) -> tuple[int | None, str | None]:
        return self.host.current, self.host.generations.get(self.host.current)

    def set_profile(self, _profile: str, number: int | None, path: str) -> bool:
        if number is not None and self.host.generations.get(number) == path:
            self.host.current = number
        else:
            self.host.current = max(self.host.generations) + 1
            self.host.generations[self.host.current] = path
        return True

    def running(self) -> str:
        return self.host.running

    def activate(self, path: str, action: str, _log: str) -> int:
        if self.host.revert_fails:
            return 2
        if action in ("switch", "test"):
            self.host.running = path
        return 0

    def boot_default(self) -> int | None:
        return None  # the scripted host has no boot loader

    def activations_running(self) -> list[str]:
        return []

    def detach(self, unit: str, argv: list[str], _log: str) -> bool:
        if unit.startswith("ipex-fleet-watchdog-"):
            intent_id = unit[len("ipex-fleet-watchdog-"):]
            self.host.armed[intent_id] = (self.host.intent or {}).get("run_id", "?")
        elif unit.startswith("ipex-fleet-revert-"):  # the detached revert runs to its end at once
            try:
                self.host.agent.finish(argv[argv.index("--intent") + 1], argv[argv.index("--who") + 1])
            except host_agent.Refused:
                pass
        return True

    def unit_active(self, unit: str) -> bool:
        return unit.startswith("ipex-fleet-watchdog-") and unit[len("ipex-fleet-watchdog-"):] in self.host.armed


@dataclass
class HostClock:
    """The host's CLOCK_BOOTTIME and boot id (never the controller's clock)."""

    t: float = 500.0
    boot: int = 1

    def now(self) -> float:
        return self.t

    def boot_id(self) -> str:
        return f"boot-{self.boot}"

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def reboot(self) -> None:
        self.boot += 1
        self.t = 3.0


AGENT_KINDS = {"open": "open_intent", "claim": "claim", "commit": "commit", "activated": "renew", "confirm": "renew", "renew": "renew",
               "lock-take": "lock", "lock-release": "release", "revert": "revert", "outcome": "outcome",
               "recover": "recover", "status": "agent_status", "rearm": "arm", "restore": "restore"}


def agent_argv(command: str) -> list[str]:
    """The agent's argv in a command: the words after `LAUNCHER SCRIPT`, up to the shell's next operator."""
    lexer = shlex.shlex(command[command.index(hostagent.LAUNCHER):], posix=True, punctuation_chars=";&|>)")
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if word and set(word) <= set(";&|>)"):
            break
        words.append(word)
    return words[2:]


def _call_id(command: str) -> str:
    """The activation's call id, from its unit's name (ipex-fleet-ACTION-ID)."""
    found = re.search(r"ipex-fleet-[a-z-]+-([0-9a-f]{12})\b", command)
    assert found, command
    return found.group(1)


def classify(command: str) -> str:
    """Which builder made this command (most specific first)."""
    if "systemctl show --property=ActiveState" in command and nixcmd.ACTIVATION_DIR in command:
        return "activation_outcome"
    if "maintenance_probe=1" in command:  # maintenance's fast path: before the agent and facts it carries
        return "maint_probe"
    if command.startswith(f"mkdir -p {STATE} && printf") and "deploys.jsonl" in command:
        return "record"  # before the rules below: a record's error text may quote any command
    if "agent.py.tmp" in command:
        return "install_agent"
    if "os_id=" in command:
        return "preflight"
    if " --set " in command and nixcmd.PROFILE_LINKS in command and hostagent.LAUNCHER not in command:
        return "set_profile"  # set, then read back, in one round trip
    if nixcmd.RUNNING_MARK in command and " build --json" in command:
        return "build"  # its round trip prunes older pushed flakes first (their words match other rules)
    if nixcmd.RUNNING_MARK in command and "/bin/switch-to-configuration" in command:
        return "activate"  # before the agent's calls: the same round trip may mark the intent activated
    if hostagent.LAUNCHER in command and "deploys.jsonl" not in command:
        if "agent=missing" in command:
            return "agent_missing"
        args = agent_argv(command)
        return AGENT_KINDS[args[args.index("--root") + 2]]
    rules = (
        # maintenance (ipex_fleet.nix.upkeep), before the deploy's builders whose words they share
        ("booted=%s", "upkeep_facts"),
        ("--delete-generations", "delete_generations"),
        ("nix-store --gc", "gc"),
        ("-mmin +", "prune_pushed"),
        ("journal_before_kb", "vacuum"),
        ("restarted=", "restart"),
        ("history.jsonl", "history"),
        ("intent.json", "read_intent"),
        ("tail -n ", "deploy_log"),
        ("deploys.jsonl", "record"),
        (nixcmd.PROFILE_LINKS, "profile_state"),
        (" build --json", "build"),
        ("--switch-generation", "switch_generation"),
        ("switch-to-configuration", "activate"),
        ("--set ", "set_profile"),
        (" probe --level", "probe"),
        (" bench --", "bench"),
        (" models install", "models"),
        ("readlink -f /run/current-system", "running"),
    )
    for needle, kind in rules:
        if needle in command:
            return kind
    return "noop"  # mkdir, flake present, prune, rm of the plan: nothing the model keeps


class FakeHeartbeat:
    """The controller's heartbeat, without threads: what it would keep alive, renewed when a test says."""

    def __init__(self) -> None:
        self.kept: dict[str, tuple[Any, str, float, str | None]] = {}
        self.stopped: list[str] = []

    def keep(self, host: Any, token: str, lease: float, intent_id: str | None = None) -> None:
        self.kept[host.name] = (host, token, lease, intent_id)

    def lock_only(self, host: Any, token: str, lease: float) -> None:
        if host.name in self.kept:
            self.keep(host, token, lease)

    def stop(self, host_name: str) -> None:
        if self.kept.pop(host_name, None) is not None:
            self.stopped.append(host_name)

    def beat(self) -> None:
        """One renewal of every kept host, as the real heartbeat sends it every few seconds."""
        for host, token, lease, intent_id in list(self.kept.values()):
            if not host.dropped:
                host.agent_call(hostagent.command("renew", "--token", token, "--for", f"{lease:g}",
                                                  *(["--intent", intent_id] if intent_id else [])))


class FakeClock:
    """The transaction's clock: waiting costs nothing, and deadlines still come."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000 + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def scripted_controller(tmp_path: Any, monkeypatch: Any, *clocked: Any) -> tuple[Any, FakeClock]:
    """A controller whose remote commands reach a scripted host (privileges and new connections too),
    with a flake to name and a fake clock for the transaction (and the `clocked` modules)."""
    from ipex_fleet.common import waiting
    from ipex_fleet.transaction import activation, agentcalls, core, flow

    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    (flake / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}')
    monkeypatch.setenv("IPEX_FLEET_STATE", str(tmp_path / "state"))
    monkeypatch.setattr("ipex_fleet.remote.privilege_args", lambda host: {})
    monkeypatch.setattr("ipex_fleet.transaction.core.run_fresh", lambda host, command, timeout: host.fresh(command))
    monkeypatch.setattr("ipex_fleet.transaction.heartbeat.Heartbeat", FakeHeartbeat)
    clock = FakeClock()
    for module in (activation, agentcalls, core, flow, waiting, *clocked):
        monkeypatch.setattr(module, "time", clock)
    return flake, clock
