"""python -m ipex_fleet.host.bench [--quick] [--json] [--gate --tolerance 0.15 --dir DIR] [--rebaseline]

Exit status: 0 pass (or a baseline recorded), 1 fail, 3 inconclusive, 2 a usage error.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ipex_fleet.host import fleetconfig
from ipex_fleet.host.device import load_generation_environment
from ipex_fleet.common.files import write_json_atomic
from ipex_fleet.host.bench import Bench, gate, occupants, pooled, sig, stats

EXIT = {stats.PASS: 0, stats.FAIL: 1, stats.INCONCLUSIVE: 3}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipex-fleet bench", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="the post-deploy run (at most 30 s on a 2-core CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--only", action="append", help="run only cases whose name starts with this")
    p.add_argument("--gate", action="store_true",
                   help="judge the samples against the baseline in --dir: pass, fail or inconclusive")
    p.add_argument("--tolerance", type=float,
                   help="allowed slowdown against the baseline (default: the fleet config's, else 0.15)")
    p.add_argument("--config", default=fleetconfig.CONFIG_FILE, help="the fleet config written by the flake")
    p.add_argument("--dir", default=gate.BENCH_DIR, help="baseline.json and history.jsonl live here")
    p.add_argument("--rebaseline", action="store_true",
                   help="take a new baseline of several runs (the old one is kept in the history)")
    p.add_argument("--baseline-runs", type=int, help="runs a new baseline holds (default 3)")
    p.add_argument("--lock", help="flock this file while measuring (hosts sharing one machine)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--textfile", help="also write node-exporter textfile metrics to this file")
    return p


def _error(text: str) -> int:
    print(f"ipex-fleet bench: error: {text}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tolerance is None:
        try:
            config = fleetconfig.load(args.config)
        except fleetconfig.FleetConfigError as exc:
            return _error(f"{args.config}: {exc}")
        args.tolerance = config.health.bench_tolerance if config else fleetconfig.DEFAULTS["health"]["bench_tolerance"]
    if not 0 < args.tolerance < 1:
        return _error("--tolerance must lie between 0 and 1, e.g. 0.15")
    if args.baseline_runs is not None and not 1 <= args.baseline_runs <= 20:
        return _error("--baseline-runs must lie between 1 and 20, e.g. 3")
    if args.threads is not None and args.threads < 1:
        return _error("--threads must be at least 1")
    load_generation_environment()
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    with open(args.lock, "a") if args.lock else nullcontext() as lock:
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        bench = Bench(args.quick, args.only)
        if args.gate or args.rebaseline:
            document = gated(bench, args)
        else:
            document = bench.document([bench.measure(name) for name in bench.cases])
    verdict = (document.get("gate") or {}).get("result", stats.PASS)
    if args.textfile:
        from ipex_fleet.host.metrics import bench_metrics, write

        write(args.textfile, bench_metrics(document))
    if args.json:
        print(json.dumps(document))
    else:
        print(render(document))
    return EXIT.get(verdict, 0)


def gated(bench: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Measure every case once, then: record a baseline of several runs, or judge against it with
    retests of what looks slower; the verdict names the device's other users.

    `bench` is anything with the Bench's interface (plan, cases, device.type, measure, document,
    occupants, and `reference`: the CPU's own speed, or None): the probe's Ollama tokens/s gate
    (probe/tokens.py) is judged here too."""
    bench = WithReference(bench)
    plan = bench.plan
    found = bench.occupants()
    device = bench.document([])["device"]
    baseline = gate.read_baseline(args.dir)
    if args.rebaseline and baseline is not None:
        gate.archive_baseline(args.dir, baseline)  # the old baseline stays in the history
        baseline = None
    ok, why = gate.usable(baseline, device)
    if args.rebaseline:
        why = "--rebaseline"
    known = (baseline or {}).get("cases", {}) if ok else {}
    rounds: dict[str, list[dict[str, Any]]] = {
        name: [bench.measure(name, repeat=(known.get(name) or {}).get("repeat"))] for name in bench.cases}
    new = [name for name in bench.cases if name not in known]
    runs = args.baseline_runs or plan.baseline_runs
    for _ in range(runs - 1):  # a baseline is several runs: more rounds, interleaved across the cases
        for name in new:
            rounds[name].append(bench.measure(name, repeat=rounds[name][0]["repeat"]))
    settled = settle(bench, rounds, new, runs, args.tolerance)
    entries = {name: gate.baseline_case(rounds[name], plan.trim) for name in new}
    for name, dropped in settled.items():
        entries[name]["discarded_runs"] = dropped
    results = {name: _pooled(rounds[name], plan.trim) if name in new else rounds[name][0]
               for name in bench.cases}
    summary: dict[str, Any] = {"tolerance": args.tolerance, "alpha": stats.ALPHA, "trim": plan.trim,
                               "tail": plan.tail, "occupants": found}
    if not ok:
        baseline = gate.new_baseline(bench.document([]), entries, found)
        if bench.readings:
            baseline["reference"] = {"value": sig(statistics.median(bench.readings)), "unit": "bursts/s",
                                     "readings": len(bench.readings)}
        write_json_atomic(Path(args.dir) / "baseline.json", baseline)
        summary.update(result=stats.PASS, baseline_recorded=True, reason=why, baseline_runs=runs,
                       confidence=None, comparisons=[],
                       warnings=baseline_warnings(found, rounds, args.tolerance, plan.trim))
    else:
        if entries:
            baseline = gate.add_cases(baseline, entries)
            write_json_atomic(Path(args.dir) / "baseline.json", baseline)
            summary["warnings"] = baseline_warnings(found, {n: rounds[n] for n in new}, args.tolerance, plan.trim)
        comparisons, retest = judge(bench, baseline, rounds, results, args.tolerance, new)
        verdict = gate.verdict_of(comparisons) if any(c["verdict"] != "baseline" for c in comparisons) else stats.PASS
        if verdict != stats.PASS:  # a neighbour that came during the run is named too
            after = bench.occupants()
            seen = {p["pid"] for p in found.get("processes", [])}
            found["processes"] = found.get("processes", []) + [
                {**p, "seen": "after"} for p in after.get("processes", []) if p["pid"] not in seen]
            if after.get("pressure") is not None:
                found["pressure"] = max(found.get("pressure") or 0.0, after["pressure"])
            if bench.device.type == "cpu" and occupants.contended_from_outside(found):
                verdict = not_ours(comparisons, found)
        # A slower CPU excuses a fail as far as it goes; a busy process of the host's own never does.
        excusable = verdict == stats.FAIL and not found.get("processes")
        speed = bench.cpu_speed(baseline, after=excusable)
        if speed is not None:
            summary["cpu_speed"] = speed
            if excusable and speed["ratio"] < 1 - args.tolerance:
                verdict = cpu_slowed(comparisons, speed["ratio"], args.tolerance)
        summary.update(result=verdict, baseline_recorded=False, baseline_added=new,
                       confidence=gate.confidence_of(comparisons, verdict), comparisons=comparisons, retest=retest)
        if baseline.get("device", {}).get("torch") != device.get("torch"):
            summary["torch_changed"] = {"baseline": baseline["device"].get("torch"), "now": device.get("torch")}
    shared = occupants.describe(found)
    if shared:
        summary["shared"] = shared
    document = bench.document([results[n] for n in bench.cases])
    document["gate"] = summary
    gate.append_history(args.dir, document, summary["result"])
    return document


