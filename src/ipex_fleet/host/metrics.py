"""Prometheus textfile metrics, as node_exporter's textfile collector reads them.

Conventions (REFERENCE.md, "Metric names that monitoring already knows"): the prefix `ipex_fleet_`,
unit suffixes, `_info` gauges that carry identity as labels, and a check's result as a state set
(`{result="pass"} 1`, one series per state), never a magic number.

- `probe_metrics`: each check's state, the probe's success and time, each device's memory and
  temperature where torch or sysfs gave them.
- `bench_metrics`: each benchmark case's value, and its ratio to the baseline with the tolerance;
  gated, the verdict (run and case, as state sets), its confidence, each case's interval and
  probability of being slower than the tolerance, and how many other processes used the device.
- `host_metrics` (`ipex-fleet metrics`): the deployment as the host records it: the deployed
  generation, toplevel and run (`_info`), the last good generation beside the current one, the last
  deploy's failure, a pending reboot, boots that fell back, and an open intent (a run that never
  finished).

Files are written with prometheus_client's `write_to_textfile` (a temporary file renamed into place),
so node_exporter never reads half a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from ipex_fleet.host.nixprofile import BOOT_LINKS, STATE_DIR, SYSTEM_PROFILE, parse_profile_state

TEXTFILE_DIR = "/var/lib/prometheus-node-exporter-text"
CHECK_STATES = ("pass", "warn", "fail", "skip")
BENCH_VERDICTS = ("pass", "fail", "inconclusive")
GOOD = ("ok", "unchanged")


class _Families(Collector):
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterable[Any]:
        return iter(self.families)


def write(path: str, families: list[Any]) -> None:
    """Write these metric families to `path` atomically."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(path, registry)


def probe_metrics(document: dict[str, Any]) -> list[Any]:
    host = str(document.get("host") or "")
    checks = GaugeMetricFamily("ipex_fleet_check_result", "Each probe check's result, as a state set.",
                               labels=["check", "level", "result"])
    for c in document.get("checks", []):
        for state in CHECK_STATES:
            checks.add_metric([c["name"], str(c["level"]), state], 1.0 if c["result"] == state else 0.0)
    success = GaugeMetricFamily("ipex_fleet_probe_success", "1 when the probe passed (warnings allowed).",
                                value=0.0 if document.get("result") == "fail" else 1.0)
    level = GaugeMetricFamily("ipex_fleet_probe_level", "The highest level the probe ran.",
                              value=float(document.get("level") or 0))
    duration = GaugeMetricFamily("ipex_fleet_probe_duration_seconds", "How long the probe took.",
                                 value=float(document.get("duration_s") or 0))
    stamp = GaugeMetricFamily("ipex_fleet_probe_timestamp_seconds", "When the probe ran (Unix time).",
                              value=time.time())
    families = [checks, success, level, duration, stamp]
    acc = document.get("accelerator") or {}
    info = InfoMetricFamily("ipex_fleet_accelerator", "The accelerator the probe saw.",
                            value={"type": str(acc.get("type") or "none"), "count": str(acc.get("count") or 0),
                                   "torch": str(acc.get("torch") or ""), "host": host})
    families.append(info)
    total = GaugeMetricFamily("ipex_fleet_device_memory_total_bytes", "Device memory, where known.",
                              labels=["device", "name"])
    used = GaugeMetricFamily("ipex_fleet_device_memory_used_bytes", "Device memory in use, where known.",
                             labels=["device", "name"])
    temp = GaugeMetricFamily("ipex_fleet_device_temperature_celsius", "Device temperature, where known.",
                             labels=["device", "name"])
    for d in acc.get("devices") or []:
        labels = [str(d.get("index") if d.get("index") is not None else 0), str(d.get("name") or "")]
        if d.get("total_memory") is not None:
            total.add_metric(labels, float(d["total_memory"]))
        if d.get("memory_used") is not None:
            used.add_metric(labels, float(d["memory_used"]))
        if d.get("temperature_c") is not None:
            temp.add_metric(labels, float(d["temperature_c"]))
    return families + [f for f in (total, used, temp) if f.samples]


