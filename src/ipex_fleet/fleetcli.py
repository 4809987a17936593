"""`ipex-fleet rollout | history | status | rollback`: the fleet commands on top of pyinfra runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ipex_fleet.domain import HostResult
from ipex_fleet.common.errors import UserError
from ipex_fleet.views.live import Live
from ipex_fleet.views.tables import health_cell, render, when
from ipex_fleet.ledger.results import read_host_result, run_dir
from ipex_fleet.fleet import breaker, hostview, pyinfra_run
from ipex_fleet.fleet.engine import ROLLBACK_DEPLOY, Rollout, RolloutOptions, new_run_id, write_plan
from ipex_fleet.fleet.inventory import load
from ipex_fleet.ledger.runs import Ledger


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ro = sub.add_parser("rollout", help="deploy in waves with failure budgets, soak, revert and resume",
                        description="Each wave is its own pyinfra run of DEPLOY, limited to that wave's hosts.")
    ro.add_argument("inventory", nargs="?")
    ro.add_argument("deploy", nargs="?")
    ro.add_argument("--waves", help="groups (canary,wave1,...) or a spec like 1,10%%,100%% (default: the "
                                    "inventory's canary, wave1, wave2, ... groups)")
    ro.add_argument("--max-fail", default="0", help="hosts a wave may have rolled back or failed, N or P%%; "
                                                     "spent when exceeded (default 0)")
    ro.add_argument("--canary-max-fail", default="0", help="the first wave's --max-fail (default 0)")
    ro.add_argument("--max-unreachable", default="0",
                    help="hosts a wave may have that never took the change (unreachable, or skipped because "
                         "another run held them), N or P%% (default 0); a revert-failed host always halts")
    ro.add_argument("--bake", "--soak", dest="soak", type=float, default=0, metavar="SECONDS",
                    help="seconds to wait after each wave before re-probing its promoted hosts; a failure "
                         "there counts against that wave (alias --soak)")
    ro.add_argument("--breaker", type=int, default=breaker.DEFAULT_THRESHOLD, metavar="K",
                    help="the same failure (check, message, flake) K times, in this run or earlier ones, opens "
                         "the circuit breaker for that flake: the run halts and later rollouts of it refuse to "
                         "start until `ipex-fleet breaker reset` (default 2; 0 turns it off)")
    ro.add_argument("--rollback-scope", default="wave", choices=("wave", "all"),
                    help="on a spent budget, roll back the failed wave's changed hosts, or every wave's")
    ro.add_argument("--parallel", type=int, help="hosts deployed at once within a wave (pyinfra --parallel)")
    ro.add_argument("--resume", metavar="RUN_ID", help="continue a rollout whose controller died, or decide on "
                                                         "a paused one (with --approve or --abort)")
    decide = ro.add_mutually_exclusive_group()
    decide.add_argument("--approve", action="store_const", const="approve", dest="decision",
                        help="with --resume: commit the hosts on probation and go on")
    decide.add_argument("--abort", action="store_const", const="abort", dest="decision",
                        help="with --resume: revert the hosts on probation and halt (rolling back the wave, "
                             "or all with --rollback-scope all)")
    ro.add_argument("--pause-on-inconclusive", action="store_true",
                    help="an inconclusive benchmark gate pauses the rollout with the host on probation "
                         "(host data bench_inconclusive=pause) instead of failing it")
    ro.add_argument("--pause-timeout", type=float, metavar="SECONDS",
                    help="how long a host waits on probation for --approve/--abort before its own watchdog "
                         "reverts it (an abort; host data pause_timeout, default 3600)")
    ro.add_argument("--dry-run", action="store_true", help="print the waves and the pyinfra runs, run nothing")
    ro.add_argument("--json", action="store_true",
                    help="one JSON object per line (messages, waves, each host's changes of state, the summary)")
    ro.set_defaults(func=_rollout)

    mt = sub.add_parser("maintain", help="maintenance in waves: retention and GC, journal, models, drift",
                        description="Runs deploys/maintenance.py on INVENTORY's hosts in waves (default: its canary, "
                                    "wave1, ... groups); a wave whose failures exceed --max-fail stops the run. It "
                                    "never switches or rolls back a host.")
    mt.add_argument("inventory", nargs="?")
    mt.add_argument("--waves", help="groups or a spec like 1,50%%,100%% (as rollout)")
    mt.add_argument("--max-fail", default="0", help="failed hosts a wave may have, N or P%% (default 0)")
    mt.add_argument("--lock-wait", type=float, metavar="S",
                    help="seconds to wait for a deploy that holds a host's lock before skipping it (default 0)")
    mt.add_argument("--restart", action="store_true", help="restart the AI services, one wave at a time, then probe")
    mt.add_argument("--rebaseline", action="store_true", help="make this benchmark the baseline of each healthy host")
    mt.add_argument("--verify-full", action="store_true", help="re-hash every declared model file, not only its marker")
    mt.add_argument("--quick-bench", action="store_true", help="the quick benchmark instead of the full one")
    mt.add_argument("--data", action="append", default=[], metavar="KEY=VALUE", help="host data, as pyinfra --data")
    mt.add_argument("--parallel", type=int, help="hosts at once within a wave (pyinfra --parallel)")
    mt.add_argument("--resume", metavar="RUN_ID", help="continue a maintenance run whose controller died")
    mt.add_argument("--dry-run", action="store_true", help="print the waves and the pyinfra runs, run nothing")
    mt.add_argument("--json", action="store_true", help="one JSON object per line, as rollout --json")
    mt.set_defaults(func=_maintain)

    up = sub.add_parser("update", help="update the flake's locked inputs, show the plan, then (--rollout) roll out",
                        description="Updates FLAKE's lock with the controller's Nix (every input, or --input NAME), "
                                    "shows each changed input and the plan across INVENTORY (which hosts change, "
                                    "which need a reboot), then, with --rollout, deploys it in waves.")
    up.add_argument("inventory")
    up.add_argument("--flake", help="the flake directory (default: the one the inventory's hosts deploy)")
    up.add_argument("--input", action="append", default=[], metavar="NAME", help="update only this input")
    up.add_argument("--rollout", action="store_true", help="hand the plan to `ipex-fleet rollout` at once")
    up.add_argument("--waves", help="as rollout --waves")
    up.add_argument("--max-fail", default="0", help="as rollout --max-fail")
    up.add_argument("--canary-max-fail", default="0", help="as rollout --canary-max-fail")
    up.add_argument("--timeout", type=float, default=1800, help="seconds the lock update may take")
    up.set_defaults(func=_update)

    hi = sub.add_parser("history", help="runs in the ledger, or one run's hosts")
    hi.add_argument("run", nargs="?")
    hi.add_argument("--json", action="store_true")
    hi.add_argument("--inventory", help="for a run this ledger lacks (another controller's): read what the "
                                        "inventory's hosts recorded of it")
    hi.set_defaults(func=_history)

    st = sub.add_parser("status", help="each host's generation now, against its last good deploy")
    st.add_argument("inventory")
    st.add_argument("--json", action="store_true")
    st.add_argument("--live", action="store_true",
                    help="read each host's own records (its deploys, open intent, lock) in one round trip and "
                         "reconcile them with this controller's ledger: deploys made from elsewhere show up")
    st.set_defaults(func=_status)

    br = sub.add_parser("breaker", help="the circuit breakers: which flakes are stopped, and why; reset one",
                        description="Without an action: every open breaker. `reset [FLAKE_HASH]` closes one "
                                    "(a hash prefix will do) or all, so the flake may be rolled out again.")
    br.add_argument("action", nargs="?", choices=("list", "reset"), default="list")
    br.add_argument("flake_hash", nargs="?")
    br.add_argument("--json", action="store_true")
    br.set_defaults(func=_breaker)

    rc = sub.add_parser("recover", help="finish what dead runs left on hosts: open intents and stale locks",
                        description="Runs deploys/recover.py on every host of INVENTORY (or --limit).")
    rc.add_argument("inventory")
    rc.add_argument("--limit", action="append", default=[], metavar="HOST_OR_GROUP")
    rc.set_defaults(func=_recover)

    pl = sub.add_parser("plan", help="what a deploy would change on each host, grouped; changes nothing that runs",
                        description="Runs deploys/plan.py on every host of INVENTORY (or --limit): the flake is "
                                    "pushed and built, then compared with each host's current generation.")
    pl.add_argument("inventory")
    pl.add_argument("--limit", action="append", default=[], metavar="HOST_OR_GROUP")
    pl.add_argument("--data", action="append", default=[], metavar="KEY=VALUE", help="host data, as pyinfra --data")
    pl.add_argument("--json", action="store_true", help="one JSON document: the groups and each host's plan")
    pl.add_argument("--timeout", type=float, default=7200, help="seconds the whole plan may take")
    pl.set_defaults(func=_plan)

    rp = sub.add_parser("report", help="one run as a static HTML page: timeline, hosts, benchmark charts",
                        description="Writes RUN_ID's report (default: the latest run) as one HTML file with "
                                    "no external assets: it works offline.")
    rp.add_argument("run", nargs="?", metavar="RUN_ID")
    rp.add_argument("--html", required=True, metavar="PATH")
    rp.set_defaults(func=_report)

    rb = sub.add_parser("rollback", help="return every host to the generation it had after run RUN_ID")
    rb.add_argument("inventory")
    rb.add_argument("--to", required=True, metavar="RUN_ID")
    rb.set_defaults(func=_rollback)


def _deploy_file(path: str) -> str:
    """The repository's own deploy files are run by relative path, as pyinfra needs."""
    if not Path(path).is_file():
        raise UserError(f"{path} not found: run ipex-fleet from the repository root (where deploys/ is)")
    return path


