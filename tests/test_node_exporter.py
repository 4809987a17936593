"""On a lab host, real node_exporter (Debian's prometheus-node-exporter) serves the metrics that
the deploy's probe and `ipex-fleet metrics` write; scraped over HTTP on loopback and parsed with
prometheus_client's parser."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ipex_fleet.domain import Status

from .conftest import FAST, bump, wait_for, assert_ok

pytestmark = pytest.mark.usefixtures("healthy")


@pytest.fixture
def fleet(fleet2):
    return fleet2


def scrape(fleet, host: str = "host1") -> dict:
    address = fleet.spec.host(host).address
    text = urllib.request.urlopen(f"http://{address}:9100/metrics", timeout=10).read().decode()
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def one(samples: dict, name: str, **labels: str):
    found = [s for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_node_exporter_serves_the_deploy_and_probe_metrics(fleet2):
    assert fleet2.sh("host1", "systemctl is-active prometheus-node-exporter") == "active"
    bump(fleet2, "host1")
    proc, run_id = fleet2.deploy("--limit", "host1", *FAST)
    assert_ok(proc)
    gen, path, _ = fleet2.system("host1")
    m = scrape(fleet2)
    info = one(m, "ipex_fleet_deployment_info")
    assert info.labels == {"generation": str(gen), "toplevel": path, "run_id": run_id, "status": "ok", "phase": "deploy"}
    assert one(m, "ipex_fleet_running_good_generation").value == 1
    assert one(m, "ipex_fleet_good_generation").value == gen
    assert one(m, "ipex_fleet_last_deployment_failed").value == 0
    health = fleet2.result(run_id, "host1").health
    for check, result in health["checks"].items():  # the deploy's own probe, as a state set
        assert one(m, "ipex_fleet_check_result", check=check, result=result).value == 1
    # ...and as JUnit XML beside the run's results, for CI systems.
    import xml.etree.ElementTree as ET

    suite = ET.parse(fleet2.state / "runs" / run_id / "junit" / "host1.xml").getroot().find("testsuite")
    assert {c.get("name") for c in suite} == set(health["checks"]) and suite.get("failures") == "0"


def test_a_rolled_back_deploy_and_a_host_off_its_good_generation(fleet2):
    fleet2.deploy("--limit", "host1", *FAST)
    good = fleet2.system("host1")
    fleet2.configure("host1", f"version=v-bad-{good[0]}", "fail_activation=true")
    proc, run_id = fleet2.deploy("--limit", "host1", *FAST)
    assert fleet2.result(run_id, "host1").status is Status.ROLLED_BACK
    m = scrape(fleet2)
    assert one(m, "ipex_fleet_last_deployment_failed").value == 1
    assert one(m, "ipex_fleet_running_good_generation").value == 1  # rolled back onto it
    assert one(m, "ipex_fleet_good_generation").value == good[0]
    # Someone switches the host by hand to an older generation: the alert's series says so.
    older = fleet2.sh("host1", f"ls -d /nix/var/nix/profiles/system-{good[0] - 1}-link")
    fleet2.sh("host1", f"{older}/bin/switch-to-configuration test; /run/current-system/sw/bin/ipex-fleet metrics",
              timeout=120)
    m = scrape(fleet2)
    assert one(m, "ipex_fleet_running_good_generation").value == 0
    assert one(m, "ipex_fleet_deployment_info").labels["toplevel"] != good[1]
