#!/usr/bin/env python3
"""ipex-fleet's host agent: the half of the safety net that runs on the host (DESIGN.md).

It holds, under /var/lib/ipex-fleet/:
    lock                 the deploy lock: its holder, a fencing token, a lease
    intent.json          the open intent: previous and target generation, mode, a lease, its phase
    resolved/ID.WHO.json an intent once decided (WHO: committed, reverting-controller, watchdog,
                         recovery), with the revert's outcome once it ended
    deploys.jsonl        one line per deploy, revert or check (the revert's line is written here)

Rules it enforces, whoever calls it:
- Deadlines live on this host's clock: the controller sends durations; a lease is a deadline on
  CLOCK_BOOTTIME of one boot (NTP steps and another machine's clock cannot move it). A lease from an
  earlier boot counts again from this boot for its `reboot_grace` (the boot unit re-arms it).
- Every decision happens under one mutex (flock) and every write that decides is fsynced and
  renamed into place: exactly one claimant wins an intent, and a power cut leaves the old or the
  new file, never half of one.
- The lock is fenced: it is taken, renewed and released only with its token; an intent is opened
  only by the lock's holder, and only while the host still runs the generation the run recorded.
- The revert restores the recorded generation and verifies profile, running system and boot
  entry; `reverted` only then, `revert-failed` otherwise (exit 1, recorded as such).

This file needs nothing but Python's standard library: the controller copies it to the host (by
content hash) so that it runs whatever the generations hold, the first deploy included.

    python3 agent.py status | lock-take | lock-release | renew | open | activated | confirm
                     | claim | commit | revert | outcome | watch | boot | rearm | metrics   (--help for each)

Each command prints one JSON object. Exit codes: 0 done; 3 lost (not this caller's any more);
4 fenced (the host is not as the caller recorded); 75 refused or not yet; 1 failed; 2 usage.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

# What each call imports is what each call pays, a deploy makes five of them a host and its watchdog
# one more, and a host runs them beside its work: only the standard library's modules written in C, and
# json's C half (_json, the codec json itself runs): json's Python half imports re, enum and
# functools, and contextlib collections, together two thirds of an agent call's start-up. Where
# _json is missing (an interpreter other than CPython), json itself.
try:
    import _json
except ImportError:  # pragma: no cover - CPython has it
    _json = None

TYPE_CHECKING = False  # typing costs each agent start 2 ms; the annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any

    # A metric family: name, help, type ("gauge" or "info"), samples (labels, value).
    Family = tuple[str, str, str, list[tuple[dict[str, str], float]]]

LOST, FENCED, BUSY, FAILED = 3, 4, 75, 1
LISTING_TIMEOUT = 30.0  # seconds for systemctl's listing of the activation units
WHO_REVERTS = ("reverting-controller", "watchdog", "recovery")
COMMITTED = "committed"
# Activation units made by the controller (ipex_fleet.nix.commands.activation_unit): a revert waits
# for them to end, never racing an activation that still runs.
ACTIVATION_UNITS = ("ipex-fleet-switch-*", "ipex-fleet-test-*", "ipex-fleet-boot-*")

# The host's paths, and how its profile reads (ipex_fleet.host.nixprofile imports these from here: the
# agent runs as a lone file and imports nothing of the package).
STATE_DIR = "/var/lib/ipex-fleet"
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
# What makes a new generation need a reboot (switch-to-configuration compares the same links).
BOOT_LINKS = ("kernel", "initrd", "kernel-modules", "firmware")


# -- clocks and files ---------------------------------------------------------------------------


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME: monotonic, counts suspend, never stepped by NTP."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def current_boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


class Clock:
    """The host's clock as the agent reads it (tests give their own). A plain class: dataclasses
    imports inspect, a third of the agent's start-up, which every deploy step pays."""

    def __init__(self, now: Any = boottime, boot_id: Any = current_boot_id, sleep: Any = time.sleep) -> None:
        self.now, self.boot_id, self.sleep = now, boot_id, sleep


def write_atomic(path: str, data: bytes) -> None:
    """Write, fsync, rename into place, fsync the directory: the old file or the new one, whole."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dumps(data: Any) -> str:
    """json.dumps(data, sort_keys=True), by json's own C encoder."""
    if _json is None:
        import json

        return json.dumps(data, sort_keys=True)
    if isinstance(data, str):
        return _json.encode_basestring_ascii(data)
    encode = _json.make_encoder({}, _not_serializable, _json.encode_basestring_ascii, None, ": ", ", ", True,
                                False, True)
    return "".join(encode(data, 0))


