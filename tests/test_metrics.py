"""The host's deployment metrics (`ipex-fleet metrics`), read from a host's own records, profile and
/run, as node_exporter's textfile collector serves them; parsed with prometheus_client's parser."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ipex_fleet.host import metrics


def _system(root: Path, name: str, kernel: str) -> Path:
    """A toplevel whose kernel link points at the store path of that kernel version (shared)."""
    linux = root / "nix/store" / f"linux-{kernel}"
    linux.mkdir(parents=True, exist_ok=True)
    store = root / "nix/store" / name
    store.mkdir(parents=True, exist_ok=True)
    if not (store / "kernel").is_symlink():
        (store / "kernel").symlink_to(linux)
    return store


def host(tmp_path: Path, **state) -> dict:
    """The metrics of a host in this state (host_root), as written and parsed back."""
    root = host_root(tmp_path, **state)
    out = tmp_path / "out" / metrics.DEPLOY_FILE
    metrics.write(str(out), metrics.host_metrics(root=str(root)))
    parsed = {}
    for family in text_string_to_metric_families(out.read_text()):
        for s in family.samples:
            parsed[s.name] = s
    return parsed


def host_root(tmp_path: Path, *, records: list, current: int, booted_kernel: str = "6.12", intent: str | None = None,
              torn: bool = False) -> Path:
    """A host's root: generations 1 to 9 (9 with another kernel), the profile on `current`, the booted system
    with `booted_kernel`, the state directory with these records (and a torn last line) and an open intent."""
    root = tmp_path / "root"
    systems = {n: _system(root, f"gen{n}", "6.12" if n < 9 else "6.13") for n in range(1, 10)}
    profiles = root / "nix/var/nix/profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    for n, path in systems.items():
        (profiles / f"system-{n}-link").symlink_to(path)
    (profiles / "system").symlink_to(f"system-{current}-link")
    run = root / "run"
    run.mkdir()
    (run / "current-system").symlink_to(systems[current])
    booted = _system(root, "booted", booted_kernel)
    (run / "booted-system").symlink_to(booted)
    state = root / "var/lib/ipex-fleet"
    state.mkdir(parents=True)
    lines = [json.dumps(r) for r in records] + (['{"status": "ok", "fin'] if torn else [])
    (state / "deploys.jsonl").write_text("\n".join(lines) + "\n")
    if intent:
        (state / "intent.json").write_text(json.dumps({"intent_id": f"{intent}-1", "run_id": intent}) + "\n")
    return root


def rec(status: str, gen: int, root_hint: str = "", error: str | None = None, run: str = "r1") -> dict:
    return {"run_id": run, "status": status, "final": {"generation": gen, "path": root_hint}, "error": error,
            "phase": "deploy"}


def test_a_host_on_its_good_generation(tmp_path):
    path = str(tmp_path / "root/nix/store/gen4")
    m = host(tmp_path, records=[rec("ok", 3, str(tmp_path / "root/nix/store/gen3")), rec("ok", 4, path)], current=4)
    assert m["ipex_fleet_current_generation"].value == 4 and m["ipex_fleet_good_generation"].value == 4
    assert m["ipex_fleet_running_good_generation"].value == 1
    assert m["ipex_fleet_last_deployment_failed"].value == 0
    assert m["ipex_fleet_need_reboot"].value == 0 and m["ipex_fleet_intent_open"].value == 0
    info = m["ipex_fleet_deployment_info"]
    assert info.labels["generation"] == "4" and info.labels["toplevel"] == path and info.labels["status"] == "ok"


def test_a_host_off_its_good_generation_after_a_failure(tmp_path):
    good = str(tmp_path / "root/nix/store/gen4")
    m = host(tmp_path, records=[rec("ok", 4, good), rec("failed", 5, "", "activation failed", run="r2")], current=5,
             torn=True)
    assert m["ipex_fleet_current_generation"].value == 5 and m["ipex_fleet_good_generation"].value == 4
    assert m["ipex_fleet_running_good_generation"].value == 0
    assert m["ipex_fleet_last_deployment_failed"].value == 1
    assert m["ipex_fleet_deployment_info"].labels["run_id"] == "r2"


def test_a_pending_reboot_a_fallback_and_an_open_intent(tmp_path):
    good = str(tmp_path / "root/nix/store/gen9")
    m = host(tmp_path, records=[rec("rolled_back", 8, "", "fell back: booted gen7, not the target"), rec("ok", 9, good)],
             current=9, booted_kernel="6.12", intent="r3")
    assert m["ipex_fleet_need_reboot"].value == 1  # generation 9 has kernel 6.13, the host booted 6.12
    assert m["ipex_fleet_boot_fallbacks"].value == 1
    assert m["ipex_fleet_intent_open"].value == 1 and m["ipex_fleet_intent_open"].labels["run_id"] == "r3"


def test_a_host_with_no_record_yet(tmp_path):
    m = host(tmp_path, records=[], current=1)
    assert m["ipex_fleet_good_generation"].value == -1 and m["ipex_fleet_running_good_generation"].value == 0
    assert m["ipex_fleet_last_deployment_failed"].value == 0


def test_device_memory_and_temperature_where_torch_gave_them(tmp_path):
    doc = {"host": "h", "level": 1, "result": "pass", "duration_s": 1.5, "checks": [],
           "accelerator": {"type": "cuda", "count": 2, "torch": "2.9", "devices": [
               {"index": 0, "name": "H100", "total_memory": 80e9, "memory_used": 1e9, "temperature_c": 41.0},
               {"index": 1, "name": "H100", "total_memory": 80e9}]}}
    out = tmp_path / "p.prom"
    metrics.write(str(out), metrics.probe_metrics(doc))
    samples = [s for f in text_string_to_metric_families(out.read_text()) for s in f.samples]
    by = {(s.name, s.labels.get("device")): s.value for s in samples}
    assert by[("ipex_fleet_device_memory_total_bytes", "0")] == 80e9
    assert by[("ipex_fleet_device_memory_total_bytes", "1")] == 80e9
    assert by[("ipex_fleet_device_memory_used_bytes", "0")] == 1e9
    assert ("ipex_fleet_device_memory_used_bytes", "1") not in by  # unknown is absent, never 0
    assert by[("ipex_fleet_device_temperature_celsius", "0")] == 41.0


def test_an_unwritable_textfile_dir_is_one_line_and_exit_1(tmp_path):
    import subprocess
    import sys

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    proc = subprocess.run([sys.executable, "-m", "ipex_fleet", "metrics", "--textfile-dir", str(blocked / "sub")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "give a writable --textfile-dir" in proc.stderr
