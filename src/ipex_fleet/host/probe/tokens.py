"""Level 2's tokens/s gate: an Ollama model against the tokens/s recorded on this host, judged by the
benchmark's own gate.

Samples, as the benchmark takes them: after the smoke generation, a warm-up generation (more while
they disagree, a few seconds at most), then a round of short generations (TOKENS tokens each, the
same prompt, seed and temperature 0), each one a sample in Ollama's own figures: eval_duration /
eval_count, seconds per token (prompt evaluation and loading left out). A round is SAMPLES of them,
or as many as WINDOW_S allows (at least MIN_SAMPLES).

The baseline lives next to the benchmark's, in `<bench dir>/ollama/` (`baseline.json`,
`history.jsonl`): one case per model and manifest digest (`llama3.2:1b@0123456789ab`: other weights
are another model), three rounds, recorded on the host's first healthy level-2 probe (no check failed
before this one) and again with `--rebaseline` (`ipex-fleet maintain --rebaseline` asks for it with
the benchmark's). A model the baseline does not know yet is added the same way.

The decision is the benchmark's (bench/__main__.gated: bench.stats.decide on the 20 %-trimmed mean, no
tail statistic): `fail` only when a slowdown beyond the tolerance is established (P(slower) at least
99.5 %), `pass` when the run is established within it, otherwise `inconclusive`; a case that fails or
is inconclusive is measured again (at most RETEST_ROUNDS rounds within RETEST_S); the device's other
users are listed before and after, Ollama's own processes (its unit's cgroup) left out; on a CPU, a
slowdown while the kernel reports contention (over the measurement itself) that no process of the
host explains is inconclusive. It is
one more comparison at ALPHA (0.5 % at the tolerance's very edge, far less for a healthy model), its
own verdict, apart from the benchmark's cases: a deploy's false-alarm budget is the benchmark's plus
this one's, and noise makes it inconclusive (host data bench_inconclusive decides), never a fail.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from ipex_fleet.host.bench import Plan, gate, reference, sig, stats
from ipex_fleet.host.probe.httpjson import request
from ipex_fleet.host.probe.model import Outcome, failed, passed, skipped, warned

TOKENS = 16  # per generation
PROMPT = "Count from one to twenty."
SAMPLES = 10  # generations per round...
MIN_SAMPLES = 4  # ...at least this many...
WINDOW_S = 3.0  # ...and no more once a round has taken this long
WARMUP_S = 5.0
RETEST_ROUNDS = 2
RETEST_S = 10.0
PLAN = Plan(samples=SAMPLES, sample_s=0.0, window_s=WINDOW_S, warmup_max_s=WARMUP_S, steady_band=0.25, trim=0.2,
            tail=None, baseline_runs=3, retest_rounds=RETEST_ROUNDS, retest_s=RETEST_S, graphs=False)
Generate = Callable[[], tuple[int, int]]  # one generation: (eval_count, eval_duration in ns)


def ollama_generate(url: str, model: str) -> Generate:
    def generate() -> tuple[int, int]:
        out = request(f"{url}/api/generate", {"model": model, "prompt": PROMPT, "stream": False,
                                               "options": {"num_predict": TOKENS, "seed": 1, "temperature": 0}},
                      timeout=120)
        count, took = out.get("eval_count"), out.get("eval_duration")
        if not isinstance(count, int) or not isinstance(took, int) or count <= 0 or took <= 0:
            raise ValueError(f"a generation reported no eval_count/eval_duration ({count!r}/{took!r})")
        return count, took
    return generate


def in_unit(pid: int, unit: str | None) -> bool:
    """Whether the process runs in the systemd unit's cgroup (the service measured is no neighbour)."""
    if not unit:
        return False
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    return any(line.rsplit(":", 1)[-1].rstrip("/").endswith("/" + unit) for line in lines)