def _not_serializable(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


class _Decoding:  # what json's C scanner reads from json.JSONDecoder(): its defaults
    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def loads(text: str) -> Any:
    """json.loads(text) for a str, by json's own C scanner; ValueError where json raises one."""
    if _json is None:
        import json

        return json.loads(text)
    start = _past_space(text, 0)
    try:
        data, end = _json.make_scanner(_Decoding())(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    if _past_space(text, end) != len(text):
        raise ValueError(f"Extra data: char {end}")
    return data


def _past_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def write_json(path: str, data: dict[str, Any]) -> None:
    write_atomic(path, (dumps(data) + "\n").encode())


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError:  # a torn file cannot be: writes are renamed into place; say so loudly
        raise SystemExit(f"ipex-fleet agent: {path} is not JSON; inspect it by hand")
    return data if isinstance(data, dict) else None


# -- what the agent does to the system ----------------------------------------------------------


class System:
    """Profiles, activation, the running system and the boot entry, through the host's own tools."""

    def profile(self, profile: str) -> tuple[int | None, str | None]:
        """(current generation number, its store path)."""
        try:
            link = os.readlink(profile)
        except OSError:
            return None, None
        return generation_of(link), os.path.realpath(profile)

    def set_profile(self, profile: str, number: int | None, path: str) -> bool:
        if number is not None and _run(["nix-env", "-p", profile, "--switch-generation", str(number)]) == 0:
            if os.path.realpath(profile) == path:
                return True
        return _run(["nix-env", "-p", profile, "--set", path]) == 0

    def running(self) -> str:
        return os.path.realpath("/run/current-system")

    def activate(self, path: str, action: str, log: str) -> int:
        import subprocess  # here, not at the top: see _run

        with open(log, "ab") as out:
            try:
                return subprocess.run([f"{path}/bin/switch-to-configuration", action], stdout=out, stderr=out,
                                      stdin=subprocess.DEVNULL, timeout=1800).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                out.write(f"ipex-fleet agent: {exc}\n".encode())
                return 127

    def boot_default(self) -> int | None:
        """The generation systemd-boot starts by default (loader.conf), or None without one."""
        try:
            with open("/boot/loader/loader.conf") as f:
                for line in f:
                    key, _, value = line.strip().partition(" ")
                    number = _leading_number(value.strip(), "nixos-generation-")
                    if key == "default" and number is not None:
                        return number
        except OSError:
            pass
        return None

    def activations_running(self) -> list[str]:
        """The activation units still running, deactivating ones too (a killed unit's processes end with
        its stop). A listing that fails or hangs counts as one running: a revert then waits (bounded)
        rather than restore beside an activation it could not see."""
        import subprocess

        if not _systemd():  # no units: activations ran in sessions of their own
            return []
        try:
            proc = subprocess.run(["systemctl", "list-units", "--plain", "--no-legend",
                                   "--state=active,activating,deactivating", *ACTIVATION_UNITS],
                                  capture_output=True, text=True, timeout=LISTING_TIMEOUT)
        except subprocess.TimeoutExpired:
            return [f"(systemctl list-units: no answer within {LISTING_TIMEOUT:g}s)"]
        if proc.returncode != 0:
            return [f"(systemctl list-units exited {proc.returncode})"]
        return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]

    def detach(self, unit: str, argv: list[str], log: str) -> bool:
        """Start argv detached from the caller's session: a transient unit where systemd runs."""
        if _systemd():
            return _run(["systemd-run", "--quiet", "--collect", f"--unit={unit}",
                         f"--property=StandardOutput=append:{log}", f"--property=StandardError=append:{log}",
                         *argv]) == 0
        import subprocess

        with open(log, "ab") as out:
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        return True

    def unit_active(self, unit: str) -> bool:
        return _systemd() and _run(["systemctl", "is-active", "--quiet", unit]) == 0


def generation_of(link: str) -> int | None:
    """The generation a profile's link names (system-42-link: 42), None for anything else."""
    _, dash, number = link.removesuffix("-link").rpartition("-") if link.endswith("-link") else ("", "", "")
    return int(number) if dash and number.isdecimal() else None


def _leading_number(text: str, prefix: str) -> int | None:
    """The number right after `prefix` at the start of `text` (nixos-generation-42.conf: 42)."""
    if not text.startswith(prefix):
        return None
    digits = text[len(prefix):]
    end = next((i for i, c in enumerate(digits) if not c.isdecimal()), len(digits))
    return int(digits[:end]) if end else None


def valid_id(text: str) -> bool:
    """An intent id: a letter or digit, then up to 80 of those or `._-`."""
    return (0 < len(text) <= 81 and text.isascii() and text[0].isalnum()
            and all(c.isalnum() or c in "._-" for c in text))


def _systemd() -> bool:
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() == "systemd" and _which("systemd-run") is not None
    except OSError:
        return False


def _which(name: str) -> str | None:
    """shutil.which's answer for a bare name, without importing shutil (see _run)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(folder or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _run(argv: list[str], timeout: float = 600) -> int:
    """Run argv with no input and its output dropped; its exit code, 127 where it did not start or
    ran past `timeout` (then killed). By os.posix_spawn, not subprocess: importing subprocess (with
    selectors, signal and threading) and shutil (fnmatch, re) cost an agent call 10 ms of CPU, as
    much as its whole start-up, and the intent's opening runs `systemd-run` at every deploy."""
    path = argv[0] if os.sep in argv[0] else _which(argv[0])
    if path is None:
        return 127
    null = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawn(path, argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)])
    except OSError:
        return 127
    finally:
        os.close(null)
    deadline, pause = time.monotonic() + timeout, 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)  # SIGKILL (the signal module is not imported for one number)
            os.waitpid(pid, 0)
            return 127
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


# -- the agent ----------------------------------------------------------------------------------


class Refused(Exception):
    def __init__(self, code: int, **detail: Any) -> None:
        super().__init__(detail.get("error", ""))
        self.code, self.detail = code, detail


