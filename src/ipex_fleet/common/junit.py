"""JUnit XML of a host's health checks, for CI systems that gate on it (Jenkins, GitLab, GitHub).

One <testsuite> per host and probe run; one <testcase> per check (classname `HOST.levelN`):
`fail` is a <failure>, `skip` is <skipped>, `warn` passes with the warning in <system-out>.
The deploy writes `.ipex-fleet/runs/RUN/junit/HOST.xml` at its health step; on a host,
`ipex-fleet probe --junit FILE` writes the same.
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def probe_suite(document: dict[str, Any], host: str | None = None) -> ET.Element:
    host = host or str(document.get("host") or "host")
    checks = document.get("checks", [])
    suite = ET.Element("testsuite", {
        "name": f"ipex-fleet health {host}",
        "tests": str(len(checks)),
        "failures": str(sum(c.get("result") == "fail" for c in checks)),
        "errors": "0",
        "skipped": str(sum(c.get("result") == "skip" for c in checks)),
        "time": f"{float(document.get('duration_s') or 0):.3f}",
    })
    for c in checks:
        level = c.get("level", document.get("level", 0))
        case = ET.SubElement(suite, "testcase", {"classname": f"{host}.level{level}", "name": str(c.get("name")),
                                                 "time": f"{float(c.get('duration_s') or 0):.3f}"})
        message = str(c.get("message") or "")
        if c.get("result") == "fail":
            ET.SubElement(case, "failure", {"message": message, "type": "HealthCheckFailed"}).text = message
        elif c.get("result") == "skip":
            ET.SubElement(case, "skipped", {"message": message})
        elif c.get("result") == "warn":
            ET.SubElement(case, "system-out").text = f"warn: {message}"
    return suite


def write(path: str | Path, suites: list[ET.Element]) -> Path:
    """<testsuites> around the suites, written atomically."""
    root = ET.Element("testsuites", {
        "name": "ipex-fleet",
        "tests": str(sum(int(s.get("tests", 0)) for s in suites)),
        "failures": str(sum(int(s.get("failures", 0)) for s in suites)),
    })
    root.extend(suites)
    ET.indent(root)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        ET.ElementTree(root).write(f, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)
    return path