def bench_metrics(document: dict[str, Any]) -> list[Any]:
    device = document.get("device") or {}
    dev = [str(device.get("type") or ""), str(device.get("name") or "")]
    value = GaugeMetricFamily("ipex_fleet_benchmark_value", "Each benchmark case's result, in its unit.",
                              labels=["case", "metric", "unit", "accelerator", "device"])
    for r in document.get("results", []):
        value.add_metric([r["name"], r["metric"], r["unit"], *dev], float(r["value"]))
    families = [value]
    gate = document.get("gate") or {}
    if gate.get("comparisons"):
        ratio = GaugeMetricFamily("ipex_fleet_benchmark_baseline_ratio",
                                  "Each case's value over its baseline (1 is the baseline; higher is faster).",
                                  labels=["case"])
        for c in gate["comparisons"]:
            if c.get("ratio") is not None:
                ratio.add_metric([c["name"]], float(c["ratio"]))
        families.append(ratio)
    if gate.get("tolerance") is not None:
        families.append(GaugeMetricFamily("ipex_fleet_benchmark_tolerance_ratio",
                                          "The slowdown against the baseline that the gate allows.",
                                          value=float(gate["tolerance"])))
    if gate.get("result") in BENCH_VERDICTS:
        verdict = GaugeMetricFamily("ipex_fleet_benchmark_verdict",
                                    "The benchmark gate's verdict, as a state set (pass, fail, inconclusive).",
                                    labels=["result"])
        for state in BENCH_VERDICTS:
            verdict.add_metric([state], 1.0 if gate["result"] == state else 0.0)
        families.append(verdict)
    if gate.get("confidence") is not None:
        families.append(GaugeMetricFamily("ipex_fleet_benchmark_confidence_ratio",
                                          "How sure the gate is of its verdict (0 to 1).",
                                          value=float(gate["confidence"])))
    judged = [c for c in gate.get("comparisons") or [] if c.get("verdict") in BENCH_VERDICTS]
    if judged:
        case_verdict = GaugeMetricFamily("ipex_fleet_benchmark_case_verdict",
                                         "Each case's verdict against its baseline, as a state set.",
                                         labels=["case", "result"])
        slower = GaugeMetricFamily("ipex_fleet_benchmark_slower_probability",
                                   "Each case's probability of being slower than the baseline past the tolerance.",
                                   labels=["case"])
        bound = GaugeMetricFamily("ipex_fleet_benchmark_baseline_ratio_bound",
                                  "Each case's interval of value / baseline (the gate's 1 - 2 alpha interval).",
                                  labels=["case", "bound"])
        for c in judged:
            for state in BENCH_VERDICTS:
                case_verdict.add_metric([c["name"], state], 1.0 if c["verdict"] == state else 0.0)
            if c.get("p_slower") is not None:
                slower.add_metric([c["name"]], float(c["p_slower"]))
            if c.get("ci"):
                bound.add_metric([c["name"], "low"], float(c["ci"][0]))
                bound.add_metric([c["name"], "high"], float(c["ci"][1]))
        families += [f for f in (case_verdict, slower, bound) if f.samples]
    if gate.get("occupants") is not None:
        families.append(GaugeMetricFamily("ipex_fleet_benchmark_device_processes",
                                          "Other processes that used the device while the benchmark ran.",
                                          value=float(len(gate["occupants"].get("processes") or []))))
    families.append(GaugeMetricFamily("ipex_fleet_benchmark_timestamp_seconds", "When the benchmark ran.",
                                      value=time.time()))
    return families