class _Mutex:
    """The agent's one mutex: an exclusive flock on ROOT/.agent.mutex, for a `with` block."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.file: Any = None

    def __enter__(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.file = open(f"{self.root}/.agent.mutex", "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *_exc: Any) -> None:
        try:
            fcntl.flock(self.file, fcntl.LOCK_UN)
        finally:
            self.file.close()


class Agent:
    def __init__(self, root: str = STATE_DIR, clock: Clock | None = None,
                 system: System | None = None, script: str | None = None) -> None:
        self.root = root
        self.clock = clock or Clock()
        self.system = system or System()
        self.script = script or os.path.abspath(__file__)

    def again(self, *args: str) -> list[str]:
        """This agent's command line for a unit of its own (a watchdog, a revert): through its launcher
        where it has one, as the controller's calls run it (from the bytecode cache, its interpreter
        the launcher's); else this interpreter, without site as the launcher starts it."""
        launcher = os.path.join(os.path.dirname(self.script), "run")
        head = [launcher] if os.access(launcher, os.X_OK) else [sys.executable, "-S"]
        return [*head, self.script, "--root", self.root, *args]

    # paths
    @property
    def lock_path(self) -> str:
        return f"{self.root}/lock"

    @property
    def intent_path(self) -> str:
        return f"{self.root}/intent.json"

    def resolved_path(self, intent_id: str, who: str) -> str:
        return f"{self.root}/resolved/{intent_id}.{who}.json"

    def mutex(self) -> _Mutex:
        return _Mutex(self.root)

    # leases: a deadline on this boot's clock
    def lease(self, seconds: float, reboot_grace: float) -> dict[str, Any]:
        return {"boot_id": self.clock.boot_id(), "deadline": round(self.clock.now() + float(seconds), 3),
                "reboot_grace": float(reboot_grace)}

    def left(self, lease: dict[str, Any]) -> float:
        """Seconds the lease has left (negative: spent). A lease of an earlier boot is re-armed first."""
        return round(float(lease["deadline"]) - self.clock.now(), 3)

    def _rebased(self, record: dict[str, Any], path: str) -> dict[str, Any]:
        """A lease written in an earlier boot counts again from now for its reboot grace (a boot ends
        every process that renewed it; the boot unit or the first look after boot re-arms it)."""
        lease = record.get("lease") or {}
        if lease.get("boot_id") != self.clock.boot_id():
            record = {**record, "lease": self.lease(float(lease.get("reboot_grace", 0)),
                                                    float(lease.get("reboot_grace", 0))),
                      "rebooted": True}
            write_json(path, record)
        return record

    def _lock(self) -> dict[str, Any] | None:
        lock = read_json(self.lock_path)
        return self._rebased(lock, self.lock_path) if lock else None

    def _intent(self) -> dict[str, Any] | None:
        intent = read_json(self.intent_path)
        return self._rebased(intent, self.intent_path) if intent else None

    def _resolved(self, intent_id: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        directory = f"{self.root}/resolved"
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            if name.startswith(intent_id + ".") and name.endswith(".json"):
                who = name[len(intent_id) + 1:-len(".json")]
                data = read_json(f"{directory}/{name}")
                if data is not None:
                    out.append((who, data))
        return out

    def _unfinished(self) -> list[dict[str, Any]]:
        """Reverts claimed whose outcome was never written (their process died: a crash, a reboot)."""
        directory = f"{self.root}/resolved"
        found = []
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            who = name[:-5].rsplit(".", 1)[-1] if name.endswith(".json") else ""
            if who in WHO_REVERTS:
                data = read_json(f"{directory}/{name}")
                if data is not None and not data.get("outcome"):
                    found.append({**data, "claimed_by": who})
        return found

    # -- commands ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self.mutex():
            lock, intent = self._lock(), self._intent()
            out: dict[str, Any] = {"boot_id": self.clock.boot_id(), "lock": None, "intent": None,
                                   "unfinished": [u["intent_id"] for u in self._unfinished()]}
            if lock:
                out["lock"] = {**{k: v for k, v in lock.items() if k not in ("token", "lease")},
                               "left": self.left(lock["lease"])}
            if intent:
                out["intent"] = {"intent_id": intent["intent_id"], "run_id": intent.get("run_id"),
                                 "phase": intent.get("phase"), "left": self.left(intent["lease"]),
                                 "previous": intent.get("previous"), "target": intent.get("target")}
            return out

    def lock_take(self, owner: dict[str, Any], seconds: float, reboot_grace: float, force: bool = False,
                  adopt_run: bool = False) -> dict[str, Any]:
        """Take the lock when it is free, its holder's lease ran out (by this host's clock), or forced.
        `adopt_run`: the same run id may take it over (a resumed run)."""
        with self.mutex():
            held = self._lock()
            if held and not force and self.left(held["lease"]) > 0 and not (
                    adopt_run and held.get("owner", {}).get("run_id") == owner.get("run_id")):
                raise Refused(BUSY, holder=held.get("owner"), left=self.left(held["lease"]),
                              error="the deploy lock is held")
            token = os.urandom(16).hex()  # as random as uuid4, without importing uuid
            write_json(self.lock_path, {"owner": owner, "token": token, "lease": self.lease(seconds, reboot_grace),
                                        "previous_holder": held.get("owner") if held else None})
            return {"token": token, "took_over": held.get("owner") if held else None}

    def push_state(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Read under the lock just taken, in its round trip, for the push that follows: whether the
        pushed flake is there whole, and which of its locked inputs no GC root of ours proves valid (a
        root is made only after its path was valid, and keeps it so: nothing else is asked of the
        store). Then the tidy the build's round trip made: the older pushed flakes pruned (the newest
        `keep` kept, this one always), the roots of flakes gone removed, and this flake's inputs
        rooted where every one is proven. Best effort, as that tidy was: a failure says why and
        leaves the push to ask the store (`rooted` false)."""
        flakes, roots, current = spec["flakes"], spec["roots"], spec["hash"]
        inputs = [str(p) for p in spec.get("inputs") or ()]
        out: dict[str, Any] = {"present": os.path.isfile(f"{flakes}/{current}/.complete"), "rooted": False}
        try:
            os.makedirs(flakes, exist_ok=True)  # the upload's folder
            rooted = {os.readlink(f"{roots}/{d}/{link}") for d in _listdir(roots) for link in _listdir(f"{roots}/{d}")}
            out["unproven"] = [p for p in inputs if p not in rooted or not os.path.exists(p)]
            older = sorted((n for n in _listdir(flakes) if not n.startswith(".") and n != current),
                           key=lambda n: os.lstat(f"{flakes}/{n}").st_mtime, reverse=True)
            for name in older[max(int(spec.get("keep", 1)) - 1, 0):]:
                _remove_tree(f"{flakes}/{name}")
            for d in _listdir(roots):
                if d != current and not os.path.isdir(f"{flakes}/{d}"):
                    _remove_tree(f"{roots}/{d}")
            if not out["unproven"]:
                os.makedirs(f"{roots}/{current}", exist_ok=True)
                for i, path in enumerate(inputs):
                    link = f"{roots}/{current}/{i}"
                    _unlink(link)
                    os.symlink(path, link)
                out["rooted"] = True
        except OSError as exc:
            out["error"] = str(exc)
            out.setdefault("unproven", inputs)
        return out

    def lock_release(self, token: str) -> dict[str, Any]:
        with self.mutex():
            held = read_json(self.lock_path)
            if not held or held.get("token") != token:
                raise Refused(LOST, error="the lock is not this caller's")
            os.unlink(self.lock_path)
            fsync_dir(self.root)
            return {"released": True}

    def renew(self, token: str, seconds: float, intent_id: str | None = None) -> dict[str, Any]:
        """The controller's heartbeat: the lock's lease, and the intent's while it is armed or confirmed
        (not between an activation and its confirmation over a new login: only `confirm` renews that)."""
        with self.mutex():
            held = self._lock()
            if not held or held.get("token") != token:
                raise Refused(LOST, error="the lock is no longer this caller's")
            held["lease"] = self.lease(seconds, held["lease"].get("reboot_grace", 0))
            write_json(self.lock_path, held)
            out: dict[str, Any] = {"lock": seconds}
            if intent_id:
                intent = self._intent()
                if not intent or intent["intent_id"] != intent_id:
                    raise Refused(LOST, error="the intent was decided", **self._decision(intent_id))
                if intent.get("phase") != "activated" and self.left(intent["lease"]) > 0:
                    intent["lease"] = self.lease(seconds, intent["lease"].get("reboot_grace", 0))
                    write_json(self.intent_path, intent)
                out["intent"] = self.left(intent["lease"])
            return out

    def open(self, intent: dict[str, Any], token: str, seconds: float, reboot_grace: float) -> dict[str, Any]:
        """Journal the intent, fenced: the caller holds the lock, no intent is open, and the host runs
        the generation the caller recorded (compare and swap); then start its watchdog."""
        intent_id = str(intent.get("intent_id") or "")
        if not valid_id(intent_id):
            raise Refused(2, error=f"bad intent id {intent_id!r}")
        with self.mutex():
            held = self._lock()
            if not held or held.get("token") != token:
                raise Refused(FENCED, error="the deploy lock is not this caller's (another controller took it)")
            open_ = self._intent()
            if open_:
                raise Refused(BUSY, error=f"intent {open_['intent_id']} of run {open_.get('run_id')} is open")
            previous = intent["previous"]
            number, path = self.system.profile(intent["profile"])
            running = self.system.running()
            # The profile is what the run recorded (the running system may differ legitimately: after
            # a `test` deploy, or a `boot` one not yet rebooted).
            if path != previous["path"] or number != previous["generation"]:
                raise Refused(FENCED, error=f"the host is not on the recorded generation {previous['generation']} "
                              f"(profile {number} {path}, running {running}): another deploy changed it",
                              profile=path, running=running)
            record = {**intent, "phase": "armed", "lease": self.lease(seconds, reboot_grace),
                      "run_id": intent.get("run_id"), "steps": [["opened", time.time()]]}
            write_json(self.intent_path, record)
        self.arm(intent_id, new=True)
        return {"opened": intent_id}

    def arm(self, intent_id: str, new: bool = False) -> bool:
        """Start the intent's watchdog, detached (idempotent: a running one is left alone; a `new`
        intent's cannot be running yet)."""
        unit = f"ipex-fleet-watchdog-{intent_id}"
        if not new and self.system.unit_active(unit):
            return True
        return self.system.detach(unit, self.again("watch", "--intent", intent_id),
                                  f"{self.root}/watchdog-{intent_id}.log")

    def mark(self, intent_id: str, phase: str, seconds: float) -> dict[str, Any]:
        """`activated` (only a confirmation over a new login renews it now) or `confirmed`."""
        with self.mutex():
            intent = self._intent()
            if not intent or intent["intent_id"] != intent_id:
                raise Refused(LOST, error="the intent was decided", **self._decision(intent_id))
            if self.left(intent["lease"]) <= 0:
                raise Refused(LOST, error="the lease ran out", **self._decision(intent_id))
            intent["phase"] = phase
            intent["lease"] = self.lease(seconds, intent["lease"].get("reboot_grace", 0))
            intent.setdefault("steps", []).append([phase, time.time()])
            write_json(self.intent_path, intent)
            return {"phase": phase, "left": seconds}

    def claim(self, intent_id: str, who: str) -> bool:
        """Rename the intent to resolved/ID.WHO.json: exactly one claimant of an intent wins."""
        with self.mutex():
            return self._claim(intent_id, who)

    def _claim(self, intent_id: str, who: str) -> bool:
        intent = self._intent()
        if not intent or intent["intent_id"] != intent_id:
            return False
        if who != COMMITTED and who != "reverting-controller" and self.left(intent["lease"]) > 0:
            return False  # the watchdog and recovery act only on a spent lease
        dest = self.resolved_path(intent_id, who)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        intent["claimed"] = {"by": who, "at": time.time()}
        write_json(self.intent_path, intent)
        os.rename(self.intent_path, dest)  # the source is gone for every later claimant
        fsync_dir(os.path.dirname(dest))
        fsync_dir(self.root)
        return True

    def commit(self, intent_id: str, token: str | None, record: dict[str, Any] | None) -> dict[str, Any]:
        """The commit in one call (one agent start and one round trip instead of three): claim the
        decision for `committed`, then append the run's record to deploys.jsonl and release the run's
        lock (fenced by its token), all under the mutex. The claim is the decision, as `claim` takes it;
        once won, nothing after it changes it: a record that cannot be written or a lock that is no
        longer this caller's is reported (`recorded`, `released` false, with the reason) and the call
        still succeeds. A lost claim writes nothing and exits LOST with who decided. Asked again for an
        intent it already committed, it answers as the first time and writes the record once."""
        with self.mutex():
            again = False
            if not self._claim(intent_id, COMMITTED):
                if read_json(self.resolved_path(intent_id, COMMITTED)) is None:
                    raise Refused(LOST, error="another claimant decided", **self._decision(intent_id))
                # An intent id is one transaction's: this is its own commit asked again (its answer was
                # lost with the connection). The claim stands; finish what may be left of it.
                again = True
            out: dict[str, Any] = {"won": True, "recorded": False, "released": False, "again": again}
            if record is not None:
                log = f"{self.root}/deploys.jsonl"
                try:
                    if again and _has_line(log, dumps(record)):
                        out["recorded"] = True  # the first attempt wrote it
                    else:
                        _append(log, record)
                        out["recorded"] = True
                except (OSError, ValueError) as exc:
                    out["record_error"] = str(exc)
            if token:
                try:
                    held = read_json(self.lock_path)
                    if held and held.get("token") == token:
                        os.unlink(self.lock_path)
                        fsync_dir(self.root)
                        out["released"] = True
                    else:
                        out["release_error"] = "the lock is not this caller's"
                except (OSError, SystemExit) as exc:  # read_json exits on a file that is not JSON
                    out["release_error"] = str(exc)
            return out

    def _decision(self, intent_id: str) -> dict[str, Any]:
        found = self._resolved(intent_id)
        if not found:
            return {"decided_by": None}
        who, data = found[0]
        return {"decided_by": who, "outcome": data.get("outcome"), "problems": data.get("problems") or []}

    def fence(self, intent_id: str) -> dict[str, Any]:
        """An activation's first act, inside its own unit: it goes on only while its intent is open with
        its lease unspent. A revert claims under this mutex and then waits for the activations running,
        so an activation either is running for that wait or finds the claim here: an activation command
        that reaches the host late (a cut connection's retransmission, delivered after the watchdog's
        revert) never switches a reverted host."""
        with self.mutex():
            intent = self._intent()
            if not intent or intent["intent_id"] != intent_id:
                raise Refused(LOST, error="the intent was decided before the activation began",
                              **self._decision(intent_id))
            left = self.left(intent["lease"])
            if left <= 0:
                raise Refused(LOST, error="the intent's lease ran out before the activation began", left=left)
            return {"fence": "open", "left": left}

    def outcome(self, intent_id: str) -> dict[str, Any]:
        with self.mutex():
            intent = self._intent()
            if intent and intent["intent_id"] == intent_id:
                raise Refused(BUSY, open=True, left=self.left(intent["lease"]), phase=intent.get("phase"))
            decision = self._decision(intent_id)
            if decision["decided_by"] is None:
                raise Refused(FAILED, error=f"no intent {intent_id} on this host")
            if decision["decided_by"] != COMMITTED and not decision.get("outcome"):
                raise Refused(BUSY, **decision)
            return decision

    def revert(self, intent_id: str, who: str, detach: bool = False) -> dict[str, Any]:
        """Claim (or resume an unfinished claim of the same claimant) and restore the recorded
        generation, verified; `detach`: restore in a unit of its own (a dropped session cannot stop it)."""
        if who not in WHO_REVERTS:
            raise Refused(2, error=f"who must be one of {', '.join(WHO_REVERTS)}")
        path = self.resolved_path(intent_id, who)
        if not self.claim(intent_id, who):
            data = read_json(path)
            if data is None:  # another claimant decided
                raise Refused(LOST, error="another claimant decided", **self._decision(intent_id))
        if detach:
            return {"reverting": self._detach_revert(intent_id, who), "by": who}
        return self._restore(path, who)

    def _restore(self, path: str, who: str) -> dict[str, Any]:
        # One restorer per claim: a second process (a boot's re-arm, a retried recovery) waits for the
        # first, then reports its outcome.
        with open(path[:-5] + ".restore", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            data = read_json(path) or {}
            if data.get("outcome"):
                result = {"outcome": data["outcome"], "by": who, "problems": data.get("problems", []),
                          "final": data.get("final")}
                if data["outcome"] != "reverted":
                    raise Refused(FAILED, **result)
                return result
            return self._restore_locked(path, who, data)

    def _restore_locked(self, path: str, who: str, data: dict[str, Any]) -> dict[str, Any]:
        previous, mode, profile = data["previous"], data["mode"], data["profile"]
        waited = self._wait_activations(float(data.get("activation_timeout", 600)))
        returned = self.return_to(previous, mode, profile, path[:-5] + ".log")
        problems, final = returned["problems"], returned["final"]
        outcome = "revert-failed" if problems else "reverted"
        data["outcome"] = outcome
        data["verified"] = {**returned["verified"], "waited_for_activation": waited}
        data["problems"] = problems
        data["final"] = final
        data["ended"] = time.time()
        write_json(path, data)
        record = dict(data.get("record") or {})
        if record:
            record.update(status="revert-failed" if problems else "rolled_back", phase="revert", final=final,
                          error=f"{outcome} by {who}" + (f": {'; '.join(problems)}" if problems else ""))
            _append(f"{self.root}/deploys.jsonl", record)
        with self.mutex():  # the run's lock goes with its intent (fenced by the run's own token)
            held = read_json(self.lock_path)
            if held and held.get("owner", {}).get("run_id") == data.get("run_id"):
                os.unlink(self.lock_path)
        result = {"outcome": outcome, "by": who, "problems": problems, "final": final}
        if problems:
            raise Refused(FAILED, **result)
        return result

    def return_to(self, previous: dict[str, Any], mode: str, profile: str, log: str) -> dict[str, Any]:
        """The one restore (every revert, and deploys/rollback.py's move to an earlier generation): the
        profile back on `previous` (by number, else by its store path), the generation activated wherever
        the new one runs, then verified here: running system, profile and boot entry. Returns the final
        generation, what was verified, and the problems (none: it verified)."""
        if mode in ("switch", "boot"):
            self.system.set_profile(profile, previous.get("generation"), previous["path"])
        # Activate the old generation wherever the new one runs; a boot-mode deploy that never
        # rebooted only needs its boot entry back.
        if mode == "test":
            action = "test"
        elif mode == "boot" and self.system.running() == previous["path"]:
            action = "boot"
        else:
            action = "switch"
        rc = self.system.activate(previous["path"], action, log)
        number, current = self.system.profile(profile)
        running = self.system.running()
        boot = self.system.boot_default()
        problems = []
        if rc not in (0, 100):
            problems.append(f"switch-to-configuration {action} of {previous['path']} exited {rc}")
        if running != previous["path"]:
            problems.append(f"running {running}, not {previous['path']}")
        if mode in ("switch", "boot") and current != previous["path"]:
            problems.append(f"profile on {current}, not {previous['path']}")
        if mode in ("switch", "boot") and boot is not None and boot != number:
            problems.append(f"the boot loader's default is generation {boot}, not {number}")
        return {"final": {"generation": number, "path": current},
                "verified": {"profile": current, "running": running, "boot_default": boot, "activation_rc": rc},
                "problems": problems}

    def restore(self, token: str, previous: dict[str, Any], mode: str, profile: str) -> dict[str, Any]:
        """deploys/rollback.py: return to an earlier generation under the caller's lock (fenced by its
        token), with no intent open, by the same restore a revert makes; the caller records the result."""
        with self.mutex():
            held = self._lock()
            if not held or held.get("token") != token:
                raise Refused(LOST, error="the lock is no longer this caller's")
            if self._intent():
                raise Refused(BUSY, error="an intent is open on this host: resolve it first")
        returned = self.return_to(previous, mode, profile, f"{self.root}/restore.log")
        if returned["problems"]:
            raise Refused(FAILED, **returned)
        return returned

    def _wait_activations(self, bound: float) -> float:
        started = self.clock.now()
        while self.system.activations_running() and self.clock.now() - started < bound:
            self.clock.sleep(1)
        return round(self.clock.now() - started, 3)

    def watch(self, intent_id: str, poll: float = 1.0) -> dict[str, Any]:
        """The watchdog: while the intent is open, revert once its lease runs out."""
        while True:
            with self.mutex():
                intent = self._intent()
                if not intent or intent["intent_id"] != intent_id:
                    return {"watch": "ended", **self._decision(intent_id)}
                spent = self.left(intent["lease"]) <= 0
            if spent:
                return self.revert(intent_id, "watchdog")
            self.clock.sleep(poll)

    def recover(self) -> dict[str, Any]:
        """An unfinished revert is finished; an open intent whose lease ran out is reverted. Both by
        `recovery`, detached from the caller's session: a dropped connection does not stop them."""
        with self.mutex():
            intent = self._intent()
            unfinished = self._unfinished()
        started = []
        for u in unfinished:
            started.append(self._detach_revert(u["intent_id"], u["claimed_by"]))
        if intent and self.left(intent["lease"]) <= 0:
            if self.claim(intent["intent_id"], "recovery"):
                started.append(self._detach_revert(intent["intent_id"], "recovery"))
        elif intent:
            raise Refused(BUSY, error=f"run {intent.get('run_id')} holds an open intent whose lease runs "
                          f"{self.left(intent['lease']):.0f}s more", intent_id=intent["intent_id"],
                          run_id=intent.get("run_id"), left=self.left(intent["lease"]))
        return {"reverting": started}

    def _detach_revert(self, intent_id: str, who: str) -> str:
        unit = f"ipex-fleet-revert-{intent_id}"
        if not self.system.unit_active(unit):
            self.system.detach(unit, self.again("finish", "--intent", intent_id, "--who", who),
                               f"{self.root}/revert-{intent_id}.log")
        return intent_id

    def finish(self, intent_id: str, who: str) -> dict[str, Any]:
        path = self.resolved_path(intent_id, who)
        data = read_json(path)
        if data is None:
            raise Refused(FAILED, error=f"no claim {intent_id}.{who}")
        if data.get("outcome"):
            return {"outcome": data["outcome"], "by": who}
        return self._restore(path, who)

    def boot(self) -> dict[str, Any]:
        """At boot (a persistent unit; idempotent if it runs again at an activation): re-arm the lock's
        and the intent's leases for this boot, finish reverts a crash interrupted, and start the open
        intent's watchdog."""
        with self.mutex():
            self._lock()
            intent = self._intent()
            unfinished = self._unfinished()
        finishing = [self._detach_revert(u["intent_id"], u["claimed_by"]) for u in unfinished]
        armed = intent["intent_id"] if intent and self.arm(intent["intent_id"]) else None
        return {"finishing": finishing, "watching": armed}

    def metrics(self, directory: str) -> dict[str, Any]:
        """Write this state directory's deployment metrics to DIRECTORY/ipex_fleet_deploy.prom."""
        path = os.path.join(directory, DEPLOY_FILE)
        write_textfile(path, render(deploy_metrics(self.root)))
        return {"metrics": path}


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_tree(path: str) -> None:
    """rm -rf, without importing shutil (see _run)."""
    if os.path.islink(path) or not os.path.isdir(path):
        _unlink(path)
        return
    for top, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(top, name))
        for name in dirs:
            full = os.path.join(top, name)
            if os.path.islink(full):
                os.unlink(full)
            else:
                os.rmdir(full)
    os.rmdir(path)


def _has_line(path: str, line: str, tail: int = 1 << 16) -> bool:
    """Whether one of the last lines of `path` (its last `tail` bytes) is `line`."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            return line.encode() in f.read().splitlines()
    except FileNotFoundError:
        return False


def _append(path: str, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


# -- deployment metrics -------------------------------------------------------------------------
# node_exporter's textfile, written by `commit --metrics-dir` and `metrics` in the round trip that
# already runs the agent (no second interpreter with the package and prometheus_client at each deploy).
# deploy_metrics is also ipex_fleet.host.metrics.host_metrics's data (`ipex-fleet metrics`); render
# writes what prometheus_client's generate_latest writes for it, byte for byte (a test checks).

DEPLOY_FILE = "ipex_fleet_deploy.prom"
GOOD = ("ok", "unchanged")  # the statuses of a deploy that left the host good


def deploy_metrics(state_dir: str = STATE_DIR, profile: str = SYSTEM_PROFILE, root: str = "/") -> list[Family]:
    """The deployment as this host records it (deploys.jsonl, the profile, /run, the open intent)."""
    state = os.path.join(root, state_dir.lstrip("/"))
    log = os.path.join(state, "deploys.jsonl")
    records = []
    try:
        with open(log, errors="replace") as f:
            for line in f:
                try:
                    record = loads(line)
                except ValueError:
                    continue  # a torn last line from a crash: the records before it still count
                if isinstance(record, dict):
                    records.append(record)
    except OSError:
        pass
    current, booted = _realpath(root, "/run/current-system"), _realpath(root, "/run/booted-system")
    try:
        generation = generation_of(os.readlink(os.path.join(root, profile.lstrip("/"))))
    except OSError:
        generation = None
    last = records[-1] if records else {}
    good = next((r for r in reversed(records) if r.get("status") in GOOD), {})
    final = good.get("final") if isinstance(good.get("final"), dict) else {}
    try:
        good_generation = float(final["generation"])
    except (KeyError, TypeError, ValueError):
        good_generation = -1.0
    families: list[Family] = [
        ("ipex_fleet_deployment", "The running generation and the last deploy that touched this host.", "info",
         [({"generation": "" if generation is None else str(generation), "toplevel": current,
            "run_id": str(last.get("run_id") or ""), "status": str(last.get("status") or "none"),
            "phase": str(last.get("phase") or "")}, 1.0)]),
        _gauge("ipex_fleet_current_generation", "The system profile's current generation.",
               -1 if generation is None else generation),
        _gauge("ipex_fleet_good_generation", "The generation the last successful deploy left (ok or unchanged).",
               good_generation),
        _gauge("ipex_fleet_running_good_generation",
               "1 when /run/current-system is the toplevel the last successful deploy left.",
               bool(final.get("path")) and final.get("path") == current),
        _gauge("ipex_fleet_last_deployment_failed", "1 when the last deploy failed or was rolled back.",
               bool(last) and last.get("status") not in GOOD)]
    try:
        families.append(_gauge("ipex_fleet_last_deployment_timestamp_seconds",
                               "When the host last recorded a deploy.", os.stat(log).st_mtime))
    except OSError:
        pass
    reboot = bool(booted and current) and any(_realpath(booted, link) != _realpath(current, link)
                                              for link in BOOT_LINKS)
    families.append(_gauge("ipex_fleet_need_reboot", "1 when the running generation's kernel, initrd, modules "
                           "or firmware differ from the booted one.", reboot))
    families.append(_gauge("ipex_fleet_boot_fallbacks", "Deploys whose reboot came up on the previous generation "
                           "(boot counting fell back), as recorded.",
                           sum("fell back" in str(r.get("error") or "") for r in records)))
    intent, run = os.path.join(state, "intent.json"), ""  # the open intent
    is_open = os.path.isfile(intent)
    if is_open:
        try:
            with open(intent) as f:
                data = loads(f.read())
            run = str(data.get("run_id") or "?") if isinstance(data, dict) else "?"
        except (OSError, ValueError):
            run = "?"
    families.append(_gauge("ipex_fleet_intent_open", "1 while a deploy's intent is open on the host (a run that "
                           "never finished, until it or the watchdog resolves it).", is_open, {"run_id": run}))
    return families


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Family:
    return name, doc, "gauge", [(labels or {}, float(value))]


def _realpath(base: str, path: str) -> str:
    """Where `path` under `base` leads, "" where nothing is."""
    path = os.path.join(base, path.lstrip("/"))
    try:
        return os.path.realpath(path) if os.path.lexists(path) else ""
    except OSError:
        return ""


def render(families: list[Family]) -> str:
    """Prometheus' text format (0.0.4) of these families, as prometheus_client's generate_latest writes it."""
    out = []
    for name, doc, kind, samples in families:
        if kind == "info":
            name, kind = f"{name}_info", "gauge"
        out.append(f"# HELP {name} {_escape(doc)}\n# TYPE {name} {kind}\n")
        for labels, value in samples:
            pairs = ",".join(f'{k}="{_escape(v, True)}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{pairs}}} {_go_float(value)}\n" if pairs else f"{name} {_go_float(value)}\n")
    return "".join(out)


def _escape(text: str, label: bool = False) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if label else text


def _go_float(value: float) -> str:
    """A sample's value as prometheus_client writes it (its floatToGoString: Go's exponents)."""
    value = float(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    s = repr(value)
    dot = s.find(".")
    if value > 0 and dot > 6:
        return f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.") + f"e+{dot - 1:02d}"
    return s


def write_textfile(path: str, text: str) -> None:
    """A temporary file beside `path`, renamed into place (as prometheus_client's write_to_textfile, with
    its mode): node_exporter reads the old file or the new one, never half of one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # not *.prom: the textfile collector ignores it
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -- command line -------------------------------------------------------------------------------


