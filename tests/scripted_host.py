"""A scripted host: the real transaction's commands, answered by a model of a NixOS host.

It receives the exact shell strings the transaction sends (through ipex_fleet.remote, wrapped and
quoted as for SSH), recognises each by the builder that made it, and answers as a host would:
profiles and generations, /run/current-system, the intent journal with its lease and claims, the
lock, the deploy records. A fault can be set on the n-th command of a kind: it fails, times out,
the host drops (every later command too), or the controller dies (a BaseException that no step
catches, as a SIGKILL ends everything).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ipex_fleet.remote import HostUnreachable, StepTimeout, _RC_MARK

STATE = "/var/lib/ipex-fleet"
PROFILE = "/nix/var/nix/profiles/system"


class ControllerDied(BaseException):
    """The controller is gone mid-command (SIGKILL): nothing of it runs after this."""


@dataclass
class Fault:
    kind: str
    nth: int  # 1 = the first command of that kind
    how: str  # fail | timeout | drop | die


@dataclass
class ScriptedHost:
    name: str
    data: dict[str, Any]
    generations: dict[int, str] = field(default_factory=lambda: {1: "/nix/store/aaa-nixos-system-1"})
    current: int = 1
    running: str = "/nix/store/aaa-nixos-system-1"
    booted: str = "/nix/store/aaa-nixos-system-1"
    target_build: str = "/nix/store/bbb-nixos-system-2"
    intent: dict[str, Any] | None = None
    resolved: dict[str, str] = field(default_factory=dict)  # "RUN.WHO" -> outcome ("" while deciding)
    watchdogs: set[str] = field(default_factory=set)
    lock: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    fault: Fault | None = None
    second: Fault | None = None  # a second fault, for double faults (a gate fails, then the controller dies)
    seen: dict[str, int] = field(default_factory=dict)
    dropped: bool = False
    logs: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
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
        command = wrapped[len("( "):wrapped.index("\n); printf")]
        rc, out = self.answer(command)
        return rc == 0, SimpleNamespace(stdout_lines=[*out, "", f"{_RC_MARK}{rc}"], stderr_lines=[])

    def fresh(self, command: str):
        """run_fresh: the same host over a new connection."""
        from ipex_fleet.remote import _result

        rc, out = self.answer(command)
        return _result([*out, f"{_RC_MARK}{rc}"], [])

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
            if how == "die_after":  # the host ran it; the controller died before hearing back
                getattr(self, f"do_{kind}")(command)
                raise ControllerDied(kind)
            return self.failing(kind, command)
        return getattr(self, f"do_{kind}")(command)

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
        if kind == "activate":  # NixOS activates on, then reports the failed snippet
            self.do_activate(command)
            return 2, ["Activation script snippet 'x' failed (1)"]
        if kind == "renew":
            return 1, ["mv: cannot move"]
        return 1, [f"{kind} failed"]

    @property
    def profile_path(self) -> str:
        return self.generations[self.current]

    def do_preflight(self, command: str) -> tuple[int, list[str]]:
        intent = self.do_read_intent(command)[1] if "run_id=%s" in command else []
        return 0, ["os_id=nixos", "nix=nix (Nix) 2.18", "free_kb=99999999", *intent]

    def do_read_intent(self, _c: str) -> tuple[int, list[str]]:
        if not self.intent:
            return 0, []
        return 0, [f"run_id={self.intent['run_id']}", f"lease={self.intent['lease']}", "now=9999999999",
                   "intent={}"]

    def do_lock(self, command: str) -> tuple[int, list[str]]:
        owner = json.loads(shlex.split(command.split("printf '%s\\n' ", 1)[1])[0])
        if self.lock is not None and "set -C" in command:
            return 75, [json.dumps(self.lock)]
        self.lock = owner
        return 0, ["acquired"]

    def do_release(self, command: str) -> tuple[int, list[str]]:
        run_id = json.loads(shlex.split(command)[3])
        if self.lock and self.lock.get("run_id") == run_id:
            self.lock = None
        return 0, []

    def do_profile_state(self, _c: str) -> tuple[int, list[str]]:
        lines = [f"system-{n}-link 1700000000 {p}" for n, p in sorted(self.generations.items())]
        return 0, [*lines, f"current system-{self.current}-link"]

    def do_noop(self, _c: str) -> tuple[int, list[str]]:
        return 0, []

    def do_build(self, _c: str) -> tuple[int, list[str]]:
        return 0, [json.dumps([{"drvPath": "/nix/store/x.drv", "outputs": {"out": self.target_build}}])]

    def do_running(self, _c: str) -> tuple[int, list[str]]:
        return 0, [self.running]

    def do_open_intent(self, command: str) -> tuple[int, list[str]]:
        if self.intent is not None:
            return 1, ["mv: cannot overwrite: Directory not empty"]
        words = shlex.split(command)

        def written_to(suffix: str) -> str:  # printf '%s\n' VALUE > DIR/suffix
            return words[next(i for i, w in enumerate(words) if w.endswith(suffix)) - 2]

        intent = json.loads(written_to("/intent.json"))
        self.intent = {**intent, "run_id": written_to("/run_id"), "lease": int(written_to("/lease"))}
        if "ipex-fleet-watchdog-" in command:  # the same round trip arms the watchdog
            self.watchdogs.add(self.intent["run_id"])
        return 0, []

    def do_arm(self, _c: str) -> tuple[int, list[str]]:
        if self.intent:
            self.watchdogs.add(self.intent["run_id"])
        return 0, []

    def do_set_profile(self, command: str) -> tuple[int, list[str]]:
        path = shlex.split(command)[-1]
        number = max(self.generations) + 1
        self.generations[number] = path
        self.current = number
        return 0, []

    def do_switch_generation(self, command: str) -> tuple[int, list[str]]:
        number = int(shlex.split(command)[-1])
        if number not in self.generations:
            return 1, [f"generation {number} does not exist"]
        self.current = number
        return 0, []

    def do_activate(self, command: str) -> tuple[int, list[str]]:
        words = shlex.split(command)
        stc = next(w for w in words if w.endswith("/bin/switch-to-configuration") and not w.startswith("test"))
        action = words[words.index(stc) + 1]
        path = stc.rsplit("/bin/", 1)[0]
        if action in ("switch", "test"):
            self.running = path
        return 0, [f"activating the configuration {path} ({action})"]

    def do_renew(self, command: str) -> tuple[int, list[str]]:
        words = shlex.split(command)
        run_id = words[words.index("]") - 1]
        if not self.intent or self.intent["run_id"] != run_id:
            return 3, []
        self.intent["lease"] = int(next(w for w in words if w.isdigit() and len(w) >= 9))
        return 0, []

    def do_claim(self, command: str) -> tuple[int, list[str]]:
        dest = next(w for w in shlex.split(command) if "/resolved/" in w)
        key = dest.rsplit("/", 1)[1]
        run_id = key.rsplit(".", 1)[0]
        if not self.intent or self.intent["run_id"] != run_id:
            return 3, ["lost", *[k for k in self.resolved if k.startswith(run_id + ".")]]
        self.intent = None
        self.resolved[key] = ""
        return 0, ["won"]

    def do_outcome(self, command: str) -> tuple[int, list[str]]:
        path = next(w for w in shlex.split(command) if w.endswith("/outcome"))
        key = path.rsplit("/", 2)[1]
        outcome = self.resolved.get(key)
        return (0, [outcome]) if outcome else (75, [])

    def do_revert_script(self, command: str) -> tuple[int, list[str]]:
        """`sh intent/revert.sh WHO` (recovery)."""
        self.revert_by(shlex.split(command)[-1])
        return 0, []

    def do_probe(self, _c: str) -> tuple[int, list[str]]:
        return 0, [json.dumps({"result": "pass", "level": 2, "checks": [{"name": "units", "result": "pass"}]})]

    def do_bench(self, _c: str) -> tuple[int, list[str]]:
        return 0, [json.dumps({"gate": {"result": "pass", "comparisons": []}, "results": [], "device": {}})]

    def do_models(self, _c: str) -> tuple[int, list[str]]:
        return 0, [json.dumps({"installed": ["checkpoints/a.safetensors"], "present": [], "pruned": [],
                               "failed": [], "bytes_downloaded": 1, "bytes_hashed": 1})]

    def do_record(self, command: str) -> tuple[int, list[str]]:
        self.records.append(json.loads(shlex.split(command.split("printf '%s\\n' ", 1)[1])[0]))
        return 0, []

    # -- maintenance ------------------------------------------------------------------------------

    def do_upkeep_facts(self, command: str) -> tuple[int, list[str]]:
        _, lines = self.do_profile_state(command)
        intent = [] if not self.intent else ["intent=" + json.dumps(
            {"previous": self.intent.get("previous"), "target": self.intent.get("target")})]
        return 0, [*lines, f"running={self.running}", f"booted={self.booted}", *intent,
                   *[f"record={json.dumps(r)}" for r in self.records], "free_kb=99999999"]

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

    def revert_by(self, who: str) -> bool:
        """revert.sh: claim (unless decided), restore the intent's previous generation, verify, journal."""
        if self.intent is None:
            return False
        intent, self.intent = self.intent, None
        key = f"{intent['run_id']}.{who}"
        previous = intent["previous"]
        if intent["mode"] in ("switch", "boot"):
            self.current = previous["generation"]
        self.running = previous["path"]
        ok = self.running == previous["path"] and self.profile_path == previous["path"]
        self.resolved[key] = f"{'reverted' if ok else 'revert-failed'} 1700000000 {who}"
        self.records.append({"run_id": intent["run_id"], "phase": "revert", "status": "rolled_back"})
        if self.lock and self.lock.get("run_id") == intent["run_id"]:
            self.lock = None
        return True

    def lease_runs_out(self) -> bool:
        """Time passes with no controller: an armed watchdog reverts (a reboot would have ended it)."""
        self.dropped = False
        self.fault = self.second = None
        if self.intent and self.intent["run_id"] in self.watchdogs:
            return self.revert_by("watchdog")
        return False


