"""The lab flake has the real flake's shape: a locked input that the controller holds and the hosts
do not (served by the lab on loopback only), and the ipex-fleet package built from the source pushed
inside the flake. A host with no route anywhere still builds and switches it: the deploy carries
the locked inputs it lacks over its own SSH session."""

from __future__ import annotations

import json
import re

import pytest

from ipex_fleet.domain import Status
from ipex_fleet.nix.flakeinputs import resolve
from ipex_fleet.nix.flakepush import materialize
from ipex_fleet.lab import faults

from .conftest import FAST, bump, assert_ok

pytestmark = pytest.mark.usefixtures("healthy")


@pytest.fixture
def fleet(fleet2):
    return fleet2


def _inputs(fleet) -> tuple[str, ...]:
    layout = fleet.lab.layout
    return resolve(materialize(str(layout.flake_dir)), str(layout.nix_conf_dir)).store_paths


def _carried(stdout: str, host: str) -> int:
    found = re.findall(rf"\[{host}\] pushed the flake \((\d+) bytes\) and its locked inputs \((\d+) bytes\)", stdout)
    assert found, stdout[-3000:]
    return int(found[-1][1])


def test_the_lab_flake_is_locked_to_an_input_served_by_the_lab(fleet2):
    address, port = fleet2.spec.cache_address
    lock = json.loads((fleet2.lab.layout.flake_dir / "flake.lock").read_text())
    locked = lock["nodes"]["labpkgs"]["locked"]
    assert locked["type"] == "tarball"
    assert locked["url"] == f"http://{address}:{port}/inputs/labpkgs.tar.gz"  # the lab's channel
    assert locked["narHash"].startswith("sha256-")
    (path,) = _inputs(fleet2)  # held by the controller
    assert path.endswith("-source")


def test_a_host_with_no_route_anywhere_builds_and_switches_the_locked_flake(fleet2):
    address, port = fleet2.spec.cache_address
    own = fleet2.spec.host("host1").address
    (input_path,) = _inputs(fleet2)
    fleet2.lab.isolate("host1")
    dropped = faults.isolated_counter(fleet2.spec)
    # It reaches nothing but itself: the lab's input server is out of reach, its own Ollama answers.
    reach = f"curl -sS -m 2 -o /dev/null http://{address}:{port}/ && echo reached || echo unreachable"
    assert fleet2.sh("host1", reach) == "unreachable"
    assert faults.isolated_counter(fleet2.spec) > dropped
    assert '"version"' in fleet2.sh("host1", f"curl -sS -m 5 http://{own}:11434/api/version")
    assert fleet2.sh("host2", reach) == "reached"  # the isolation is host1's alone
    # And it lacks the flake's input (as after an input update, or a GC).
    fleet2.sh("host1", f"nix-store --delete {input_path}")
    assert fleet2.sh("host1", f"nix-store --check-validity --print-invalid {input_path}") == input_path

    before = fleet2.system("host1")
    bump(fleet2, "host1")
    proc, run_id = fleet2.deploy("--limit", "host1", *FAST)
    assert_ok(proc)
    result = fleet2.result(run_id, "host1")
    assert result.status is Status.OK, result.error
    gen, path, running = fleet2.system("host1")
    assert gen == before[0] + 1 and running == path
    assert _carried(proc.stdout, "host1") > 0
    assert fleet2.sh("host1", f"nix-store --check-validity --print-invalid {input_path}") == ""

    # A one-line change later the input is there: only the flake travels.
    bump(fleet2, "host1")
    proc, run_id = fleet2.deploy("--limit", "host1", *FAST)
    assert proc.returncode == 0 and fleet2.result(run_id, "host1").status is Status.OK
    assert _carried(proc.stdout, "host1") == 0
    assert fleet2.sh("host1", reach) == "unreachable"


def test_the_generation_runs_ipex_fleet_built_from_the_pushed_source(fleet2):
    wrapper = fleet2.sh("host1", "cat /run/current-system/sw/bin/ipex-fleet")
    pythonpath = re.search(r"PYTHONPATH=(\S+)", wrapper).group(1)
    assert pythonpath.startswith("/nix/store/") and pythonpath.endswith("-ipex-fleet-lab/lib/python")
    python = wrapper.split("exec ")[1].split()[0]
    where = fleet2.sh("host1", f"PYTHONPATH={pythonpath} {python} -c 'import ipex_fleet; print(ipex_fleet.__file__)'")
    assert where == f"{pythonpath}/ipex_fleet/__init__.py"
    probe = json.loads(fleet2.sh("host1", "/run/current-system/sw/bin/ipex-fleet probe --level 1 --json"))
    assert probe["host"] == "host1" and probe["result"] == "pass"