def _rollout(args: argparse.Namespace) -> int:
    def options() -> RolloutOptions:
        if not args.inventory or not args.deploy:
            raise UserError("rollout INVENTORY DEPLOY: give both, e.g. inventories/prod.py deploys/prod.py")
        for needed in (ROLLBACK_DEPLOY, "deploys/check.py", "deploys/decide.py"):
            _deploy_file(needed)
        data = {}
        if args.pause_on_inconclusive:
            data["bench_inconclusive"] = "pause"
        if args.pause_timeout is not None:
            if args.pause_timeout < 10:
                raise UserError("--pause-timeout: give at least 10 seconds")
            data["pause_timeout"] = f"{args.pause_timeout:g}"
        return RolloutOptions(args.inventory, args.deploy, args.waves, args.max_fail, args.canary_max_fail,
                              args.soak, args.rollback_scope, args.parallel, max_unreachable=args.max_unreachable,
                              breaker_threshold=args.breaker, data=data)

    if args.decision and not args.resume:
        raise UserError(f"--{args.decision} decides on a paused rollout: give --resume RUN_ID too")
    return _run_waves(options, args.resume, args.json, args.dry_run, args.decision)


def _maintain(args: argparse.Namespace) -> int:
    def options() -> RolloutOptions:
        if not args.inventory:
            raise UserError("maintain INVENTORY: give the inventory, e.g. inventories/prod.py")
        data = dict(_key_value(d) for d in args.data)
        for flag_, key in ((args.restart, "maintenance_restart"), (args.rebaseline, "rebaseline"),
                           (args.verify_full, "models_verify"), (args.quick_bench, "maintenance_bench_quick")):
            if flag_:
                data[key] = "true"
        if args.lock_wait is not None:
            if args.lock_wait < 0:
                raise UserError("--lock-wait must be zero or more seconds")
            data["maintenance_lock_wait"] = f"{args.lock_wait:g}"
        return RolloutOptions(args.inventory, _deploy_file("deploys/maintenance.py"), args.waves, args.max_fail,
                              args.max_fail, parallel=args.parallel, kind="maintain", data=data,
                              max_unreachable=args.max_fail)

    return _run_waves(options, args.resume, args.json, args.dry_run)