def not_ours(comparisons: list[dict[str, Any]], found: dict[str, Any]) -> str:
    """A CPU slowed while the kernel reports contention that no process of this host explains: each
    failing case becomes inconclusive (the slowdown is real, its cause is not this host's: another
    container or VM on the same kernel). A process of the host's own, such as a hog the generation
    started, is listed and keeps the fail."""
    for c in comparisons:
        if c["verdict"] == stats.FAIL:
            c.update(verdict=stats.INCONCLUSIVE, contended=True, message=c["message"] + (
                f"; the CPU was contended from outside this host (some task waited {found['pressure']:.0%} "
                f"of {occupants.over(found)}, no process of its own busy)"))
    return gate.verdict_of(comparisons)


class WithReference:
    """A bench whose every round is preceded by a reading of the CPU's own speed (bench/reference.py),
    where the bench offers one (a CPU run)."""

    def __init__(self, bench: Any) -> None:
        self.bench = bench
        self.read = getattr(bench, "reference", None)
        self.readings: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bench, name)

    def measure(self, name: str, repeat: int | None = None) -> dict[str, Any]:
        if self.read is not None:
            self.readings.append(self.read())
        return self.bench.measure(name, repeat=repeat)

    def cpu_speed(self, baseline: dict[str, Any], after: bool) -> dict[str, Any] | None:
        """This run's slowest reading against the baseline's (one more reading `after` the rounds), or
        None where either has none (a GPU, a baseline from before the reference)."""
        recorded = (baseline.get("reference") or {}).get("value")
        if not self.readings or not recorded:
            return None
        if after:
            self.readings.append(self.read())
        slowest = min(self.readings)
        return {"baseline": recorded, "slowest": sig(slowest), "readings": len(self.readings),
                "ratio": round(slowest / recorded, 4)}


