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
  finished). Its data is the host agent's (`agent.deploy_metrics`): at each deploy the agent writes the
  same file itself, in the commit's call (`commit --metrics-dir`) or with `agent.py metrics`.

Files are written with prometheus_client's `write_to_textfile` (a temporary file renamed into place),
so node_exporter never reads half a file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from ipex_fleet.host import agent
from ipex_fleet.host.nixprofile import STATE_DIR, SYSTEM_PROFILE

TEXTFILE_DIR = "/var/lib/prometheus-node-exporter-text"
CHECK_STATES = ("pass", "warn", "fail", "skip")
BENCH_VERDICTS = ("pass", "fail", "inconclusive")


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


def host_metrics(state_dir: str = STATE_DIR, profile: str = SYSTEM_PROFILE, root: str = "/") -> list[Any]:
    """The deployment as this host records it (deploys.jsonl, the profile, /run, the open intent): the host
    agent's data (agent.deploy_metrics, which the agent itself writes after each commit), as families."""
    return families_of(agent.deploy_metrics(state_dir, profile, root))


def families_of(data: list[Any]) -> list[Any]:
    """prometheus_client's families of the agent's (name, help, "gauge" or "info", [(labels, value)])."""
    families: list[Any] = []
    for name, doc, kind, samples in data:
        if kind == "info":
            info = InfoMetricFamily(name, doc)
            for labels, _one in samples:
                info.add_metric([], labels)
            families.append(info)
            continue
        names = sorted(samples[0][0]) if samples else []
        gauge = GaugeMetricFamily(name, doc, labels=names)
        for labels, value in samples:
            gauge.add_metric([labels[n] for n in names], value)
        families.append(gauge)
    return families


DEPLOY_FILE = agent.DEPLOY_FILE


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
