"""Level 2's tokens/s gate (probe/tokens.py) against scripted generations: the benchmark's own gate
(bench/__main__.gated, bench.stats.decide) records a baseline on a healthy run, then passes a model as
fast as it was, fails one clearly slower (the model, the figures, the ratio, the device's other users
named), and calls one at the tolerance's edge with noisy samples inconclusive, after its retests."""

from __future__ import annotations

import json
import random

import pytest

from ipex_fleet.host.bench import stats
from ipex_fleet.host.probe import tokens
from ipex_fleet.host.probe.model import Result

MODEL = "smollm2:135m"
DIGEST = "0123456789abcdef" * 4
CPU = {"type": "cpu", "name": "lab cpu", "count": 1, "threads": 2}
PER_TOKEN = 0.01  # seconds per token of the healthy model


def generations(slower: float = 1.0, cv: float = 0.02, seed: int = 1):
    """A scripted Ollama: each generation's eval_count and eval_duration (ns), `slower` times the
    healthy model's seconds per token, with normal noise of `cv`."""
    rng = random.Random(seed)
    calls = []

    def generate() -> tuple[int, int]:
        calls.append(1)
        per_token = PER_TOKEN * slower * max(0.05, 1 + rng.gauss(0, cv))
        return tokens.TOKENS, int(per_token * tokens.TOKENS * 1e9)

    generate.calls = calls
    return generate


@pytest.fixture
def cpu(monkeypatch):
    """The CPU's own speed as the test says (bench/reference.py; the machine's would be its load's)."""
    speed = {"now": 250.0}
    monkeypatch.setattr(tokens.reference, "cpu_speed", lambda: speed["now"])
    return speed


@pytest.fixture
def quiet(monkeypatch, cpu):
    """The device's other users as the test says (the machine's own would make the verdicts its load's)."""
    listing = {"processes": [], "pressure": 0.0}
    monkeypatch.setattr(tokens.Generations, "occupants", lambda self: json.loads(json.dumps(listing)))
    return listing


def judge(tmp_path, generate, **kw):
    return tokens.judge(MODEL, generate, device=CPU, bench_dir=str(tmp_path), tolerance=0.15, digest=DIGEST, **kw)


def recorded(tmp_path) -> dict:
    return json.loads((tmp_path / "ollama" / "baseline.json").read_text())


def test_a_baseline_is_recorded_on_the_first_healthy_run_only(tmp_path, quiet):
    unhealthy = judge(tmp_path, generations(), healthy=False)
    assert unhealthy.result is Result.SKIP and "no tokens/s baseline recorded" in unhealthy.message
    assert not (tmp_path / "ollama" / "baseline.json").exists()
    first = judge(tmp_path, generations())
    assert first.result is Result.PASS and first.data["gate"]["baseline_recorded"] is True
    assert "its tokens/s baseline recorded (no baseline yet: 3 rounds, 30 generations)" in first.message
    case = recorded(tmp_path)["cases"][f"{MODEL}@{DIGEST[:12]}"]
    assert len(case["runs"]) == 3 and all(len(r) == tokens.SAMPLES for r in case["runs"])
    assert case["unit"] == "tokens/s" and 95 < case["value"] < 105  # 1 / 0.01 s per token