# The command line as the controller and the units write it, read without argparse: importing and
# building argparse's parsers was a third of each agent call's start-up (a deploy makes several a
# host). Each command's options: (dest, type or None for a flag, default, required, choices). Anything
# else (--help, --opt=value, an abbreviation, a bad or missing value) goes to argparse, which accepts or
# rejects it as it always did: both give the same arguments for what both accept (a test checks).
_OPTIONS: dict[str, dict[str, tuple[str, Any, Any, bool, tuple[str, ...] | None]]] = {
    "status": {},
    "lock-take": {"--owner": ("owner", str, None, True, None), "--for": ("seconds", float, None, True, None),
                  "--reboot-grace": ("reboot_grace", float, 0, False, None), "--force": ("force", None, False, False, None),
                  "--adopt-run": ("adopt_run", None, False, False, None),
                  "--push-json": ("push_json", str, None, False, None)},
    "lock-release": {"--token": ("token", str, None, True, None)},
    "renew": {"--token": ("token", str, None, True, None), "--for": ("seconds", float, None, True, None),
              "--intent": ("intent", str, None, False, None)},
    "open": {"--intent-json": ("intent_json", str, None, True, None), "--token": ("token", str, None, True, None),
             "--for": ("seconds", float, None, True, None), "--reboot-grace": ("reboot_grace", float, 0, False, None)},
    "activated": {"--intent": ("intent", str, None, True, None), "--for": ("seconds", float, None, True, None)},
    "confirm": {"--intent": ("intent", str, None, True, None), "--for": ("seconds", float, None, True, None)},
    "claim": {"--intent": ("intent", str, None, True, None),
              "--who": ("who", str, None, True, (COMMITTED, "reverting-controller"))},
    "commit": {"--intent": ("intent", str, None, True, None), "--token": ("token", str, None, False, None),
               "--record-stdin": ("record_stdin", None, False, False, None),
               "--metrics-dir": ("metrics_dir", str, None, False, None)},
    "revert": {"--intent": ("intent", str, None, True, None), "--who": ("who", str, None, True, WHO_REVERTS),
               "--detach": ("detach", None, False, False, None)},
    "finish": {"--intent": ("intent", str, None, True, None), "--who": ("who", str, None, True, WHO_REVERTS),
               "--detach": ("detach", None, False, False, None)},
    "outcome": {"--intent": ("intent", str, None, True, None)},
    "fence": {"--intent": ("intent", str, None, True, None)},
    "watch": {"--intent": ("intent", str, None, True, None)},
    "rearm": {"--intent": ("intent", str, None, True, None)},
    "restore": {"--token": ("token", str, None, True, None), "--previous-json": ("previous_json", str, None, True, None),
                "--mode": ("mode", str, None, True, ("switch", "boot", "test")),
                "--profile": ("profile", str, None, True, None)},
    "recover": {},
    "boot": {},
    "metrics": {"--textfile-dir": ("textfile_dir", str, None, True, None)},
}


