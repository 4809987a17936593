"""JUnit XML of the health checks: from a probe document, from `ipex-fleet probe --junit` on this
machine, and the deploy's own under .ipex-fleet/runs/RUN/junit/HOST.xml (lab test in
test_node_exporter.py)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

from ipex_fleet.common import junit

DOC = {"host": "gpu-01", "duration_s": 2.5, "result": "fail", "checks": [
    {"name": "torch", "level": 1, "result": "pass", "message": "torch 2.9", "duration_s": 1.2},
    {"name": "accelerator", "level": 1, "result": "fail", "message": "expected a xpu device, torch sees cpu",
     "duration_s": 0.1},
    {"name": "ipex", "level": 1, "result": "skip", "message": "IPEX not installed", "duration_s": 0.0},
    {"name": "ollama", "level": 2, "result": "warn", "message": "slow: 3 tokens/s", "duration_s": 1.0},
]}


def test_each_check_is_a_testcase_with_its_outcome(tmp_path):
    path = junit.write(tmp_path / "out" / "gpu-01.xml", [junit.probe_suite(DOC)])
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "4" and root.get("failures") == "1"
    (suite,) = root
    assert suite.get("name") == "ipex-fleet health gpu-01" and suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite}
    assert cases["accelerator"].get("classname") == "gpu-01.level1"
    failure = cases["accelerator"].find("failure")
    assert failure is not None and failure.get("message") == "expected a xpu device, torch sees cpu"
    assert cases["ipex"].find("skipped") is not None
    assert cases["ollama"].find("failure") is None and "warn: slow" in cases["ollama"].find("system-out").text
    assert list(cases["torch"]) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["gpu-01.xml"]  # atomic: nothing else left


def test_probe_junit_on_this_machine(tmp_path):
    out = tmp_path / "probe.xml"
    proc = subprocess.run([sys.executable, "-m", "ipex_fleet", "probe", "--level", "1", "--junit", str(out)],
                          capture_output=True, text=True, timeout=120)
    suite = ET.parse(out).getroot().find("testsuite")
    names = [c.get("name") for c in suite]
    assert "torch" in names and "accelerator" in names
    assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in suite)
    assert (proc.returncode == 0) == (suite.get("failures") == "0")
