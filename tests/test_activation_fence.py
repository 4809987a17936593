"""The activation's fence, as the host runs it: the activation unit's own shell asks the real agent (its
command line, the host's clock) whether the intent is still open before switch-to-configuration runs.
An activation command that reaches the host after its intent was decided (a cut connection's
retransmission delivered after the watchdog's revert) exits ACTIVATION_FENCED and switches nothing."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from ipex_fleet.host import agent as A
from ipex_fleet.domain import Action
from ipex_fleet.nix import commands as nixcmd

from .test_agent import FakeSystem, intent, locked


def run_wrapper(tmp_path: Path, root: Path) -> tuple[int, str, bool]:
    """The unit's shell, as activate() starts it: (exit code, its rc file, whether the switch ran)."""
    ran = tmp_path / "switched"
    ran.unlink(missing_ok=True)
    stc = tmp_path / "switch-to-configuration"
    stc.write_text(f"#!/bin/sh\necho \"$1\" > {shlex.quote(str(ran))}\n")
    stc.chmod(0o755)
    fence = shlex.join([sys.executable, "-S", A.__file__, "--root", str(root), "fence", "--intent", "i1"])
    command = nixcmd.activate("/nix/store/x-nixos-system", Action.SWITCH, "abc", fence)
    wrapper = shlex.split(command.split(" /bin/sh -c ", 1)[1].split("; else setsid", 1)[0])[0]
    rc_file = tmp_path / "rc"
    proc = subprocess.run(["/bin/sh", "-c", wrapper, str(stc), "switch", str(rc_file)], capture_output=True,
                          text=True, timeout=60)
    return proc.returncode, rc_file.read_text().strip(), ran.exists()


def test_the_activation_runs_while_its_intent_is_open_and_never_after_it_was_decided(tmp_path):
    root = tmp_path / "state"
    agent = A.Agent(str(root), A.Clock(), FakeSystem())  # the host's own clock: the command line reads it too
    agent.open(intent(), locked(agent), 60, 0)
    assert run_wrapper(tmp_path, root) == (0, "0", True)

    assert agent.claim("i1", "reverting-controller")  # the revert claims (the watchdog's, the controller's)
    code, rc, switched = run_wrapper(tmp_path, root)
    assert (code, rc, switched) == (nixcmd.ACTIVATION_FENCED, str(nixcmd.ACTIVATION_FENCED), False)


def test_a_host_without_the_intent_never_activates_a_fenced_command(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    assert run_wrapper(tmp_path, root)[::2] == (nixcmd.ACTIVATION_FENCED, False)