class _Args:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def parse_fast(argv: list[str]) -> Any:
    """The arguments of a well-formed call, or None: then argparse reads them (help, errors)."""
    root = STATE_DIR
    if len(argv) >= 2 and argv[0] == "--root" and not argv[1].startswith("-"):
        root, argv = argv[1], argv[2:]
    if not argv or argv[0] not in _OPTIONS:
        return None
    options = _OPTIONS[argv[0]]
    values: dict[str, Any] = {"root": root, "command": argv[0]}
    values.update((dest, default) for dest, _kind, default, _required, _choices in options.values())
    seen = set()
    i = 1
    while i < len(argv):
        spec = options.get(argv[i])
        if spec is None or argv[i] in seen:
            return None
        seen.add(argv[i])
        dest, kind, _default, _required, choices = spec
        if kind is None:
            values[dest] = True
            i += 1
            continue
        if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
            return None
        try:
            values[dest] = kind(argv[i + 1])
        except ValueError:
            return None
        if choices is not None and values[dest] not in choices:
            return None
        i += 2
    if any(required and name not in seen for name, (_d, _k, _v, required, _c) in options.items()):
        return None
    return _Args(**values)


def main(argv: list[str] | None = None, make: Any = None) -> int:
    """The command line; `make(root)` builds the agent (tests give one with their clock and system)."""
    args = parse_fast(sys.argv[1:] if argv is None else list(argv))
    if args is None:
        args = _parse(argv)
    agent = make(args.root) if make else Agent(args.root)
    try:
        match args.command:
            case "status":
                out = agent.status()
            case "lock-take":
                out = agent.lock_take(loads(args.owner), args.seconds, args.reboot_grace, args.force,
                                      args.adopt_run)
                if args.push_json:  # the lock is ours: what the push needs, in the same call
                    out["push"] = agent.push_state(loads(args.push_json))
            case "lock-release":
                out = agent.lock_release(args.token)
            case "renew":
                out = agent.renew(args.token, args.seconds, args.intent)
            case "open":
                out = agent.open(loads(args.intent_json), args.token, args.seconds, args.reboot_grace)
            case "activated" | "confirm":
                out = agent.mark(args.intent, "activated" if args.command == "activated" else "confirmed",
                                 args.seconds)
            case "claim":
                if not agent.claim(args.intent, args.who):
                    raise Refused(LOST, error="another claimant decided", **agent._decision(args.intent))
                out = {"won": True}
            case "commit":
                record = None
                if args.record_stdin:  # read whole before the claim: a bad record claims nothing
                    try:
                        record = loads(sys.stdin.read())
                    except ValueError as exc:
                        raise Refused(2, error=f"the record on stdin is not JSON: {exc}") from None
                    if not isinstance(record, dict):
                        raise Refused(2, error="the record on stdin is not a JSON object")
                out = agent.commit(args.intent, args.token, record)
                if args.metrics_dir:  # once the commit is won, recorded and released; best effort: whatever
                    try:  # happens here, the commit's answer and exit code stay what they are
                        out.update(agent.metrics(args.metrics_dir))
                    except Exception as exc:
                        out["metrics_error"] = str(exc) or type(exc).__name__
            case "revert":
                out = agent.revert(args.intent, args.who, args.detach)
            case "finish":
                out = agent.finish(args.intent, args.who)
            case "outcome":
                out = agent.outcome(args.intent)
            case "fence":
                out = agent.fence(args.intent)
            case "watch":
                out = agent.watch(args.intent)
            case "rearm":
                out = {"armed": agent.arm(args.intent)}
            case "restore":
                out = agent.restore(args.token, loads(args.previous_json), args.mode, args.profile)
            case "recover":
                out = agent.recover()
            case "boot":
                out = agent.boot()
            case "metrics":
                try:
                    out = agent.metrics(args.textfile_dir)
                except (OSError, ValueError) as exc:
                    raise Refused(FAILED, metrics_error=str(exc), error=f"cannot write the metrics in "
                                  f"{args.textfile_dir}: {exc}") from None
            case _:
                raise Refused(2, error=f"unknown command {args.command}")
    except Refused as exc:
        print(dumps(exc.detail))
        return exc.code
    print(dumps(out))
    return 0


