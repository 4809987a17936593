#!/usr/bin/env python3
"""A randomized fault campaign against the safety net, on a lab of its own (loopback only, bounded).

Each run deploys a new version to every host of a 4-host lab with one or two faults drawn at random:
the controller SIGKILLed at a random instant, a host crashed or rebooted at a random instant, a
host's SSH cut then healed, a peer slowed, an activation or a health check failing. After each run
(and the bounds the README states: one lease, a boot's re-armed lease, a revert) every host is
checked against the invariant:

- no open intent and no lock is left;
- the host is committed on this run's target (a `committed` claim of this run names what it runs),
  or on the generation recorded before the run, verified: profile, running system and boot default;
- when the controller survived, the host's result says which (`ok` on the target, `rolled_back` or
  an earlier failure on the recorded generation, `unreachable` with the host's own claim saying it).

It prints each run's faults and outcome, then the count of runs, faults and violations, with the
seed of every violation (`--seed S --runs 1` replays it).

    .venv/bin/python benchmarks/chaos.py --runs 20 [--seed 1] [--budget 1800] [--no-gates]
    .venv/bin/python benchmarks/chaos.py --force reboot:host4:1.1,1.2,1.3 --no-gates   # one fault, set times

--no-gates turns the health checks off as well, so no gate follows the activation and its
confirmation over a new login is the commit (the record, the lock's release and the metrics in that
one round trip).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ipex_fleet.lab import Lab  # noqa: E402

HOSTS = ("host1", "host2", "host3", "host4")
LEASE, REBOOT_TIMEOUT = 5, 30
DATA = ("bench=false", f"lease_grace={LEASE}", f"reboot_timeout={REBOOT_TIMEOUT}", "command_timeout=20",
        "activation_timeout=60", "health_timeout=30", "confirm_timeout=10")
# No gate after the activation: the confirmation over a new login is the commit (flow.gates_follow).
NO_GATES = ("health_levels=[]",)
# After the run: a dead controller's lease, a boot's re-armed lease, a revert, with room for a slow box.
SETTLE = LEASE + REBOOT_TIMEOUT + LEASE + 40


@dataclass
class Fault:
    kind: str
    host: str | None = None
    at: float = 0.0  # seconds after the deploy starts

    def __str__(self) -> str:
        where = f" {self.host}" if self.host else ""
        when = f" at {self.at:.1f}s" if self.kind in ("kill", "crash", "reboot", "cut") else ""
        return f"{self.kind}{where}{when}"


@dataclass
class Outcome:
    seed: int
    faults: list[Fault]
    results: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    deploy_seconds: float = 0.0  # the deploy alone, without the settling after it


# Faults that may end a host's deploy without committing it: its own. A slow host, a peer's crash or
# cut, never: a healthy host that is not committed is as much a violation as a broken host kept.
OWN_FAULTS = ("crash", "reboot", "cut", "fail_activation", "fail_health")


def healthy_host_problem(host: str, faults: list[Fault], survived: bool, status: str | None) -> str | None:
    """A host with no fault of its own, under a controller that lived, must end committed."""
    if not survived or status is None or status in ("ok", "unchanged"):
        return None
    if any(f.host == host and f.kind in OWN_FAULTS for f in faults):
        return None
    return f"a healthy host ended {status} (no fault of its own; the controller lived)"


def draw(rng: random.Random, window: float, gates: bool = True) -> list[Fault]:
    kinds = ("kill", "crash", "reboot", "cut", "slow", "fail_activation") + (("fail_health",) if gates else ())
    faults = []
    for _ in range(rng.choice((1, 1, 2))):
        kind = rng.choice(kinds)
        host = None if kind == "kill" else rng.choice(HOSTS)
        faults.append(Fault(kind, host, round(rng.uniform(0.5, window), 1)))
    return faults


def host_state(lab: Lab, host: str) -> dict:
    """Profile generation and path, running system, boot default, lock, intent, this host's claims."""
    out = lab.ssh(host, "readlink /nix/var/nix/profiles/system; readlink -f /nix/var/nix/profiles/system; "
                        "readlink -f /run/current-system; printf 'boot=%s\\n' \"$(sed -n 's/^default nixos-generation-//p' "
                        "/boot/loader/loader.conf)\"; "
                        # the agent's own view: a lock whose lease ran out (its controller gone) is free
                        "/var/lib/ipex-fleet/agent/run /var/lib/ipex-fleet/agent/agent.py status 2>/dev/null "
                        "| sed 's/^/agent=/'; test -e /var/lib/ipex-fleet/intent.json && echo intent=open; "
                        "cd /var/lib/ipex-fleet/resolved 2>/dev/null && for f in *.json; do [ -e \"$f\" ] && "
                        "printf 'claim %s %s\\n' \"${f%.json}\" \"$(cat \"$f\")\"; done; true",
                  timeout=30).stdout.splitlines()
    agent = next((json.loads(line[len("agent="):]) for line in out if line.startswith("agent={")), {})
    lock = agent.get("lock")
    state = {"generation": int(out[0].split("-")[1]), "profile": out[1], "running": out[2],
             "boot_default": out[3][len("boot="):].replace(".conf", ""), "lock": bool(lock and lock.get("left", 0) > 0),
             "intent": "intent=open" in out, "reverting": bool(agent.get("unfinished")), "claims": []}
    for line in out[3:]:
        if line.startswith("claim "):
            _, name, data = line.split(" ", 2)
            state["claims"].append({**json.loads(data), "who": name.rsplit(".", 1)[1]})
    return state


