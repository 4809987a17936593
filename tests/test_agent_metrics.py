"""The host agent writes the deployment metrics itself (`commit --metrics-dir`, `metrics`): no second
interpreter with the package and prometheus_client at each deploy. Its text is prometheus_client's, byte
for byte, for every host state; `ipex-fleet metrics` reads the same data (one source of truth)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from ipex_fleet.host import agent as A
from ipex_fleet.host import metrics
from ipex_fleet.transaction import flow, hostagent

from .test_agent import OLD, intent, locked, make
from .test_metrics import host_root, rec
from .test_scripted_transaction import check_invariant, controller  # noqa: F401 (a fixture)

# The agent as the launcher runs it: the host's python3, -S, the lone file.
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").is_file() else sys.executable
ODD = 'a "quoted" \\ back\\slash\nand a newline'


def prometheus(families: list) -> bytes:
    """generate_latest of these prometheus_client families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics._Families(families))
    return generate_latest(registry)


def run_agent(root: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-S", A.__file__, "--root", root, *args], input=stdin, capture_output=True,
                          text=True, timeout=30)


# -- the text, byte for byte ----------------------------------------------------------------------


def _good(tmp: Path, gen: int) -> str:
    return str(tmp / f"root/nix/store/gen{gen}")


def _no_file(tmp: Path) -> Path:
    root = host_root(tmp, records=[], current=1)
    (root / "var/lib/ipex-fleet/deploys.jsonl").unlink()
    return root


def _odd_labels(tmp: Path) -> Path:
    root = host_root(tmp, records=[{"run_id": ODD, "status": ODD, "phase": ODD, "error": ODD,
                                    "final": {"generation": 4, "path": ODD}}], current=4)
    (root / "var/lib/ipex-fleet/intent.json").write_text(json.dumps({"intent_id": "i", "run_id": ODD}))
    return root


def _unreadable_intent(tmp: Path) -> Path:
    root = host_root(tmp, records=[rec("ok", 4, _good(tmp, 4))], current=4)
    (root / "var/lib/ipex-fleet/intent.json").write_text('{"intent_id": "i1", "run')
    return root


def _timestamped(tmp: Path, when: float) -> Path:
    root = host_root(tmp, records=[rec("ok", 4, _good(tmp, 4))], current=4)
    os.utime(root / "var/lib/ipex-fleet/deploys.jsonl", (when, when))
    return root


STATES = {
    "nothing at all": lambda tmp: tmp,
    "no record file": _no_file,
    "no records": lambda tmp: host_root(tmp, records=[], current=1),
    "a good deploy": lambda tmp: host_root(tmp, records=[rec("ok", 4, _good(tmp, 4))], current=4),
    "unchanged after ok": lambda tmp: host_root(tmp, records=[rec("ok", 3, _good(tmp, 3)),
                                                              rec("unchanged", 3, _good(tmp, 3))], current=3),
    "a failure after a good deploy": lambda tmp: host_root(
        tmp, records=[rec("ok", 4, _good(tmp, 4)), rec("failed", 5, "", "activation failed", run="r2")], current=5),
    "a torn last line": lambda tmp: host_root(tmp, records=[rec("ok", 4, _good(tmp, 4))], current=4, torn=True),
    "a pending reboot and a fallback": lambda tmp: host_root(
        tmp, records=[rec("rolled_back", 8, "", "fell back: booted gen7"), rec("ok", 9, _good(tmp, 9))], current=9),
    "an open intent": lambda tmp: host_root(tmp, records=[rec("ok", 4, _good(tmp, 4))], current=4, intent="r3"),
    "an unreadable intent": _unreadable_intent,
    "quotes, backslashes and newlines": _odd_labels,
    "a round timestamp": lambda tmp: _timestamped(tmp, 1764400000.0),
    "a fine timestamp": lambda tmp: _timestamped(tmp, 1764400000.123456),
}