def cpu_slowed(comparisons: list[dict[str, Any]], speed: float, tolerance: float) -> str:
    """The CPU itself ran slower than when the baseline was taken (a reference task, `speed` of its
    recorded rate), with no process of the host's own to blame: each failing case is judged again with
    that slowdown taken out. One still beyond the tolerance keeps its fail (the CPU does not explain
    it); the others become inconclusive (`cpu_slowed`): slower, but no more than the CPU under them."""
    for c in comparisons:
        if c["verdict"] != stats.FAIL:
            continue
        beyond = c["ci"][1] / speed < 1 - tolerance
        note = (f"; the CPU itself ran at {speed:.0%} of its recorded speed (a fixed reference task: a busy "
                f"sibling thread, steal or a slower clock, which the kernel's pressure does not show), "
                f"{c['ratio'] / speed:.0%} of baseline with that taken out (interval {c['ci'][0] / speed:.0%}-"
                f"{c['ci'][1] / speed:.0%})")
        if beyond:
            c.update(cpu_slowed=speed, message=c["message"] + note + ": slower still")
        else:
            c.update(verdict=stats.INCONCLUSIVE, cpu_slowed=speed, message=c["message"] + note)
    return gate.verdict_of(comparisons)


def _spread(rounds: list[dict[str, Any]], trim: float) -> float:
    means = [stats.trimmed_mean(r["samples"], trim) / r["work"] for r in rounds]
    return max(means) / min(means) - 1.0


def settle(bench: Any, rounds: dict[str, list[dict[str, Any]]], new: list[str], runs: int,
           tolerance: float) -> dict[str, int]:
    """A baseline's runs must agree with each other: a case whose runs differ by more than half the
    tolerance (a transient: another process, a clock that had not settled) gets more runs, at most 2
    more within twice the retest budget, and keeps the `runs` of them that agree best (never simply the
    fastest). Returns how many runs each such case discarded."""
    plan = bench.plan
    deadline = time.monotonic() + 2 * plan.retest_s
    if runs < 2:
        return {}

    def best(taken: list[dict[str, Any]]) -> list[int]:
        """The `runs` of them that agree best (consecutive in order of speed, the narrowest window)."""
        order = sorted(range(len(taken)), key=lambda i: stats.trimmed_mean(taken[i]["samples"], plan.trim))
        return min((order[i:i + runs] for i in range(len(order) - runs + 1)),
                   key=lambda w: _spread([taken[i] for i in w], plan.trim))

    for _ in range(2):
        doubtful = [n for n in new if _spread([rounds[n][i] for i in best(rounds[n])], plan.trim) > tolerance / 2]
        if not doubtful or time.monotonic() >= deadline:
            break
        for name in doubtful:
            if time.monotonic() >= deadline:
                break
            rounds[name].append(bench.measure(name, repeat=rounds[name][0]["repeat"]))
    dropped = {}
    for name in new:
        taken = rounds[name]
        if len(taken) > runs:
            rounds[name] = [taken[i] for i in sorted(best(taken))]
            dropped[name] = len(taken) - runs
    return dropped


def baseline_warnings(found: dict[str, Any], rounds: dict[str, list[dict[str, Any]]],
                      tolerance: float, trim: float) -> list[str]:
    """What makes a new baseline doubtful: a device shared while it was taken (a slow baseline hides
    the regressions after it), or a case whose warm-up never became steady."""
    out = []
    if found.get("processes"):
        out.append(f"the baseline was taken while {occupants.describe(found)}: take it again with --rebaseline "
                   "when the device is free")
    unsteady = sorted({n for n, rs in rounds.items() for r in rs if not r["warmup"]["steady"]})
    if unsteady:
        out.append(f"the warm-up of {', '.join(unsteady)} never became steady within its bound")
    apart = {n: _spread(rs, trim) for n, rs in rounds.items() if len(rs) > 1}
    apart = {n: v for n, v in apart.items() if v > tolerance / 2}
    if apart:
        shown = ", ".join(f"{n} {v:.0%}" for n, v in sorted(apart.items()))
        out.append(f"the baseline's runs disagree ({shown} apart, more than half the tolerance): a busy device? "
                   "take it again with --rebaseline")
    return out


def _pooled(rounds: list[dict[str, Any]], trim: float) -> dict[str, Any]:
    return pooled(rounds, trim) if len(rounds) > 1 else rounds[0]