def settled(lab: Lab, host: str, timeout: float) -> dict:
    """The host's state once it answers and holds no intent, no lock and no revert still running (or the
    bound ran out)."""
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        try:
            state = host_state(lab, host)
        except Exception:  # still booting
            time.sleep(1)
            continue
        if not state["intent"] and not state["lock"] and not state["reverting"]:
            return state
        time.sleep(1)
    return state


def run_once(lab: Lab, seed: int, state_dir: Path, gates: bool = True, window: float | None = None,
             logs: Path | None = None, forced: list[Fault] | None = None) -> Outcome:
    rng = random.Random(seed)
    # A healthy 4-host deploy here takes about 9 s with its health checks (25 s before the round trips
    # were folded: the campaigns before it drew from 20 s), 3 to 5 s without.
    faults = forced if forced is not None else draw(rng, window=window or (10.0 if gates else 4.0), gates=gates)
    outcome = Outcome(seed, faults)
    before = {h: host_state(lab, h) for h in HOSTS}
    for h in HOSTS:
        knobs = [f"version=chaos-{seed}-{time.monotonic_ns()}", "slow_activation=", "fail_activation=", "fail_service="]
        for f in faults:
            if f.host == h and f.kind == "slow":
                knobs.append(f"slow_activation={rng.choice((8, 15))}")
            if f.host == h and f.kind == "fail_activation":
                knobs.append("fail_activation=true")
            if f.host == h and f.kind == "fail_health":
                knobs.append("fail_service=ollama")
        lab.config(h, knobs)
    run_id = f"chaos-{seed}"
    env = {**os.environ, "IPEX_FLEET_LAB_ROOT": str(lab.layout.root), "IPEX_FLEET_STATE": str(state_dir),
           "IPEX_FLEET_RUN_ID": run_id}
    argv = [str(Path(sys.executable).parent / "pyinfra"), "inventories/lab.py", "deploys/prod.py", "-y",
            *[a for d in DATA + (() if gates else NO_GATES) for a in ("--data", d)]]
    started = time.monotonic()
    log = open(logs / f"seed-{seed}.log", "wb") if logs else subprocess.DEVNULL
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    killed = threading.Event()

    def inject(f: Fault) -> None:
        time.sleep(f.at)
        if proc.poll() is not None:
            print(f"  (fault {f}: the deploy had already ended)")
            return
        try:
            if f.kind == "kill":
                os.killpg(proc.pid, signal.SIGKILL)
                killed.set()
            elif f.kind == "crash":
                lab.crash(f.host, wait=False)
            elif f.kind == "reboot":
                lab.reboot(f.host, wait=False)
            elif f.kind == "cut":
                lab.cut(f.host)
                time.sleep(rng.choice((3, 8, 15)))
                lab.heal(f.host)
        except Exception as exc:  # a fault that could not be injected is reported, not a violation
            print(f"  (fault {f} not injected: {exc})")

    timed = [threading.Thread(target=inject, args=(f,), daemon=True) for f in faults
             if f.kind in ("kill", "crash", "reboot", "cut")]
    for t in timed:
        t.start()
    try:
        proc.wait(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        outcome.violations.append("the deploy did not end within 400 s")
    outcome.deploy_seconds = round(time.monotonic() - started, 1)
    if logs:
        log.close()
    for t in timed:
        t.join(timeout=60)
    for h in HOSTS:
        lab.heal(h)
    survived = not killed.is_set()
    for h in HOSTS:
        state = settled(lab, h, SETTLE)
        mine = [c for c in state.get("claims", []) if c.get("run_id") == run_id]
        committed = [c for c in mine if c["who"] == "committed"]
        result_file = state_dir / "runs" / run_id / "hosts" / f"{h}.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        outcome.results[h] = result["status"] if result else ("-" if not survived else "missing")
        problems = []
        if not state:
            problems.append("never answered again")
        else:
            if state["intent"]:
                problems.append("an intent is still open")
            if state["lock"]:
                problems.append("the lock is still held")
            if state["reverting"]:
                problems.append("a claimed revert has not ended")
            old = before[h]
            on_old = (state["profile"], state["running"]) == (old["profile"], old["running"])
            on_target = bool(committed) and state["running"] == committed[-1]["target"]["path"] == state["profile"]
            if not (on_old or on_target):
                problems.append(f"on {state['running']} (profile {state['profile']}), neither the recorded "
                                f"{old['running']} nor a committed target")
            if on_old and not on_target and state["boot_default"] and state["boot_default"] != str(old["generation"]):
                problems.append(f"boot default {state['boot_default']}, not the recorded {old['generation']}")
            if len(mine) > 1:
                problems.append(f"{len(mine)} decisions for one run: {[c['who'] for c in mine]}")
            if [c for c in mine if c.get("outcome") == "revert-failed"]:
                problems.append("a revert failed")
            if survived and result is None:
                problems.append("the controller survived but wrote no result")
            if result and result["status"] == "ok" and not on_target:
                problems.append("result ok, but the host is not on a committed target")
            if result and result["status"] == "rolled_back" and not on_old:
                problems.append("result rolled_back, but the host is not on the recorded generation")
            healthy = healthy_host_problem(h, faults, survived, result["status"] if result else None)
            if healthy:
                problems.append(healthy)
        outcome.violations += [f"{h}: {p}" for p in problems]
    for h in HOSTS:  # back to healthy knobs for the next run
        lab.config(h, ["slow_activation=", "fail_activation=", "fail_service="])
    outcome.seconds = round(time.monotonic() - started, 1)
    return outcome


_RUN_LINE = re.compile(r"^run \d+ seed (\d+): (.*) -> (.*) \([\d.]+s[^)]*\) ")
_FAULT = re.compile(r"^(\w+)(?: (host\d+))?")


def recheck(log: Path) -> int:
    """Apply the healthy-host rule to a campaign's printed log (for runs checked before the rule)."""
    runs, bad, skipped_faults = 0, 0, []
    for line in log.read_text().splitlines():
        if line.startswith("  (fault "):
            skipped_faults.append(line[len("  (fault "):].split(":", 1)[0].split(" not injected", 1)[0])
            continue
        m = _RUN_LINE.match(line)
        if not m:
            continue
        runs += 1
        texts = m.group(2).split(", ")
        faults = [Fault(f.group(1), f.group(2)) for t in texts if (f := _FAULT.match(t))]
        injected_kill = any(t.startswith("kill") and t not in skipped_faults for t in texts)
        results = dict(pair.split("=", 1) for pair in m.group(3).split())
        for host, status in results.items():
            problem = healthy_host_problem(host, faults, not injected_kill, None if status in ("-", "missing") else status)
            if problem:
                bad += 1
                print(f"seed {m.group(1)}: {host}: {problem}")
        skipped_faults = []
    print(f"rechecked {runs} runs: {bad} healthy host(s) not committed")
    return 1 if bad else 0


def forced_faults(text: str) -> list[Fault]:
    """--force's faults, one a run: KIND:HOST:AT[,AT...] (HOST empty for kill)."""
    try:
        kind, host, times = text.split(":")
        faults = [Fault(kind, host or None, float(at)) for at in times.split(",")]
    except ValueError:
        raise SystemExit(f"--force {text!r}: give KIND:HOST:AT[,AT...], e.g. reboot:host4:1.1,1.2")
    if kind not in ("kill", "crash", "reboot", "cut") or (kind == "kill") != (host == "") or (
            host and host not in HOSTS):
        raise SystemExit(f"--force {text!r}: KIND is kill (no host), crash, reboot or cut on one of {', '.join(HOSTS)}")
    return faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1, help="the first run's seed (run i uses seed+i)")
    parser.add_argument("--budget", type=float, default=3600, help="stop starting runs after this many seconds")
    parser.add_argument("--root", default="/srv/ipex-fleet-chaos")
    parser.add_argument("--net", default="127.0.85")
    parser.add_argument("--no-gates", action="store_true",
                        help="health checks off too: the activation's confirmation over a new login is the commit")
    parser.add_argument("--window", type=float, help="faults fall in the first this many seconds "
                        "(default 10 with gates, 4 without: about the deploy's length)")
    parser.add_argument("--logs", type=Path, help="keep each run's deploy output here (seed-S.log)")
    parser.add_argument("--force", metavar="KIND:HOST:AT[,AT...]",
                        help="no draw: one run a time in the list, that fault alone (e.g. reboot:host4:1.1,1.2,1.3, "
                             "crash:host2:1.0, kill::2.5); the seeds still set each run's version")
    parser.add_argument("--recheck", type=Path, metavar="LOG",
                        help="apply the healthy-host rule to a campaign's printed output, run nothing")
    args = parser.parse_args()
    if args.recheck:
        return recheck(args.recheck)
    forced = forced_faults(args.force) if args.force else None
    if forced is not None:
        args.runs = len(forced)
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    lab = Lab(args.root)
    lab.destroy()
    state_dir = Path(tempfile.mkdtemp(prefix="ipex-fleet-chaos-"))
    started = time.monotonic()
    outcomes: list[Outcome] = []
    try:
        lab.up(len(HOSTS), args.net)
        for i in range(args.runs):
            if time.monotonic() - started > args.budget:
                print(f"budget of {args.budget:.0f}s spent after {i} runs")
                break
            o = run_once(lab, args.seed + i, state_dir, gates=not args.no_gates, window=args.window, logs=args.logs,
                         forced=[forced[i]] if forced is not None else None)
            outcomes.append(o)
            verdict = "ok" if not o.violations else "VIOLATION"
            print(f"run {i + 1} seed {o.seed}: {', '.join(map(str, o.faults))} -> "
                  f"{' '.join(f'{h}={s}' for h, s in o.results.items())} ({o.seconds}s; deploy {o.deploy_seconds}s) "
                  f"{verdict}", flush=True)
            for v in o.violations:
                print(f"    {v}", flush=True)
        leaks = lab.leaks()["leaks"]
    finally:
        lab.destroy()
        shutil.rmtree(state_dir, ignore_errors=True)
    faults = sum(len(o.faults) for o in outcomes)
    bad = [o for o in outcomes if o.violations]
    print(f"\nruns {len(outcomes)}, faults {faults}, runs with violations {len(bad)}, "
          f"packets off loopback {leaks}, {time.monotonic() - started:.0f}s")
    if outcomes:
        slowest = sorted(outcomes, key=lambda o: o.deploy_seconds)[-3:][::-1]
        print("slowest deploys: " + ", ".join(f"{o.deploy_seconds}s (seed {o.seed}: {', '.join(map(str, o.faults))})"
                                            for o in slowest))
    for o in bad:
        print(f"  replay: .venv/bin/python benchmarks/chaos.py --seed {o.seed} --runs 1"
              + (" --no-gates" if args.no_gates else ""))
    return 1 if bad or leaks else 0


if __name__ == "__main__":
    sys.exit(main())