@pytest.mark.parametrize("state", STATES)
def test_the_agents_text_is_prometheus_clients_byte_for_byte(tmp_path, state):
    root = str(STATES[state](tmp_path))
    text = A.render(A.deploy_metrics(root=root)).encode()
    assert text == prometheus(metrics.host_metrics(root=root))
    out = tmp_path / "client" / metrics.DEPLOY_FILE  # write_to_textfile's own escaping (ALLOWUTF8)
    metrics.write(str(out), metrics.host_metrics(root=root))
    assert out.read_bytes() == text


def test_the_states_show_what_they_should(tmp_path):
    def values(state: str) -> dict:
        data = A.deploy_metrics(root=str(STATES[state](tmp_path / state.replace(" ", "-"))))
        return {name: samples[0] for name, _doc, _kind, samples in data}

    assert "ipex_fleet_last_deployment_timestamp_seconds" not in values("no record file")
    assert values("a pending reboot and a fallback")["ipex_fleet_need_reboot"][1] == 1.0
    assert values("a failure after a good deploy")["ipex_fleet_last_deployment_failed"][1] == 1.0
    assert values("an unreadable intent")["ipex_fleet_intent_open"] == ({"run_id": "?"}, 1.0)
    assert values("an open intent")["ipex_fleet_intent_open"] == ({"run_id": "r3"}, 1.0)
    assert values("quotes, backslashes and newlines")["ipex_fleet_deployment"][0]["run_id"] == ODD


def test_help_labels_and_values_are_escaped_and_written_as_prometheus_client_does():
    data = [("t_gauge", 'help with a \\ and a "quote"\nover two lines', "gauge",
             [({"b": ODD, "a": "x"}, 1.5e-7), ({"b": "", "a": "y"}, -2.0), ({"b": "z", "a": "é"}, float("nan"))]),
            ("t_identity", "an info\\n", "info", [({"k": ODD, "j": "v"}, 1.0)]),
            ("t_plain", "", "gauge", [({}, 1764400000.5)]),
            ("t_empty", "no samples", "gauge", [])]
    assert A.render(data).encode() == prometheus(metrics.families_of(data))
    for value in (0.0, -0.0, 1.0, -1.0, 3, 0.1, 1e-9, 123456.0, 1234567.0, 1764400000.0, 1764400000.123456, 1e16,
                  2.5e22, -1764400000.0, float("inf"), float("-inf"), float("nan")):
        assert A._go_float(value) == floatToGoString(value), value


def test_the_file_is_whole_and_has_write_to_textfiles_mode(tmp_path):
    path = tmp_path / "new" / "dir" / A.DEPLOY_FILE
    A.write_textfile(str(path), "x 1.0\n")
    metrics.write(str(tmp_path / "client.prom"), [])
    assert path.read_text() == "x 1.0\n" and os.listdir(path.parent) == [A.DEPLOY_FILE]
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "client.prom").stat().st_mode)
    with pytest.raises(OSError):  # a directory that cannot be made: nothing is left behind
        A.write_textfile(str(path / "under-a-file" / A.DEPLOY_FILE), "x 1.0\n")
    assert os.listdir(path.parent) == [A.DEPLOY_FILE]


# -- the agent's commands ---------------------------------------------------------------------------


def test_the_metrics_command_writes_the_file(tmp_path):
    state = _timestamped(tmp_path, 1764400000.0) / "var/lib/ipex-fleet"
    proc = run_agent(str(state), "metrics", "--textfile-dir", str(tmp_path / "prom"))
    path = tmp_path / "prom" / A.DEPLOY_FILE
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"metrics": str(path)}, proc.stderr
    assert path.read_bytes() == prometheus(metrics.host_metrics(state_dir=str(state)))
    assert "ipex_fleet_deployment_info{" in path.read_text() and os.listdir(path.parent) == [A.DEPLOY_FILE]
    (tmp_path / "file").write_text("")
    failed = run_agent(str(state), "metrics", "--textfile-dir", str(tmp_path / "file" / "sub"))
    assert failed.returncode == A.FAILED and json.loads(failed.stdout)["metrics_error"] and not failed.stderr