def _run_waves(options: Callable[[], RolloutOptions], resume: str | None = None, as_json: bool = False,
               dry_run: bool = False, decision: str | None = None) -> int:
    """A run in waves (rollout or maintain): new from `options()`, or resumed from the ledger."""
    ledger = Ledger()
    live = Live("json" if as_json else None)
    if resume:
        run, waves = Rollout.resume(resume, ledger, live, decision)
    else:
        run, waves = Rollout.prepare(options(), ledger, live)
    live.fit([h for wave in waves for h in wave.hosts])
    if dry_run:
        run.describe(waves)
        return 0
    return run.execute(waves)


def _recover(args: argparse.Namespace) -> int:
    import subprocess

    deploy = _deploy_file("deploys/recover.py")
    if not Path(args.inventory).is_file():
        raise UserError(f"inventory {args.inventory} not found")
    return subprocess.run(pyinfra_run.argv(args.inventory, deploy, args.limit, None)).returncode


def _update(args: argparse.Namespace) -> int:
    from ipex_fleet.fleet.update import flake_of, update_lock

    view = load(args.inventory)
    for needed in ("deploys/plan.py", "deploys/prod.py", ROLLBACK_DEPLOY, "deploys/check.py"):
        _deploy_file(needed)
    flake, conf = flake_of(view, args.flake)
    changes = update_lock(flake, args.input, conf, args.timeout)
    if not changes:
        print(f"{flake}/flake.lock: every input is already at its newest; nothing to roll out")
        return 0
    print(f"{flake}/flake.lock updated:")
    for change in changes:
        print(f"  {change.line()}")
    print()
    rc = show_plan(args.inventory, [], {}, False, 7200)
    if rc != 0:
        print("the plan failed: nothing was deployed; see above")
        return rc
    command = f"ipex-fleet rollout {args.inventory} deploys/prod.py"
    if not args.rollout:
        print(f"\nto deploy it in waves: {command}")
        return 0
    print(f"\n{command}")
    return _run_waves(lambda: RolloutOptions(args.inventory, "deploys/prod.py", args.waves, args.max_fail,
                                             args.canary_max_fail))