def _parse(argv: list[str] | None) -> Any:
    import argparse  # only for help and errors: see parse_fast

    parser = argparse.ArgumentParser(prog="ipex-fleet-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=STATE_DIR)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="the lock, the open intent and unfinished reverts, with their leases")
    p = sub.add_parser("lock-take", help="take the deploy lock (prints its token)")
    p.add_argument("--owner", required=True, help="JSON: run_id, controller, pid")
    p.add_argument("--for", dest="seconds", type=float, required=True)
    p.add_argument("--reboot-grace", type=float, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--adopt-run", action="store_true", help="the same run id takes it over (a resumed run)")
    p.add_argument("--push-json", help="JSON: flakes, hash, roots, inputs, keep: the push's state, read and "
                   "tidied once the lock is taken")
    p = sub.add_parser("lock-release")
    p.add_argument("--token", required=True)
    p = sub.add_parser("renew", help="the controller's heartbeat")
    p.add_argument("--token", required=True)
    p.add_argument("--for", dest="seconds", type=float, required=True)
    p.add_argument("--intent")
    p = sub.add_parser("open", help="journal an intent (fenced by the lock's token; CAS on the generation)")
    p.add_argument("--intent-json", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--for", dest="seconds", type=float, required=True)
    p.add_argument("--reboot-grace", type=float, default=0)
    for name in ("activated", "confirm"):
        p = sub.add_parser(name)
        p.add_argument("--intent", required=True)
        p.add_argument("--for", dest="seconds", type=float, required=True)
    p = sub.add_parser("claim")
    p.add_argument("--intent", required=True)
    p.add_argument("--who", required=True, choices=[COMMITTED, "reverting-controller"])
    p = sub.add_parser("commit", help="claim the commit, then append the record (JSON on stdin) and release the lock")
    p.add_argument("--intent", required=True)
    p.add_argument("--token", help="the run's lock, released after a won claim")
    p.add_argument("--record-stdin", action="store_true", help="one JSON object on stdin: the line for deploys.jsonl")
    p.add_argument("--metrics-dir", help="after a won commit, write the deployment metrics there (best effort)")
    for name in ("revert", "finish"):
        p = sub.add_parser(name)
        p.add_argument("--intent", required=True)
        p.add_argument("--who", required=True, choices=WHO_REVERTS)
        p.add_argument("--detach", action="store_true", help="restore in a unit of its own, then return")
    for name in ("outcome", "watch", "rearm", "fence"):
        p = sub.add_parser(name)
        p.add_argument("--intent", required=True)
    p = sub.add_parser("restore", help="return to an earlier generation under the caller's lock, verified")
    p.add_argument("--token", required=True)
    p.add_argument("--previous-json", required=True, help='{"generation": N, "path": "/nix/store/..."}')
    p.add_argument("--mode", required=True, choices=["switch", "boot", "test"])
    p.add_argument("--profile", required=True)
    sub.add_parser("recover", help="finish or start reverts of dead runs, detached")
    sub.add_parser("boot", help="at boot: re-arm leases, finish interrupted reverts, watch an open intent")
    p = sub.add_parser("metrics", help=f"write the deployment metrics (node_exporter's textfile DIR/{DEPLOY_FILE})")
    p.add_argument("--textfile-dir", required=True, metavar="DIR")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