def _commit(state: str, intent_id: str, token: str, record: dict, metrics_dir: Path) -> tuple[int, dict]:
    proc = run_agent(state, "commit", "--intent", intent_id, "--token", token, "--record-stdin",
                     "--metrics-dir", str(metrics_dir), stdin=json.dumps(record) + "\n")
    assert not proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_a_won_commit_writes_the_metrics_a_lost_one_does_not(tmp_path):
    agent = make(tmp_path)  # the intent opened by an agent on a test clock; committed by the real one
    state = agent.root
    token = locked(agent)
    agent.open(intent("i1"), token, 30, 0)
    record = {"run_id": "r1", "status": "ok", "phase": "deploy", "final": {"generation": 2, "path": "/nix/store/b"}}
    rc, out = _commit(state, "i1", token, record, tmp_path / "prom")
    path = tmp_path / "prom" / A.DEPLOY_FILE
    assert rc == 0 and out["won"] and out["recorded"] and out["released"] and out["metrics"] == str(path)
    assert "metrics_error" not in out
    assert path.read_bytes() == prometheus(metrics.host_metrics(state_dir=state))  # with the record just written
    assert 'run_id="r1",status="ok"' in path.read_text()
    # a claim the watchdog won first: LOST, and no metrics
    token = locked(agent, "r2")
    agent.open({**intent("i2", "r2"), "previous": {"generation": 1, "path": OLD}}, token, 30, 0)
    agent.clock.t += 31
    agent.revert("i2", "watchdog")
    rc, out = _commit(state, "i2", token, {"run_id": "r2", "status": "ok"}, tmp_path / "lost")
    assert rc == A.LOST and out["decided_by"] == "watchdog" and not (tmp_path / "lost").exists()


def test_metrics_that_cannot_be_written_change_nothing_of_the_commit(tmp_path):
    agent = make(tmp_path)
    token = locked(agent)
    agent.open(intent("i1"), token, 30, 0)
    (tmp_path / "file").write_text("a regular file")
    rc, out = _commit(agent.root, "i1", token, {"run_id": "r1", "status": "ok"}, tmp_path / "file" / "prom")
    assert rc == 0 and out["won"] and out["recorded"] and out["released"] and "Not a directory" in out["metrics_error"]
    lines = Path(agent.root, "deploys.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"run_id": "r1", "status": "ok"}]
    assert agent.outcome("i1")["decided_by"] == A.COMMITTED and agent.status()["lock"] is None


# -- the controller's commands ---------------------------------------------------------------------


def test_the_controller_asks_the_agent_not_a_second_interpreter():
    settings = SimpleNamespace(metrics_dir="/var/lib/node exporter", ipex_fleet_command="ipex-fleet")
    written = flow._metrics_command(SimpleNamespace(settings=settings, agent_ready=True))
    assert written == f"{{ {hostagent.command('metrics', '--textfile-dir', '/var/lib/node exporter')} >/dev/null 2>&1 || true; }}"
    # where this agent may not be installed yet, the host package's command, as before
    early = flow._metrics_command(SimpleNamespace(settings=settings, agent_ready=False))
    assert early == "{ ipex-fleet metrics --textfile-dir '/var/lib/node exporter' >/dev/null 2>&1 || true; }"
    commit = hostagent.commit("i1", "t", {"run_id": "r"}, "/var/lib/node exporter")
    assert commit.endswith(" --metrics-dir '/var/lib/node exporter'")
    assert "--metrics-dir" not in hostagent.commit("i1", "t", {"run_id": "r"})


def test_a_deploys_commit_writes_the_metrics_in_its_one_agent_call(controller):  # noqa: F811
    deploy, make_host = controller
    host = make_host()
    run_id, alive = deploy(host)
    assert alive and check_invariant(host, run_id, "-") == "committed"
    path = Path(host.agent_dir, "metrics", A.DEPLOY_FILE)  # the scripted host's stand-in for metrics_dir
    assert f'run_id="{run_id}",status="ok"' in path.read_text()
    assert host.kinds.count("commit") == 1 and "record" not in host.kinds