def _records(state_dir: str) -> list[dict[str, Any]]:
    try:
        lines = Path(state_dir, "deploys.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a crash: the records before it still count
    return out


def _realpath(path: str) -> str:
    try:
        return os.path.realpath(path) if os.path.lexists(path) else ""
    except OSError:
        return ""


def host_metrics(state_dir: str = STATE_DIR, profile: str = SYSTEM_PROFILE, root: str = "/") -> list[Any]:
    """The deployment as this host records it (deploys.jsonl, the profile, /run, the open intent)."""
    at = lambda p: os.path.join(root, p.lstrip("/"))  # noqa: E731
    records = _records(at(state_dir))
    current_path = _realpath(at("/run/current-system"))
    booted_path = _realpath(at("/run/booted-system"))
    try:
        current_gen = parse_profile_state([f"current {os.readlink(at(profile))}"]).current
    except OSError:
        current_gen = None
    last = records[-1] if records else {}
    good = next((r for r in reversed(records) if r.get("status") in GOOD), None)
    good_final = (good or {}).get("final") or {}

    info = InfoMetricFamily(
        "ipex_fleet_deployment", "The running generation and the last deploy that touched this host.",
        value={"generation": str(current_gen if current_gen is not None else ""),
               "toplevel": current_path, "run_id": str(last.get("run_id") or ""),
               "status": str(last.get("status") or "none"), "phase": str(last.get("phase") or "")})
    families: list[Any] = [info]
    families.append(GaugeMetricFamily("ipex_fleet_current_generation", "The system profile's current generation.",
                                      value=float(current_gen if current_gen is not None else -1)))
    families.append(GaugeMetricFamily(
        "ipex_fleet_good_generation", "The generation the last successful deploy left (ok or unchanged).",
        value=float(good_final.get("generation") if good_final.get("generation") is not None else -1)))
    families.append(GaugeMetricFamily(
        "ipex_fleet_running_good_generation",
        "1 when /run/current-system is the toplevel the last successful deploy left.",
        value=1.0 if good_final.get("path") and good_final.get("path") == current_path else 0.0))
    families.append(GaugeMetricFamily("ipex_fleet_last_deployment_failed",
                                      "1 when the last deploy failed or was rolled back.",
                                      value=1.0 if last and last.get("status") not in GOOD else 0.0))
    try:
        written = os.stat(os.path.join(at(state_dir), "deploys.jsonl")).st_mtime
        families.append(GaugeMetricFamily("ipex_fleet_last_deployment_timestamp_seconds",
                                          "When the host last recorded a deploy.", value=written))
    except OSError:
        pass
    reboot = bool(booted_path and current_path) and any(
        _realpath(os.path.join(booted_path, link)) != _realpath(os.path.join(current_path, link))
        for link in BOOT_LINKS)
    families.append(GaugeMetricFamily("ipex_fleet_need_reboot",
                                      "1 when the running generation's kernel, initrd, modules or firmware "
                                      "differ from the booted one.", value=1.0 if reboot else 0.0))
    fallbacks = sum(1 for r in records if "fell back" in str(r.get("error") or ""))
    families.append(GaugeMetricFamily("ipex_fleet_boot_fallbacks", "Deploys whose reboot came up on the "
                                      "previous generation (boot counting fell back), as recorded.",
                                      value=float(fallbacks)))
    intent = Path(at(state_dir), "intent.json")  # the host agent's open intent
    run = ""
    if intent.is_file():
        try:
            run = str(json.loads(intent.read_text()).get("run_id") or "?")
        except (OSError, ValueError):
            run = "?"
    open_intent = GaugeMetricFamily("ipex_fleet_intent_open", "1 while a deploy's intent is open on the host "
                                    "(a run that never finished, until it or the watchdog resolves it).",
                                    labels=["run_id"])
    open_intent.add_metric([run], 1.0 if intent.is_file() else 0.0)
    families.append(open_intent)
    return families


DEPLOY_FILE = "ipex_fleet_deploy.prom"


def main(argv: list[str] | None = None) -> int:
    """ipex-fleet metrics [--textfile-dir DIR | --print]: the host's deployment metrics."""
    import argparse
    import sys

    from prometheus_client.exposition import generate_latest

    p = argparse.ArgumentParser(prog="ipex-fleet metrics", description=main.__doc__)
    p.add_argument("--textfile-dir", default=TEXTFILE_DIR, help=f"node_exporter's textfile directory (default {TEXTFILE_DIR})")
    p.add_argument("--print", action="store_true", help="print the metrics instead of writing the file")
    args = p.parse_args(argv)
    families = host_metrics()
    if args.print:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(families))
        sys.stdout.write(generate_latest(registry).decode())
    else:
        try:
            write(os.path.join(args.textfile_dir, DEPLOY_FILE), families)
        except OSError as exc:
            print(f"ipex-fleet metrics: error: cannot write {args.textfile_dir}: {exc.strerror}; "
                  "give a writable --textfile-dir", file=sys.stderr)
            return 1
    return 0