def test_as_fast_as_recorded_passes_and_clearly_slower_fails_naming_the_figures(tmp_path, quiet):
    judge(tmp_path, generations(seed=1))
    ok = judge(tmp_path, generations(seed=2))
    assert ok.result is Result.PASS, ok.message
    gate = ok.data["gate"]
    assert gate["result"] == stats.PASS and 0.9 < gate["ratio"] < 1.1 and gate["p_slower"] <= stats.ALPHA
    assert ok.message.startswith(f"{MODEL}: ") and "% of the " in ok.message and "within 15%" in ok.message

    quiet["processes"] = [{"pid": 4242, "name": "python3 train.py", "memory_mib": 900}]
    slow = generations(slower=2.0, seed=3)
    bad = judge(tmp_path, slow)
    assert bad.result is Result.FAIL
    gate = bad.data["gate"]
    assert gate["result"] == stats.FAIL and 0.45 < gate["ratio"] < 0.55 and gate["ci"][1] < 0.85
    assert gate["confidence"] >= 1 - stats.ALPHA and gate["rounds"] == 2  # confirmed by one retest
    assert bad.message.startswith(f"{MODEL} generates {gate['value']:.1f} tokens/s, {gate['ratio']:.0%} of the "
                                  f"{gate['baseline']:.1f} tokens/s recorded on this host (interval ")
    assert "P(slower than 85% of it) 100.0%" in bad.message and "slower than the tolerance 15%" in bad.message
    assert bad.message.endswith("the device is shared with pid 4242 python3 train.py 900 MiB")
    history = (tmp_path / "ollama" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["verdict"] for line in history] == ["pass", "pass", "fail"]


def test_noisy_samples_at_the_tolerances_edge_are_inconclusive_after_retests(tmp_path, quiet):
    judge(tmp_path, generations(seed=1))
    noisy = generations(slower=1 / 0.85, cv=0.3, seed=5)
    unsure = judge(tmp_path, noisy)
    assert unsure.result is Result.WARN, unsure.message
    gate = unsure.data["gate"]
    assert gate["result"] == stats.INCONCLUSIVE and stats.ALPHA < gate["p_slower"] < 1 - stats.ALPHA
    assert gate["rounds"] == 1 + tokens.RETEST_ROUNDS  # measured again, and still not clear either way
    assert unsure.message.startswith(f"{MODEL}: tokens/s inconclusive (too noisy to tell): ")


def test_a_cpu_slowed_by_contention_from_outside_is_inconclusive(tmp_path, quiet):
    judge(tmp_path, generations(seed=1))
    quiet["pressure"] = 0.6  # the kernel reports waiting, and no process of this host is busy
    unsure = judge(tmp_path, generations(slower=2.0, seed=6))
    assert unsure.result is Result.WARN and unsure.data["gate"]["contended"] is True
    assert "inconclusive (the CPU was contended from outside this host)" in unsure.message
    assert "the CPU is contended (some task waited 60% of the last 10 s)" in unsure.message  # as listed here


def test_a_cpu_slowed_as_a_whole_excuses_a_slowdown_only_as_far_as_it_goes(tmp_path, quiet, cpu):
    """A busy sibling thread of the same core (a VM's two vCPUs), steal or a slower clock: no task waits,
    so the kernel's pressure stays low, yet every task runs slower. The reference task sees it."""
    judge(tmp_path, generations(seed=1))
    assert recorded(tmp_path)["reference"] == {"value": 250.0, "unit": "bursts/s", "readings": 3}
    cpu["now"] = 140.0  # the CPU at 56 % of its recorded speed, no pressure, no process of the host's own
    healthy = judge(tmp_path, generations(slower=1 / 0.56, seed=7))  # the healthy model, as slowed as the CPU
    gate = healthy.data["gate"]
    assert healthy.result is Result.WARN and gate["result"] == stats.INCONCLUSIVE, healthy.message
    assert gate["cpu_slowed"] == 0.56 and 0.5 < gate["ratio"] < 0.62 and "contended" not in gate
    assert healthy.message.startswith(f"{MODEL}: tokens/s inconclusive (the CPU itself ran at 56% of its recorded "
                                      "speed): ")

    slower_still = judge(tmp_path, generations(slower=4 / 0.56, seed=8))  # a model 4x slower on that CPU
    gate = slower_still.data["gate"]
    assert slower_still.result is Result.FAIL and gate["cpu_slowed"] == 0.56 and gate["ratio"] < 0.2
    assert slower_still.message.endswith("the CPU itself ran at 56% of its recorded speed, which does not explain it")

    quiet["processes"] = [{"pid": 77, "name": "python3 cpu-hog.py", "cpu": 0.9}]  # the host's own: no excuse
    own = judge(tmp_path, generations(slower=1 / 0.56, seed=9))
    assert own.result is Result.FAIL and "cpu_slowed" not in own.data["gate"], own.message

    quiet["processes"] = []
    cpu["now"] = 240.0  # the CPU itself again: a model half as fast fails as it always did
    plain = judge(tmp_path, generations(slower=2.0, seed=10))
    assert plain.result is Result.FAIL and "cpu_slowed" not in plain.data["gate"], plain.message