def stall_us(path: str = "/proc/pressure/cpu") -> int | None:
    """The kernel's running total of microseconds in which some task waited for a CPU (PSI `some`)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("some "):
                return int(dict(f.split("=", 1) for f in line.split()[1:])["total"])
    except (OSError, ValueError, KeyError):
        pass
    return None


class Generations:
    """One Ollama model seen through the benchmark's interface (bench/__main__.gated): one case, each
    round a series of short generations, each a sample of seconds per token."""

    def __init__(self, name: str, generate: Generate, device: dict[str, Any], unit: str | None = None) -> None:
        self.plan = PLAN
        self.cases = {name: None}
        self.generate = generate
        self.device_info = device
        self.device = argparse.Namespace(type=device["type"])
        self.unit = unit
        self.started = time.monotonic()
        self.warmed: dict[str, Any] | None = None
        self._stall: tuple[int | None, float] | None = None
        # The CPU's own speed, read before each round (bench/reference.py), where the model runs on the CPU.
        self.reference = reference.cpu_speed if device["type"] == "cpu" else None

    def occupants(self) -> dict[str, Any]:
        """The device's other users, Ollama's own processes left out; on a CPU the kernel's pressure over
        the measurement itself (since the first listing), not its last 10 s: the probe's own checks
        just before would count as contention from outside."""
        from ipex_fleet.host.bench import occupants

        stalled, since = stall_us(), time.monotonic()
        found = occupants.scan(self.device.type)
        found["processes"] = [p for p in found.get("processes", []) if not in_unit(p["pid"], self.unit)]
        if self._stall is None:
            self._stall = (stalled, since)  # the first listing: its own short window
        else:
            stalled, since = self._stall
        now = stall_us()
        if found.get("pressure") is not None and stalled is not None and now is not None:
            found["pressure"] = round(min(1.0, (now - stalled) / 1e6 / max(time.monotonic() - since, 1e-3)), 3)
            found["pressure_over"] = "the time it measured"
        return found

    def _warm_up(self) -> dict[str, Any]:
        """Generations until the last two agree within the plan's band, a few seconds at most."""
        started, seen = time.monotonic(), []
        while True:
            count, took = self.generate()
            seen.append(took / count)
            if len(seen) >= 2 and max(seen[-2:]) / min(seen[-2:]) - 1 <= self.plan.steady_band:
                return {"seconds": round(time.monotonic() - started, 3), "samples": len(seen), "steady": True}
            if time.monotonic() - started >= self.plan.warmup_max_s:
                return {"seconds": round(time.monotonic() - started, 3), "samples": len(seen), "steady": False}

    def measure(self, name: str, repeat: int | None = None) -> dict[str, Any]:
        warmup = self.warmed = self.warmed or self._warm_up()
        samples: list[float] = []
        deadline = time.monotonic() + self.plan.window_s
        while len(samples) < self.plan.samples and (len(samples) < MIN_SAMPLES or time.monotonic() < deadline):
            count, took = self.generate()
            samples.append(took / 1e9 / count)
        return {"name": name, "dtype": "", "shape": f"{TOKENS} tokens", "metric": "tokens/s",
                "value": sig(1.0 / stats.trimmed_mean(samples, self.plan.trim)), "unit": "tokens/s",
                "runs": len(samples), "median": sig(stats.median(samples)), "cv": round(stats.cv(samples), 4),
                "repeat": 1, "work": 1.0, "graph": False, "warmup": warmup,
                "bounds": "Ollama's token generation", "samples": [sig(t) for t in samples]}

    def document(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return {"schema": 2, "device": self.device_info, "quick": True,
                "duration_s": round(time.monotonic() - self.started, 3), "results": results}


def case_name(model: str, digest: str | None) -> str:
    return f"{model}@{digest.removeprefix('sha256:')[:12]}" if digest else model


def _recording(directory: str, name: str, device: dict[str, Any], rebaseline: bool) -> bool:
    baseline = gate.read_baseline(directory)
    ok, _ = gate.usable(baseline, device)
    return rebaseline or not ok or name not in (baseline or {}).get("cases", {})


def judge(model: str, generate: Generate, *, device: dict[str, Any], bench_dir: str, tolerance: float,
          digest: str | None = None, unit: str | None = None, rebaseline: bool = False, lock: str | None = None,
          healthy: bool = True) -> Outcome:
    """The model's tokens/s against its recorded samples: pass, fail (the model, the figures, the ratio)
    or inconclusive (a warn; the deploy follows bench_inconclusive). Records the baseline where there is
    none yet (or `rebaseline`), only on a healthy host."""
    from ipex_fleet.host.bench.__main__ import gated  # the benchmark's gate itself: its baseline, retests and verdicts

    name = case_name(model, digest)
    directory = str(Path(bench_dir) / "ollama")
    if not healthy and _recording(directory, name, device, rebaseline):
        return skipped(f"{model}: no tokens/s baseline recorded: a check failed before this one "
                       "(it is recorded on a healthy run)")
    args = argparse.Namespace(dir=directory, rebaseline=rebaseline, baseline_runs=None, tolerance=tolerance)
    with open(lock, "a") if lock else nullcontext() as held:
        if held is not None:
            fcntl.flock(held, fcntl.LOCK_EX)  # hosts sharing one machine measure in turn, as their benchmarks do
        document = gated(Generations(name, generate, device, unit), args)
    summary = document["gate"]
    (result,) = document["results"]
    data: dict[str, Any] = {}
    if summary.get("baseline_recorded") or not summary.get("comparisons") or \
            summary["comparisons"][0].get("ratio") is None:
        data["gate"] = {"result": stats.PASS, "baseline_recorded": True, "value": result["value"],
                        "reason": summary.get("reason") or "a new model", "warnings": summary.get("warnings") or []}
        doubts = "".join(f"; warning: {w}" for w in data["gate"]["warnings"])  # a doubtful baseline says so
        return passed(f"{model}: {result['value']:.1f} tokens/s; its tokens/s baseline recorded "
                      f"({data['gate']['reason']}: {result.get('rounds', 1)} rounds, {result['runs']} generations)"
                      f"{doubts}", **data)
    (c,) = summary["comparisons"]
    verdict = summary["result"]
    data["gate"] = {"result": verdict, "model": model, "value": result["value"], "baseline": c["baseline"],
                    "ratio": c["ratio"], "ci": c["ci"], "p_slower": c["p_slower"], "confidence": c["confidence"],
                    "tolerance": tolerance, "alpha": summary["alpha"], "rounds": c.get("rounds", 1),
                    "samples": c.get("samples"), "retest": summary.get("retest"), "shared": summary.get("shared"),
                    **({"contended": True} if c.get("contended") else {}),
                    **({"cpu_slowed": c["cpu_slowed"]} if c.get("cpu_slowed") else {}),
                    **({"transient": True} if c.get("transient") else {})}
    figures = (f"{result['value']:.1f} tokens/s, {c['ratio']:.0%} of the {c['baseline']:.1f} tokens/s recorded on "
               f"this host (interval {c['ci'][0]:.0%}-{c['ci'][1]:.0%}; P(slower than {1 - tolerance:.0%} of it) "
               f"{c['p_slower']:.1%}; {c.get('samples')} generations in {c.get('rounds', 1)} round(s))")
    shared = f"; {summary['shared']}" if summary.get("shared") else ""
    if verdict == stats.FAIL:
        slowed = (f"; the CPU itself ran at {c['cpu_slowed']:.0%} of its recorded speed, which does not explain it"
                  if c.get("cpu_slowed") else "")
        return failed(f"{model} generates {figures}: slower than the tolerance {tolerance:.0%}{slowed}{shared}", **data)
    if verdict == stats.INCONCLUSIVE:
        why = ("the CPU was contended from outside this host" if c.get("contended")
               else f"the CPU itself ran at {c['cpu_slowed']:.0%} of its recorded speed" if c.get("cpu_slowed")
               else "its retest alone was within tolerance" if c.get("transient") else "too noisy to tell")
        return warned(f"{model}: tokens/s inconclusive ({why}): {figures}{shared}", **data)
    return passed(f"{model}: {figures}, within {tolerance:.0%}", **data)


def device_of(scratch: dict[str, Any], on_accelerator: bool) -> dict[str, Any]:
    """What the model runs on, as the baseline records it (another device, another baseline): the
    accelerator torch sees where Ollama holds the model in device memory, else the CPU."""
    device = scratch.get("device")
    props = scratch.get("devices") or []
    if device is not None and device.type != "cpu" and on_accelerator:
        return {"type": device.type, "name": props[0].get("name") if props else device.type, "count": len(props),
                "threads": None}
    name = props[0].get("name") if device is not None and device.type == "cpu" and props else "cpu"
    return {"type": "cpu", "name": name, "count": 1, "threads": os.cpu_count()}