def _plan(args: argparse.Namespace) -> int:
    return show_plan(args.inventory, args.limit, dict(_key_value(d) for d in args.data), args.json, args.timeout)


def show_plan(inventory: str, limit: list[str], data: dict[str, str], as_json: bool, timeout: float) -> int:
    from ipex_fleet.fleet import plan

    deploy = _deploy_file("deploys/plan.py")
    if not Path(inventory).is_file():
        raise UserError(f"inventory {inventory} not found")
    run_id = new_run_id("plan")
    argv = pyinfra_run.argv(inventory, deploy, limit, None, data)
    log = run_dir(run_id) / "plan.log"
    # Progress goes to stderr under --json: stdout stays one document.
    live = Live("plain", sys.stderr) if as_json else Live()
    live.fit(load(inventory).hosts)
    with live.follow(run_id):
        rc = pyinfra_run.run(argv, {"IPEX_FLEET_RUN_ID": run_id}, log, lambda line: None, timeout)
    plans = plan.read_plans(run_id)
    failed = [r for r in (read_host_result(run_id, h) for h in _result_hosts(run_id)) if r and not r.status.succeeded]
    groups = plan.group(plans)
    if as_json:
        print(json.dumps({"run_id": run_id,
                          "groups": [{"hosts": [p.host for p in g], "plan": g[0].to_json()} for g in groups],
                          "hosts": {p.host: p.to_json() for p in plans},
                          "failed": {r.host: r.error for r in failed}}, indent=2))
    else:
        print(f"plan {run_id}: {len(plans)} host(s) planned, {len(groups)} group(s) of identical change")
        for g in groups:
            print()
            print(", ".join(p.host for p in g) + ":")
            for line in g[0].lines():
                print(f"  {line}")
        for r in failed:
            print(f"\n{r.host}: not planned: {r.error}")
        if rc != 0 and not failed:
            print(f"\npyinfra exited {rc}; its output is in {log}")
    return 0 if rc == 0 and not failed else 1


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"--data {text!r} is not KEY=VALUE")
    return key, value


