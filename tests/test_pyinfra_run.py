"""pyinfra_run: a run through the interpreter started ahead behaves as a pyinfra started directly
(its command line, environment, folder, stdin, exit code and time bound), and falls back to a
direct start when that interpreter is gone. Real pyinfra, on its @local connector."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipex_fleet.fleet import pyinfra_run

DEPLOY = '''
import json, os, sys
from pyinfra import host
from pyinfra.operations import python

def note(state, host):
    with open(os.environ["SEEN"], "w") as f:
        json.dump({"argv": sys.argv[1:], "mark": os.environ.get("MARK"), "cwd": os.getcwd(),
                   "stdin": os.readlink("/proc/self/fd/0"), "pid": os.getpid()}, f)
    if os.environ.get("SLEEP"):
        import time
        time.sleep(float(os.environ["SLEEP"]))
    return os.environ.get("FAIL") is None

python.call(name="note what the run saw", function=note)
'''


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    path = tmp_path / "deploy.py"
    path.write_text(DEPLOY)
    return path


@pytest.fixture(autouse=True)
def no_leftover():
    yield
    leftover, pyinfra_run._prestarted = pyinfra_run._prestarted, None
    if leftover is not None:
        leftover.kill()
        leftover.wait()


def _run(deploy: Path, tmp_path: Path, timeout: float = 120, **env: str) -> tuple[int, dict, str]:
    seen, log = tmp_path / "seen.json", tmp_path / "run.log"
    args = pyinfra_run.argv("@local", str(deploy), (), None)
    rc = pyinfra_run.run(args, {"SEEN": str(seen), **env}, log, lambda line: None, timeout)
    return rc, (json.loads(seen.read_text()) if seen.exists() else {}), log.read_text()


def test_a_prestarted_run_sees_its_command_line_environment_folder_and_no_stdin(deploy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pyinfra_run.prestart()
    child = pyinfra_run._prestarted
    assert child is not None
    rc, seen, log = _run(deploy, tmp_path, MARK="prestarted")
    assert rc == 0, log
    assert pyinfra_run._prestarted is None  # taken
    assert seen["pid"] == child.pid  # the prestarted interpreter ran it
    assert seen["argv"] == ["@local", str(deploy), "-y"]
    assert seen["mark"] == "prestarted" and seen["cwd"] == str(tmp_path) and seen["stdin"] == "/dev/null"
    assert "note what the run saw" in log


def test_a_failing_prestarted_run_gives_pyinfras_exit_code(deploy, tmp_path):
    pyinfra_run.prestart()
    rc, seen, log = _run(deploy, tmp_path, FAIL="1")
    assert seen and rc != 0, log


def test_a_prestarted_run_is_bounded_like_any_run(deploy, tmp_path):
    pyinfra_run.prestart()
    rc, seen, _ = _run(deploy, tmp_path, timeout=8, SLEEP="60")
    assert rc == 124 and seen


def test_without_a_live_prestarted_interpreter_pyinfra_starts_directly(deploy, tmp_path):
    pyinfra_run.prestart()
    dead = pyinfra_run._prestarted
    dead.kill()
    dead.wait()
    rc, seen, log = _run(deploy, tmp_path, MARK="direct")
    assert rc == 0, log
    assert seen["pid"] != dead.pid and seen["mark"] == "direct"
    rc, seen, log = _run(deploy, tmp_path, MARK="again")  # nothing prestarted: direct as well
    assert rc == 0 and seen["mark"] == "again", log


def test_a_prestarted_interpreter_not_meant_for_the_command_line_is_reaped(deploy, tmp_path):
    pyinfra_run.prestart()
    child = pyinfra_run._prestarted
    seen, log = tmp_path / "seen.json", tmp_path / "run.log"
    args = [sys.executable, "-m", "pyinfra", "@local", str(deploy), "-y"]  # not the pyinfra it stands for
    rc = pyinfra_run.run(args, {"SEEN": str(seen), "MARK": "other"}, log, lambda line: None, 120)
    assert rc == 0, log.read_text()
    assert child.poll() is not None and child.stdin.closed and child.stdout.closed
    assert json.loads(seen.read_text())["pid"] != child.pid


def test_an_unused_prestarted_interpreter_ends_at_the_end_of_its_input_having_run_nothing():
    child = subprocess.Popen([sys.executable, "-m", "ipex_fleet.fleet.pyinfra_child"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = child.communicate("", timeout=60)
    assert child.returncode == 0 and out == ""


def test_commands_that_run_pyinfra_are_the_ones_prestarted():
    from ipex_fleet import cli

    def commands(parser) -> set[str]:
        return set(parser._subparsers._group_actions[0].choices)

    everything = commands(cli.build_parser())
    assert cli.RUNS_PYINFRA <= everything
    assert "lab" not in cli.RUNS_PYINFRA and "history" not in cli.RUNS_PYINFRA
    # A rollout's parser leaves out only enroll's (its imports): every fleet command still parses.
    assert commands(cli.build_parser("rollout")) == everything - {"enroll"}


@pytest.mark.parametrize("argv,env,executes", [
    (["inv.py", "deploys/maintenance.py", "-y"], {}, True),
    (["inv.py", "deploys/maintenance.py", "--yes", "--limit", "h1"], {}, True),
    (["inv.py", "deploys/maintenance.py"], {"PYINFRA_YES": "true"}, True),
    (["inv.py", "deploys/maintenance.py"], {}, False),  # it asks first: a "no" runs nothing
    (["inv.py", "deploys/maintenance.py", "-y", "--dry"], {}, False),
    (["inv.py", "deploys/maintenance.py", "-y", "--debug-operations"], {}, False),
    (["inv.py", "deploys/maintenance.py", "-y", "--debug-facts"], {}, False),
    (["inv.py", "deploys/maintenance.py", "-y", "--debug-all"], {}, False),
])
def test_work_at_prepare_time_only_where_pyinfra_executes_without_asking(monkeypatch, argv, env, executes):
    from ipex_fleet.transaction.runstate import executes_without_asking

    monkeypatch.delenv("PYINFRA_YES", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert executes_without_asking(argv) is executes
    monkeypatch.setattr(sys, "argv", ["pyinfra", *argv])
    assert executes_without_asking() is executes