def classify(command: str) -> str:
    """Which builder made this command (most specific first)."""
    rules = (
        # maintenance (ipex_fleet.nix.upkeep), before the deploy's builders whose words they share
        ("booted=%s", "upkeep_facts"),
        ("--delete-generations", "delete_generations"),
        ("nix-store --gc", "gc"),
        ("-mmin +", "prune_pushed"),
        ("journal_before_kb", "vacuum"),
        ("restarted=", "restart"),
        ("history.jsonl", "history"),
        ("intent.tmp-", "open_intent"),
        ("ipex-fleet-watchdog-", "arm"),
        ("lease.new", "renew"),
        ("echo won", "claim"),
        ("/revert.sh recovery", "revert_script"),
        ("set -C", "lock"),
        ("exit 75", "outcome"),
        ("os_id=", "preflight"),
        ("run_id=%s", "read_intent"),
        ("/lock 2>/dev/null && rm -f", "release"),
        ("ipex-fleet/lock", "lock"),
        ("deploys.jsonl", "record"),
        ("for l in ", "profile_state"),
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
    from ipex_fleet import transaction

    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    (flake / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}')
    monkeypatch.setenv("IPEX_FLEET_STATE", str(tmp_path / "state"))
    monkeypatch.setattr("ipex_fleet.remote.privilege_args", lambda host: {})
    monkeypatch.setattr("ipex_fleet.transaction.run_fresh", lambda host, command, timeout: host.fresh(command))
    clock = FakeClock()
    for module in (transaction, *clocked):
        monkeypatch.setattr(module, "time", clock)
    return flake, clock