def judge(bench: Any, baseline: dict[str, Any], rounds: dict[str, list[dict[str, Any]]],
          results: dict[str, dict[str, Any]], tolerance: float,
          new: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each case against the baseline, with retests on suspicion: a case that fails or is inconclusive
    is measured again (a fresh round, its samples pooled with the earlier ones), inconclusive ones
    first, for at most plan.retest_rounds more rounds within plan.retest_s seconds for the whole run.
    A failure is confirmed when it still fails with its retest's samples and the retest alone is not
    within tolerance (one that is: a transient, so inconclusive, and measured again if time is left).
    Retesting stops once a failure is confirmed: the run fails whatever the others say."""
    plan = bench.plan
    cases = baseline["cases"]
    effects = gate.run_effects(baseline, plan.trim)
    judged = {n: gate.compare_one(results[n], cases[n], tolerance, plan.trim, plan.tail, effects)
              for n in bench.cases if n not in new}
    started = time.monotonic()
    deadline = started + plan.retest_s
    retested: list[str] = []
    for _ in range(plan.retest_rounds):
        if any(c["verdict"] == stats.FAIL and len(rounds[n]) > 1 for n, c in judged.items()):
            break  # a confirmed failure
        suspicious = ([n for n, c in judged.items() if c["verdict"] == stats.INCONCLUSIVE] +
                      [n for n, c in judged.items() if c["verdict"] == stats.FAIL])
        if not suspicious or time.monotonic() >= deadline:
            break
        for name in suspicious:
            if time.monotonic() >= deadline:
                break
            rounds[name].append(bench.measure(name, repeat=rounds[name][0]["repeat"]))
            results[name] = _pooled(rounds[name], plan.trim)
            seen_transient = judged[name].get("transient")
            judged[name] = gate.compare_one(results[name], cases[name], tolerance, plan.trim, plan.tail, effects)
            if seen_transient:
                judged[name]["transient"] = True
            retested.append(name)
            if judged[name]["verdict"] == stats.FAIL:
                alone = gate.compare_one(rounds[name][-1], cases[name], tolerance, plan.trim, plan.tail, effects)
                if alone["verdict"] == stats.PASS:  # the new round alone is within tolerance: a transient?
                    judged[name].update(verdict=stats.INCONCLUSIVE, transient=True, message=judged[name]["message"]
                                        + "; not confirmed: its retest alone was within tolerance")
                else:
                    break  # confirmed: the next round's check ends the retests
    comparisons = [judged.get(n) or {"name": n, "verdict": "baseline",
                                     "message": "no baseline for this case yet: this run's rounds are its baseline"}
                   for n in bench.cases]
    return comparisons, {"cases": retested, "seconds": round(time.monotonic() - started, 3),
                         "budget_s": plan.retest_s, "max_rounds": plan.retest_rounds}


def render(document: dict[str, Any]) -> str:
    """The human output: each case with its spread and, gated, its verdict; then the run's verdict."""
    gate_doc = document.get("gate") or {}
    by_name = {c["name"]: c for c in gate_doc.get("comparisons", [])}
    lines = []
    for r in document["results"]:
        eff = f"  {r['efficiency']:.0%} of peak" if "efficiency" in r else ""
        line = f"{r['name']:<22} {r['value']:>11.4g} {r['unit']:<8} cv {r['cv']:>5.1%} n {r['runs']:<3}{eff}"
        c = by_name.get(r["name"])
        if c and c.get("ratio") is not None:
            line += (f"  {c['verdict']:<12} {c['ratio']:.0%} of baseline [{c['ci'][0]:.0%}, {c['ci'][1]:.0%}]"
                     f" confidence {c['confidence']:.1%}")
        elif c:
            line += "  baseline recorded"
        lines.append(line)
    if gate_doc:
        if gate_doc.get("baseline_recorded"):
            lines.append(f"gate: pass (baseline recorded: {gate_doc.get('reason')}; "
                         f"{gate_doc.get('baseline_runs')} runs per case)")
        else:
            conf = gate_doc.get("confidence")
            shown = f" (confidence {conf:.1%})" if conf is not None else ""
            lines.append(f"gate: {gate_doc['result']}{shown}, tolerance {gate_doc['tolerance']:.0%}, "
                         f"false-alarm rate {gate_doc['alpha']:.1%} per case")
        if gate_doc.get("shared"):
            lines.append(gate_doc["shared"])
        lines += [f"warning: {w}" for w in gate_doc.get("warnings") or []]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
