"""The activation's outcome, asked over a new connection after its SSH session was lost, as the host's
shell runs it (nixcmd.activation_outcome): the unit's recorded exit code; 75 while the unit runs or
where systemd cannot say; 76 where the unit ended without an exit code (interrupted: its log exists)
or never started (no log). systemctl is a script here that answers as systemd's `show` does."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ipex_fleet.domain import Action
from ipex_fleet.nix import commands as nixcmd

UNIT = "ipex-fleet-switch-0123456789ab"


def ask(tmp_path: Path, state: str | None, in_a_unit: bool = True, rc: str | None = None, log: str | None = None,
        rc_at_show: str | None = None, job: str = "") -> tuple[int, str, str]:
    """Run the outcome command with its folder under tmp_path; `state`: the ActiveState `systemctl show`
    prints (None: it fails, as where systemd is not running; "": it prints nothing); `job`: the unit's
    queued job; `rc_at_show`: the unit's shell writes this exit code while systemctl looks (the unit
    ends between the two reads)."""
    folder = tmp_path / "activation"
    folder.mkdir(exist_ok=True)
    if rc is not None:
        (folder / f"{UNIT}.rc").write_text(rc + "\n")
    if log is not None:
        (folder / f"{UNIT}.log").write_text(log)
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    script = ["#!/bin/sh", f'[ "$*" = "show --property=ActiveState --property=Job {UNIT}.service" ] || exit 9']
    if rc_at_show is not None:
        script.append(f"echo {rc_at_show} > {folder}/{UNIT}.rc")
    script.append("exit 1" if state is None else "true" if state == "" else f"printf 'ActiveState={state}\\nJob={job}\\n'")
    (bin_ / "systemctl").write_text("\n".join(script) + "\n")
    (bin_ / "systemctl").chmod(0o755)
    command = nixcmd.activation_outcome(Action.SWITCH, "0123456789ab")
    assert command.count(nixcmd.IN_A_UNIT) == 1
    command = command.replace(nixcmd.ACTIVATION_DIR, str(folder)).replace(nixcmd.IN_A_UNIT, "true" if in_a_unit else "false")
    proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"})
    return proc.returncode, proc.stdout, proc.stderr


RECORDED = nixcmd.ACTIVATION_RECORDED + "\n"


def test_a_recorded_exit_code_is_the_answer_with_the_activations_output(tmp_path):
    assert ask(tmp_path, "inactive", rc="0", log="activating the configuration\n")[:2] == (
        0, RECORDED + "activating the configuration\n")
    assert ask(tmp_path, "inactive", rc="4")[0] == 4


@pytest.mark.parametrize("rc", (nixcmd.ACTIVATION_RUNNING, nixcmd.ACTIVATION_GONE))
def test_an_activation_that_itself_exits_75_or_76_is_told_from_running_and_gone(tmp_path, rc):
    """switch-to-configuration's own exit code is the answer's code too: the first line says it was
    recorded, and take_recorded reads it so (NixOS uses 0, 1, 2, 4 and 100; any script may use more)."""
    code, out, _ = ask(tmp_path, "inactive", rc=str(rc), log="activating\n")
    assert (code, out) == (rc, RECORDED + "activating\n")
    assert nixcmd.take_recorded(out.splitlines()) == (True, ("activating",))
    (tmp_path / "other").mkdir()
    running = ask(tmp_path / "other", "active", log="half way\n")
    assert running[0] == nixcmd.ACTIVATION_RUNNING
    assert nixcmd.take_recorded(running[1].splitlines()) == (False, ())


@pytest.mark.parametrize("state", ("active", "activating", "deactivating", "reloading"))
def test_a_unit_that_runs_is_waited_for(tmp_path, state):
    assert ask(tmp_path, state, log="half way\n")[0] == nixcmd.ACTIVATION_RUNNING


def test_a_unit_whose_start_waits_in_systemds_queue_is_waited_for(tmp_path):
    """systemd shows a unit whose start job is queued as `inactive`, with the job's id."""
    assert ask(tmp_path, "inactive", job="324")[0] == nixcmd.ACTIVATION_RUNNING


@pytest.mark.parametrize("state", ("inactive", "failed"))
def test_a_unit_that_ended_without_an_exit_code_was_interrupted(tmp_path, state):
    code, out, err = ask(tmp_path, state, log="half way\n")
    assert (code, out) == (nixcmd.ACTIVATION_GONE, "half way\n")
    assert err.strip() == nixcmd.ACTIVATION_INTERRUPTED


def test_no_unit_and_no_log_never_started(tmp_path):
    code, out, err = ask(tmp_path, "inactive")
    assert (code, out, err.strip()) == (nixcmd.ACTIVATION_GONE, "", nixcmd.ACTIVATION_NEVER_STARTED)


def test_a_unit_that_ends_while_it_is_looked_at_answers_with_its_exit_code(tmp_path):
    """The state is read before the exit code: a unit seen ended has written its code if it ever will."""
    assert ask(tmp_path, "inactive", log="done\n", rc_at_show="0")[:2] == (0, RECORDED + "done\n")


@pytest.mark.parametrize("state", (None, ""))
def test_where_systemd_cannot_say_the_answer_is_still_running(tmp_path, state):
    assert ask(tmp_path, state)[0] == nixcmd.ACTIVATION_RUNNING


def test_an_activation_in_a_session_of_its_own_without_systemd_is_never_called_gone(tmp_path):
    """Where activate() used setsid (no systemd as PID 1), no unit exists to ask: only its exit code ends
    the wait."""
    assert ask(tmp_path, "inactive", in_a_unit=False)[0] == nixcmd.ACTIVATION_RUNNING
    assert ask(tmp_path, "inactive", in_a_unit=False, rc="0")[0] == 0


def test_the_condition_for_a_unit_is_the_one_activate_uses():
    assert f"if {nixcmd.IN_A_UNIT}; then systemd-run" in nixcmd.activate("/nix/store/x", Action.SWITCH, "0123456789ab")