def test_other_weights_or_a_rebaseline_record_anew(tmp_path, quiet):
    judge(tmp_path, generations(seed=1))
    other = tokens.judge(MODEL, generations(slower=2.0), device=CPU, bench_dir=str(tmp_path), tolerance=0.15,
                         digest="f" * 64)
    assert other.result is Result.PASS and other.data["gate"]["baseline_recorded"] is True  # another model
    assert sorted(recorded(tmp_path)["cases"]) == [f"{MODEL}@{DIGEST[:12]}", f"{MODEL}@{'f' * 12}"]
    again = judge(tmp_path, generations(slower=2.0, seed=7), rebaseline=True)
    assert again.result is Result.PASS and "--rebaseline" in again.message
    assert judge(tmp_path, generations(slower=2.0, seed=8)).result is Result.PASS  # the new baseline judges now
    history = [json.loads(line) for line in (tmp_path / "ollama" / "history.jsonl").read_text().splitlines()]
    assert "rebaselined" in [h["verdict"] for h in history]  # the old baseline kept in the history


def test_a_generation_without_figures_is_an_error_not_a_sample():
    class Server:
        def __call__(self, url, body, timeout):
            return {"eval_count": 0, "eval_duration": 5}

    import ipex_fleet.host.probe.tokens as module

    original = module.request
    module.request = Server()
    try:
        with pytest.raises(ValueError, match="reported no eval_count/eval_duration"):
            tokens.ollama_generate("http://127.0.0.1:1", MODEL)()
    finally:
        module.request = original


def test_a_baseline_whose_rounds_disagree_says_so(tmp_path, quiet):
    """A model that keeps slowing while its baseline is taken (each generation 3 % slower than the last):
    its rounds are measured again, still disagree, and the check's line says the baseline is doubtful."""
    n = [0]

    def drifting() -> tuple[int, int]:
        n[0] += 1
        return tokens.TOKENS, int(PER_TOKEN * 1.03 ** n[0] * tokens.TOKENS * 1e9)

    first = judge(tmp_path, drifting)
    assert first.result is Result.PASS and first.data["gate"]["baseline_recorded"] is True
    assert "; warning: the baseline's runs disagree (smollm2:135m@0123456789ab " in first.message
    assert "take it again with --rebaseline" in first.message


def test_contention_is_the_kernels_pressure_over_the_measurement_itself(monkeypatch):
    """On a CPU the other users' pressure is the share of the measurement in which some task waited (PSI
    `total`, from the first listing on), not the last 10 s (the probe's own checks just before it)."""
    from types import SimpleNamespace

    from ipex_fleet.host.bench import occupants

    clock = iter([100.0, 100.25, 102.25, 102.25])  # first listing (0.25 s), then after 2 s of measuring
    stalls = iter([0, 50_000, 450_000, 450_000])
    monkeypatch.setattr(tokens, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setattr(tokens, "stall_us", lambda: next(stalls))
    monkeypatch.setattr(occupants, "scan", lambda kind: {"processes": [{"pid": 1, "name": "x", "cpu": 0.5}],
                                                          "pressure": 0.9})
    g = tokens.Generations.__new__(tokens.Generations)
    g.device, g.unit, g._stall = SimpleNamespace(type="cpu"), None, None
    assert g.occupants()["pressure"] == 0.2  # 50 ms of waiting in its own 0.25 s
    found = g.occupants()
    assert found["pressure"] == 0.2  # 450 ms in the 2.25 s since the first listing
    assert occupants.describe(found).endswith("the CPU is contended (some task waited 20% of the time it measured)")