def _result_hosts(run_id: str) -> list[str]:
    folder = run_dir(run_id) / "hosts"
    return [p.stem for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _history(args: argparse.Namespace) -> int:
    ledger = Ledger()
    if not args.run:
        runs = ledger.runs(30)
        if args.json:
            print(json.dumps([r.__dict__ for r in runs], indent=2))
            return 0
        table = []
        for r in runs:
            counts: dict[str, int] = {}
            for row in ledger.results(r.run_id):
                counts[row["status"]] = counts.get(row["status"], 0) + 1
            table.append([r.run_id, r.kind, r.status, when(r.started),
                          " ".join(f"{k}={v}" for k, v in sorted(counts.items()))])
        print(render([("RUN", {}), ("KIND", {}), ("STATUS", {}), ("STARTED", {"no_wrap": True}), ("HOSTS", {})], table))
        return 0
    run = ledger.run(args.run)
    if run is None and args.inventory:
        return _history_from_hosts(args)
    if run is None:
        raise UserError(f"no run {args.run} in {ledger.path}; `ipex-fleet history` lists them (another "
                        "controller's run: add --inventory INVENTORY to read the hosts' own records)")
    rows = ledger.results(args.run)
    if args.json:
        print(json.dumps({"run": run.__dict__, "waves": [dict(w) for w in ledger.waves(args.run)],
                          "hosts": [dict(r) for r in rows]}, indent=2))
        return 0
    print(f"run {run.run_id} ({run.kind}): {run.status}, started {when(run.started)}, finished {when(run.finished)}"
          + (f": {run.message}" if run.message else ""))
    for w in ledger.waves(args.run):
        print(f"  wave {w['idx'] + 1} {w['name']}: {w['status']} ({', '.join(json.loads(w['hosts']))})")
    print(render([("HOST", {"no_wrap": True}), ("PHASE", {}), ("STATUS", {}), ("PREVIOUS", {"justify": "right"}),
                  ("TARGET", {"justify": "right"}), ("FINAL", {"justify": "right"}), ("HEALTH", {}),
                  ("ERROR", {"ratio": 1, "min_width": 12})],
                 [[r["host"], r["phase"], r["status"], _g(r["previous_generation"]), _g(r["target_generation"]),
                   _g(r["final_generation"]), health_cell(json.loads(r["health"]) if r["health"] else None),
                   r["error"] or ""] for r in rows]))
    return 0


def _g(n: int | None) -> str:
    return "-" if n is None else str(n)


def _history_from_hosts(args: argparse.Namespace) -> int:
    view = load(args.inventory)
    rows = []
    for host, report in _live_reports(args.inventory, view.hosts).items():
        for record in (report or {}).get("records") or []:
            if record.get("run_id") == args.run:
                rows.append({"host": host, "phase": record.get("phase", "deploy"), "status": record.get("status"),
                             "previous": (record.get("previous") or {}).get("generation"),
                             "final": (record.get("final") or {}).get("generation"), "error": record.get("error")})
    if not rows:
        raise UserError(f"no run {args.run} in this ledger nor in the records of {args.inventory}'s hosts")
    if args.json:
        print(json.dumps({"run": {"run_id": args.run, "source": "hosts"}, "hosts": rows}, indent=2))
        return 0
    print(f"run {args.run}: not in this ledger; as its hosts recorded it")
    print(render([("HOST", {"no_wrap": True}), ("PHASE", {}), ("STATUS", {}), ("PREVIOUS", {"justify": "right"}),
                  ("FINAL", {"justify": "right"}), ("ERROR", {"ratio": 1, "min_width": 12})],
                 [[r["host"], r["phase"], r["status"], _g(r["previous"]), _g(r["final"]), r["error"] or ""]
                  for r in rows]))
    return 0


def _read_status(inventory: str, hosts: tuple[str, ...], live: bool) -> dict[str, HostResult | None]:
    """deploys/status.py on `hosts`: each host's generation now (with `live`, also its own deploy records,
    open intent and lock, read in the same round trip)."""
    run_id = new_run_id("status")
    pyinfra_run.run(pyinfra_run.argv(inventory, _deploy_file("deploys/status.py"), hosts, None,
                                     {"status_live": "true"} if live else None),
                    {"IPEX_FLEET_RUN_ID": run_id}, run_dir(run_id) / "status.log", lambda line: None, timeout=600)
    return {h: read_host_result(run_id, h) for h in hosts}


def _live_reports(inventory: str, hosts: tuple[str, ...]) -> dict[str, dict | None]:
    """Each host's own view (deploys.jsonl, open intent, lock), or None where it did not answer."""
    return {h: (r.report if r and r.status.succeeded else None) for h, r in _read_status(inventory, hosts, True).items()}


def _status(args: argparse.Namespace) -> int:
    view = load(args.inventory)
    ledger = Ledger()
    found = _read_status(args.inventory, view.hosts, args.live)
    rows = []
    for host in view.hosts:
        now = found[host]
        good = ledger.last_good(host)
        last = ledger.last(host)
        health = json.loads(last["health"]).get("result") if last and last["health"] else None
        generation = now.final.number if now and now.status.succeeded else None
        matches = None if good is None or generation is None else (now.final.path == good["final_path"])
        row = {"host": host, "reachable": bool(now and now.status.succeeded), "generation": generation,
               "path": now.final.path if now else None, "last_good_run": good["run_id"] if good else None,
               "last_good_generation": good["final_generation"] if good else None,
               "matches_last_good": matches, "last_health": health,
               "last_status": last["status"] if last else None}
        if args.live:
            row.update(hostview.reconcile(host, now.report if now and now.report else None, last, ledger))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.live:
        print(render([("HOST", {"no_wrap": True}), ("GEN", {"justify": "right"}), ("HOST'S LAST DEPLOY", {}),
                      ("THIS LEDGER", {}), ("AGREE", {}), ("OPEN", {})],
                     [[r["host"], _g(r["generation"]) if r["reachable"] else "unreachable",
                       r["host_says"] or "-", r["ledger_says"] or "-",
                       {True: "yes", False: "NO", None: "-"}[r["agree"]], r["open"] or "-"] for r in rows]))
        for r in rows:
            if r["agree"] is False:
                print(f"{r['host']}: {r['disagreement']}")
    else:
        print(render([("HOST", {"no_wrap": True}), ("GEN", {"justify": "right"}), ("AS LAST GOOD", {}),
                      ("LAST GOOD RUN", {}), ("LAST", {}), ("HEALTH", {})],
                     [[r["host"], _g(r["generation"]) if r["reachable"] else "unreachable",
                       {True: "yes", False: f"no (was {r['last_good_generation']})", None: "-"}[r["matches_last_good"]],
                       r["last_good_run"] or "-", r["last_status"] or "-", r["last_health"] or "-"] for r in rows]))
    if not args.json:
        for found in breaker.all_open(ledger):
            print(found.line())
    return 0 if all(r["reachable"] for r in rows) else 1


def _breaker(args: argparse.Namespace) -> int:
    ledger = Ledger()
    if args.action == "reset":
        closed = ledger.reset_breakers(args.flake_hash)
        if not closed:
            raise UserError(f"no open circuit breaker{' for flake ' + args.flake_hash if args.flake_hash else ''}; "
                            "`ipex-fleet breaker` lists the open ones")
        print(f"closed {closed} circuit breaker(s)")
        return 0
    found = breaker.all_open(ledger)
    if args.json:
        print(json.dumps([{"flake_hash": b.flake_hash, "signature": b.signature,
                           "seen": [{"host": h, "run_id": r} for h, r in b.seen], "opened": b.opened}
                          for b in found], indent=2))
    else:
        for b in found:
            print(b.line())
        if not found:
            print("no circuit breaker is open")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ipex_fleet.views.report import write

    path = write(args.run, args.html)
    print(f"report: {path}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    view = load(args.inventory)
    _deploy_file(ROLLBACK_DEPLOY)
    ledger = Ledger()
    if ledger.run(args.to) is not None:
        found = {host: (gen, path) for host, gen, path in ledger.iter_final_generations(args.to)}
    else:  # another controller's run: what the hosts recorded of it
        print(f"run {args.to} is not in {ledger.path}: reading the hosts' own records")
        found = hostview.final_generations_from_hosts(args.to, _live_reports(args.inventory, view.hosts))
        if not found:
            raise UserError(f"no run {args.to} in {ledger.path} nor in the hosts' records; `ipex-fleet history` "
                            "and `ipex-fleet status --live` list them")
    plan = {host: {"generation": gen, "path": path} for host, (gen, path) in found.items() if host in view.hosts}
    if not plan:
        raise UserError(f"run {args.to} left no host of {args.inventory} on a known generation")
    run_id = new_run_id("rollback")
    ledger.start_run(run_id, "rollback", args.inventory, ROLLBACK_DEPLOY, {"to": args.to})
    plan_file = write_plan(run_id, "rollback-plan", plan)
    print(f"rollback {run_id}: {len(plan)} host(s) back to their state after {args.to}")
    rc = pyinfra_run.run(pyinfra_run.argv(args.inventory, ROLLBACK_DEPLOY, tuple(plan), None,
                                          {"rollback_plan": str(plan_file)}),
                         {"IPEX_FLEET_RUN_ID": run_id}, run_dir(run_id) / "rollback.log",
                         lambda line: print(f"  {line}"), timeout=6 * 3600)
    results = {h: read_host_result(run_id, h) for h in plan}
    ok = all(r is not None and r.status.succeeded for r in results.values())
    ledger.finish_run(run_id, "done" if ok and rc == 0 else "failed")
    for host, r in results.items():
        print(f"  {host:<14} {r.status.value if r else 'no result':<12} generation {_g(r.final.number if r else None)}"
              f" (wanted {plan[host]['generation']})")
    return 0 if ok and rc == 0 else 1
