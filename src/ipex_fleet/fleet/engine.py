"""The rollout engine: each wave is its own pyinfra run, limited to that wave's hosts.

A wave whose failures exceed its budget halts the rollout: the hosts that changed (in that wave,
or in every wave with rollback scope `all`) go back to their recorded generations, are checked
there, and the rollout exits non-zero. The journal is the ledger, so `--resume` skips what is done.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable
from ipex_fleet.domain import HostResult, Status
from ipex_fleet.common.errors import UserError
from ipex_fleet.nix.flakepush import FlakeError, flake_hash
from ipex_fleet.views.live import Live
from ipex_fleet.ledger.results import read_host_result, run_dir, write_host_result
from ipex_fleet.views.tables import bench_cell, render, width, wrap
from ipex_fleet.fleet import pyinfra_run
from ipex_fleet.fleet.inventory import load
from ipex_fleet.ledger.runs import Ledger
from ipex_fleet.fleet import breaker
from ipex_fleet.fleet.metrics import write_metrics
from ipex_fleet.fleet.tally import Budgets, Tally
from ipex_fleet.fleet.waves import Budget, Wave, plan

ROLLBACK_DEPLOY = "deploys/rollback.py"
CHECK_DEPLOY = "deploys/check.py"
DECIDE_DEPLOY = "deploys/decide.py"
PAUSED_EXIT = 3  # the run waits for a person: neither a success nor a failure yet
WAVE_TIMEOUT = 6 * 3600


@dataclass(frozen=True)
class RolloutOptions:
    inventory: str
    deploy: str
    waves: str | None = None
    max_fail: str = "0"
    canary_max_fail: str = "0"
    soak: float = 0.0  # the bake time between waves (--bake, alias --soak)
    rollback_scope: str = "wave"
    parallel: int | None = None
    kind: str = "rollout"  # or "maintain": the same waves, with a deploy that changes no generation
    data: dict[str, str] = field(default_factory=dict)  # pyinfra --data for every wave
    max_unreachable: str = "0"  # hosts per wave that may never take the change (unreachable, skipped)
    breaker_threshold: int = breaker.DEFAULT_THRESHOLD  # the same failure this often opens the breaker (0: off)


def new_run_id(kind: str = "rollout") -> str:
    return f"{kind}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


def write_plan(run_id: str, name: str, plan_: dict[str, dict]) -> Path:
    path = run_dir(run_id) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan_, indent=2, sort_keys=True))
    return path


class Rollout:
    def __init__(self, options: RolloutOptions, run_id: str, ledger: Ledger, live: Live | None = None) -> None:
        self.options = options
        self.run_id = run_id
        self.ledger = ledger
        self.live = live or Live()
        self.say = self.live.say
        self.decision: str | None = None  # approve | abort: a resumed run's decision on hosts on probation

    # -- the plan ---------------------------------------------------------------------------

    @classmethod
    def prepare(cls, options: RolloutOptions, ledger: Ledger, live: Live | None = None
                ) -> tuple["Rollout", list[Wave]]:
        if options.rollback_scope not in ("wave", "all"):
            raise UserError(f"--rollback-scope {options.rollback_scope!r}: use wave or all")
        if options.soak < 0:
            raise UserError("--bake must be zero or more seconds")
        Budget.parse(options.max_unreachable, "--max-unreachable")
        if not Path(options.deploy).is_file():
            raise UserError(f"deploy file {options.deploy} does not exist; give one such as deploys/prod.py")
        if options.breaker_threshold < 0:
            raise UserError("--breaker must be 0 (off) or more failures")
        view = load(options.inventory)
        waves = plan(view, options.waves, options.max_fail, options.canary_max_fail)
        if options.kind == "rollout":
            refuse_if_breaker_open(ledger, view.data.values())
        return cls(options, new_run_id(options.kind), ledger, live), waves

    @classmethod
    def resume(cls, run_id: str, ledger: Ledger, live: Live | None = None,
               decision: str | None = None) -> tuple["Rollout", list[Wave]]:
        row = ledger.run(run_id)
        if row is None or row.kind not in ("rollout", "maintain"):
            raise UserError(f"no rollout or maintenance run {run_id} in {ledger.path}; see `ipex-fleet history`")
        if row.status == "paused" and decision is None:
            raise UserError(f"rollout {run_id} is paused ({row.message}); resume it with --approve or --abort")
        if row.status != "paused" and decision is not None:
            raise UserError(f"{row.kind} {run_id} is {row.status}, not paused: --{decision} has nothing to decide")
        if row.status not in ("running", "paused"):
            raise UserError(f"{row.kind} {run_id} already ended ({row.status}); nothing to resume")
        options = RolloutOptions(**row.options)
        waves = [Wave(w["idx"], w["name"], tuple(json.loads(w["hosts"])), w["max_fail"]) for w in ledger.waves(run_id)]
        run = cls(options, run_id, ledger, live)
        run.decision = decision
        if decision is not None:
            ledger.set_run_status(run_id, "running", f"resumed: {decision}")
        return run, waves

    def describe(self, waves: list[Wave]) -> None:
        for wave in waves:
            self.say(f"wave {wave.index + 1} {wave.name}: {len(wave.hosts)} host(s), budget {wave.max_fail} "
                     f"failed, {self.options.max_unreachable} unreachable: {', '.join(wave.hosts)}")
            self.say("  " + " ".join(pyinfra_run.argv(self.options.inventory, self.options.deploy, wave.hosts,
                                                       self.options.parallel, self.options.data)))
        if self.options.soak:
            self.say(f"after each wave: bake {self.options.soak:g}s, then probe every promoted host again")
        if self.maintenance:
            self.say("on a spent budget: stop; maintenance never rolls a deployment back")
        else:
            self.say(f"on a spent budget: roll back the changed hosts of the {self.options.rollback_scope}")

    @property
    def maintenance(self) -> bool:
        return self.options.kind == "maintain"

    @property
    def phase(self) -> str:
        """How the ledger files each host's wave result (`last_good` counts deploys only)."""
        return "maintain" if self.maintenance else "deploy"

    def failed(self, result: HostResult) -> bool:
        """What spends a wave's budget. Maintenance skips a host a deploy holds: that is not a failure."""
        if self.maintenance and result.status is Status.SKIPPED:
            return False
        return not result.status.succeeded

    # -- running ----------------------------------------------------------------------------

    def execute(self, waves: list[Wave]) -> int:
        self.ledger.start_run(self.run_id, self.options.kind, self.options.inventory, self.options.deploy,
                              asdict(self.options))
        for wave in waves:
            self.ledger.plan_wave(self.run_id, wave.index, wave.name, wave.hosts, wave.max_fail)
        self.say(f"{self.options.kind} {self.run_id}: {len(waves)} wave(s)")
        states = {w["idx"]: w["status"] for w in self.ledger.waves(self.run_id)}
        for wave in waves:
            if states.get(wave.index) == "done":
                self.say(f"== wave {wave.index + 1} {wave.name}: done before, skipped")
                continue
            ended = self._run_wave(wave, waves)
            if ended == "paused":
                self.summary(waves)
                return PAUSED_EXIT
            if ended == "halted":
                self.summary(waves)
                return 1
        failures = [r for r in self._deploy_results(waves).values() if self.failed(r)]
        self.ledger.finish_run(self.run_id, "done" if not failures else "done_with_failures")
        self.summary(waves)
        return 1 if failures else 0

    def _env(self, run_id: str) -> dict[str, str]:
        return {"IPEX_FLEET_RUN_ID": run_id}

    def _pyinfra(self, deploy: str, hosts: tuple[str, ...], run_id: str, label: str,
                 data: dict[str, str] | None = None, phase: str | None = None) -> int:
        """One pyinfra run; its hosts' changes of state are shown as they happen (phase: their label)."""
        args = pyinfra_run.argv(self.options.inventory, deploy, hosts, self.options.parallel, data)
        log = run_dir(self.run_id) / f"{label}.log"
        with self.live.follow(run_id, phase):
            return pyinfra_run.run(args, self._env(run_id), log, lambda line: None, WAVE_TIMEOUT)

    def _results(self, run_id: str, hosts: tuple[str, ...], phase: str, wave: int | None) -> dict[str, HostResult]:
        out = {}
        for host in hosts:
            result = read_host_result(run_id, host)
            if result is None:  # never connected, so no step of ours ran for it
                result = HostResult(host=host, run_id=run_id, status=Status.UNREACHABLE,
                                    error="no result: the host did not connect (see the wave's log)")
                write_host_result(result)
                self.live.event({"ts": time.time(), "host": host, "state": result.status.value,
                                 "error": result.error}, None if phase == self.phase else phase)
            out[host] = result
        self.ledger.record_all(list(out.values()), phase, wave, run_id=self.run_id)
        return out

    def _run_wave(self, wave: Wave, waves: list[Wave]) -> str:
        """Deploy one wave (or decide on its hosts on probation): `done`, `halted` or `paused`."""
        self.ledger.set_wave(self.run_id, wave.index, wave.name, wave.hosts, wave.max_fail, "running")
        paused = self._paused(wave)
        if paused:  # resumed with a person's decision on the hosts this wave left on probation
            assert self.decision is not None, "resume() admits a paused run only with a decision"
            self.say(f"== wave {wave.index + 1} {wave.name}: {self.decision} {', '.join(paused)} (on probation)")
            with self.live.wave(wave.name, paused):
                self._decide(wave, paused, self.decision)
                results = self._results(self.run_id, wave.hosts, self.phase, wave.index)
        else:
            done = {h for h in wave.hosts if (r := read_host_result(self.run_id, h)) and r.status.succeeded}
            pending = tuple(h for h in wave.hosts if h not in done)
            self.say(f"== wave {wave.index + 1} {wave.name}: {', '.join(pending) or 'nothing left'}"
                     + (f" ({len(done)} done before the resume)" if done else ""))
            with self.live.wave(wave.name, pending):
                if pending:
                    self._pyinfra(self.options.deploy, pending, self.run_id, f"wave{wave.index + 1}",
                                  self.options.data)
                results = self._results(self.run_id, wave.hosts, self.phase, wave.index)
        budgets = Budgets(wave.max_fail, self.options.max_unreachable)
        tally = Tally.of(results, self.maintenance)
        soak_failed: tuple[str, ...] = ()
        if self.options.soak and budgets.halts(tally, len(wave.hosts)) is None:
            soak_failed = tuple(self._soak(wave, waves))  # a failure in the bake counts against this wave
            tally = Tally.of(results, self.maintenance, soak_failed)
        self._judged(wave, tally)
        why = budgets.halts(tally, len(wave.hosts))
        if not self.maintenance:
            opened = breaker.record_failures(self.ledger, self.run_id, results.values(),
                                             self.options.breaker_threshold)
            for found in opened:
                self.say(f"== {found.line()}")
            why = why or ("the circuit breaker opened" if opened else None)
        if paused and self.decision == "abort":  # a person's decision, whatever the budgets say
            why = f"aborted on probation ({', '.join(paused)})"
        on_probation = tuple(h for h, r in results.items() if r.status is Status.PAUSED)
        if why is not None:
            self.say(f"== wave {wave.index + 1} {wave.name}: {why}: halting")
            self.ledger.set_wave(self.run_id, wave.index, wave.name, wave.hosts, wave.max_fail, "halted")
            if on_probation:  # a halted wave decides nothing by approval: its hosts on probation go back
                self._decide(wave, on_probation, "abort")
            if not self.maintenance:
                self._revert(wave, waves, extra=list(soak_failed))
            self.ledger.finish_run(self.run_id, "halted", f"wave {wave.name}: {why}")
            return "halted"
        if on_probation:
            self._pause(wave, on_probation, results)
            return "paused"
        self.ledger.set_wave(self.run_id, wave.index, wave.name, wave.hosts, wave.max_fail, "done")
        return "done"

    def _paused(self, wave: Wave) -> tuple[str, ...]:
        return tuple(h for h in wave.hosts if (r := read_host_result(self.run_id, h)) and r.status is Status.PAUSED)

    def _pause(self, wave: Wave, hosts: tuple[str, ...], results: dict[str, HostResult]) -> None:
        """Wait for a person (Argo Rollouts' inconclusive analysis): the hosts hold their open intents
        with the pause timeout as their lease; this controller may exit, or die, meanwhile."""
        self.ledger.set_wave(self.run_id, wave.index, wave.name, wave.hosts, wave.max_fail, "paused")
        self.ledger.finish_run(self.run_id, "paused", f"wave {wave.name}: {', '.join(hosts)} on probation")
        self.say(f"== wave {wave.index + 1} {wave.name}: paused, {len(hosts)} host(s) on probation")
        for host in hosts:
            self.say(f"   {host}: {(results[host].error or '').split('; on probation')[0]}")
        self.say(f"   approve (commit them, go on): ipex-fleet rollout --resume {self.run_id} --approve")
        self.say(f"   abort (revert the {self.options.rollback_scope}): "
                 f"ipex-fleet rollout --resume {self.run_id} --abort")
        self.say("   nobody deciding within the pause timeout is an abort: each host's watchdog reverts it")

    def _decide(self, wave: Wave, hosts: tuple[str, ...], decision: str) -> None:
        self._pyinfra(DECIDE_DEPLOY, hosts, self.run_id, f"decide{wave.index + 1}",
                      {**self.options.data, "decision": decision})
        for host in hosts:
            result = read_host_result(self.run_id, host)
            if result is not None:
                self.ledger.record(result, self.phase, wave.index, run_id=self.run_id)

    def _judged(self, wave: Wave, tally: Tally) -> None:
        """Each kind of trouble apart: in the ledger, a line (or a JSON object), and the run's metrics."""
        counts = tally.counts()
        self.ledger.set_tally(self.run_id, wave.index, counts)
        self.live.document({"type": "tally", "wave": wave.name, "counts": counts,
                            "hosts": {k: list(v) for k, v in tally.hosts.items()}})
        if self.live.form != "json" and tally.hosts:  # a clean wave's end line already says so
            for line in wrap(f"   wave {wave.name}: {tally.text()}", width(), indent="      "):
                self.say(line)
        write_metrics(self.run_id, self.options.kind, self.ledger.waves(self.run_id))

    def _deploy_results(self, waves: list[Wave], upto: int | None = None) -> dict[str, HostResult]:
        out = {}
        for wave in waves:
            if upto is not None and wave.index > upto:
                break
            for host in wave.hosts:
                result = read_host_result(self.run_id, host)
                if result is not None:
                    out[host] = result
        return out

    def _soak(self, wave: Wave, waves: list[Wave]) -> list[str]:
        promoted = {h: r for h, r in self._deploy_results(waves, wave.index).items() if r.status.succeeded}
        if not promoted:
            return []
        self.say(f"== soak {self.options.soak:g}s, then re-probe {len(promoted)} promoted host(s)")
        time.sleep(self.options.soak)
        run_id = f"{self.run_id}.soak{wave.index + 1}"
        expected = {h: {"generation": r.final.number, "path": r.final.path} for h, r in promoted.items()}
        plan_file = write_plan(self.run_id, f"soak{wave.index + 1}-plan", expected)
        self._pyinfra(CHECK_DEPLOY, tuple(promoted), run_id, f"soak{wave.index + 1}", {"expect_plan": str(plan_file)},
                      phase="soak")
        results = self._results(run_id, tuple(promoted), f"soak{wave.index + 1}", wave.index)
        bad = [h for h, r in results.items() if not r.status.succeeded]
        if bad:
            self.say(f"  soak found {len(bad)} unhealthy: {', '.join(bad)}")
        return bad

    def _revert(self, wave: Wave, waves: list[Wave], extra: list[str]) -> None:
        scope = waves[: wave.index + 1] if self.options.rollback_scope == "all" else [wave]
        plan_: dict[str, dict] = {}
        for w in scope:
            for host in w.hosts:
                r = read_host_result(self.run_id, host)
                changed = r is not None and r.status is Status.OK and r.previous.path != r.final.path
                if r is not None and r.previous.number is not None and (changed or host in extra):
                    plan_[host] = {"generation": r.previous.number, "path": r.previous.path}
        if not plan_:
            self.say("== nothing left to roll back: the failed hosts already went back by themselves")
            return
        self.say(f"== rolling back {len(plan_)} host(s) to their recorded generations: {', '.join(plan_)}")
        plan_file = write_plan(self.run_id, "rollback-plan", plan_)
        run_id = f"{self.run_id}.rollback"
        self._pyinfra(ROLLBACK_DEPLOY, tuple(plan_), run_id, "rollback", {"rollback_plan": str(plan_file)},
                      phase="rollback")
        self._results(run_id, tuple(plan_), "rollback", wave.index)

    # -- the end ----------------------------------------------------------------------------

    def summary(self, waves: list[Wave]) -> None:
        """The final table, one row per host: result, previous → final generation, health, the
        benchmark against its baseline, time; then each failed host's error and failing checks, folded
        to the terminal's width (a narrow terminal keeps every row on one line). In json form: one
        `summary` object with the same rows."""
        run = self.ledger.run(self.run_id)
        status = run.status if run else "?"
        if self.maintenance:
            return self._maintenance_summary(waves, status)
        rows = self.rows(waves)
        if self.live.form == "json":
            tallies = [{"wave": w["name"], "status": w["status"], "tally": json.loads(w["tally"]) if w["tally"] else None}
                       for w in self.ledger.waves(self.run_id)]
            self.live.document({"type": "summary", "run_id": self.run_id, "status": status, "hosts": rows,
                                "waves": tallies})
            return
        table = [[r["wave"], r["host"], r["status"], "", "", "", ""] if r["phase"] is None else
                 [r["wave"], r["host"], _status_cell(r),
                  f"{_gen(r['previous'])}→{_gen(r['final'])}", r["health"] or "-", bench_cell(r["bench"]),
                  f"{r['seconds']:.0f}s" if r["seconds"] is not None else "-"] for r in rows]
        self.say("")
        columns = [(name, {"no_wrap": True}) for name in ("WAVE", "HOST", "STATUS", "GEN", "HEALTH", "BENCH")]
        for line in render([*columns, ("TIME", {"justify": "right", "no_wrap": True})], table).splitlines():
            self.say(line)
        for r in rows:
            if r["error"]:
                for line in wrap(f"{r['host']}: {r['error']}", width(), indent="    "):
                    self.say(line)
        for wave in self.ledger.waves(self.run_id):
            if wave["tally"] and any(json.loads(wave["tally"]).values()):
                counts = json.loads(wave["tally"])
                self.say(f"wave {wave['name']}: " + ", ".join(f"{k} {n}" for k, n in counts.items() if n))
        self.say(f"{self.options.kind} {self.run_id}: {status}")

    def _maintenance_summary(self, waves: list[Wave], status: str) -> None:
        from ipex_fleet.views import maintreport

        entries = [maintreport.host_entry(self.run_id, h, w.name) for w in waves for h in w.hosts]
        path = maintreport.write(self.run_id, status, entries)
        if self.live.form == "json":
            self.live.document({"type": "summary", "run_id": self.run_id, "status": status, "hosts": entries})
            return
        self.say("")
        for line in maintreport.table(entries):
            self.say(line)
        self.say(f"report: {path}")
        self.say(f"{self.options.kind} {self.run_id}: {status}")

    def rows(self, waves: list[Wave]) -> list[dict]:
        """Each host's end in this rollout: its latest phase (a rollback after the deploy wins)."""
        latest = {r["host"]: r for r in self.ledger.results(self.run_id)}
        out = []
        for wave in waves:
            for host in wave.hosts:
                r = latest.get(host)
                if r is None:
                    out.append({"wave": wave.name, "host": host, "phase": None, "status": "not run",
                                "previous": None, "final": None, "health": None, "bench": None,
                                "seconds": None, "error": None})
                    continue
                deployed = read_host_result(self.run_id, host)
                timings = json.loads(r["timings"]) if r["timings"] else {}
                out.append({"wave": wave.name, "host": host, "phase": r["phase"], "status": r["status"],
                            "previous": r["previous_generation"], "final": r["final_generation"],
                            "health": (json.loads(r["health"]) if r["health"] else {}).get("result"),
                            "bench": deployed.bench if deployed else None,
                            "seconds": _seconds(timings), "error": r["error"],
                            "inconclusive": bool(deployed and (deployed.bench or {}).get("inconclusive_accepted"))})
        return out


def refuse_if_breaker_open(ledger: Ledger, hosts_data: Iterable[dict]) -> None:
    """One line, before any host is touched, when a breaker is open for a flake these hosts would get."""
    hashes = set()
    for data in hosts_data:
        path = data.get("flake")
        if path and Path(str(path), "flake.nix").is_file():
            try:
                hashes.add(flake_hash(str(path)))
            except (OSError, FlakeError):
                continue  # the deploy's own validation names what is wrong with it
    for found in breaker.open_for(ledger, hashes):
        raise UserError(found.line())


def _status_cell(row: dict) -> str:
    """The host's status; a later phase (rollback, soak) named before it; an inconclusive gate marked."""
    cell = row["status"] if row["phase"] == "deploy" else f"{row['phase']}:{row['status']}"
    return cell + " (inconclusive)" if row.get("inconclusive") else cell


def _seconds(timings: dict[str, float]) -> float | None:
    """The host's whole time: its result's `total` (older records: the sum of their steps)."""
    if not timings:
        return None
    return round(timings.get("total", sum(timings.values())), 1)


def _gen(number: int | None) -> str:
    return "-" if number is None else str(number)
