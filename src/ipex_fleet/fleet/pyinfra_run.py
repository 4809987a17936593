"""One pyinfra run as a child process: `pyinfra INVENTORY DEPLOY -y --limit ...`, never --no-wait.

The child dies with the controller (PR_SET_PDEATHSIG): a killed rollout leaves no orphan run
behind, and `--resume` finds each host either done or safe to deploy again. The first run of a
command can take an interpreter started ahead (prestart), its imports done while the controller
started and planned.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

_RESULT_LINE = re.compile(r"\] (ok|unchanged|rolled_back|failed|unreachable|skipped|rolled back to|failed:)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pyinfra_executable() -> list[str]:
    script = Path(sys.executable).parent / "pyinfra"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pyinfra"]


def argv(inventory: str, deploy: str, hosts: tuple[str, ...] | list[str], parallel: int | None,
         data: dict[str, str] | None = None) -> list[str]:
    args = [*pyinfra_executable(), inventory, deploy, "-y"]
    for host in hosts:
        args += ["--limit", host]
    if parallel:
        args += ["--parallel", str(parallel)]
    for key, value in (data or {}).items():
        args += ["--data", f"{key}={value}"]
    return args


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_prestarted: subprocess.Popen | None = None
_taking = threading.Lock()


def prestart() -> None:
    """Start the next run's interpreter now (ipex_fleet.fleet.pyinfra_child). Unused, it ends when
    this process does (its stdin closes); a command that runs no pyinfra loses nothing but its CPU."""
    global _prestarted
    with _taking:
        if _prestarted is not None or pyinfra_executable()[0] == sys.executable:
            return
        _prestarted = subprocess.Popen([sys.executable, "-m", "ipex_fleet.fleet.pyinfra_child"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, preexec_fn=_die_with_parent)


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """The prestarted interpreter given this command line, or else a new pyinfra process."""
    global _prestarted
    with _taking:
        proc, _prestarted = _prestarted, None
    if proc is not None:
        try:
            assert proc.stdin is not None
            if proc.poll() is None and args[:1] == pyinfra_executable():
                proc.stdin.write(json.dumps({"argv": ["pyinfra", *args[1:]], "env": env, "cwd": os.getcwd()}) + "\n")
                proc.stdin.close()
                return proc
        except OSError:  # it died meanwhile: start afresh
            pass
        proc.kill()  # not for this command line, or dead: reaped, its pipes closed
        proc.communicate(timeout=30)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)


def run(args: list[str], env: dict[str, str], log_path: Path, on_result: Callable[[str], None],
        timeout: float) -> int:
    """Run pyinfra, keep its whole output in log_path, and hand host result lines to on_result."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        proc = _start(args, {**os.environ, **env})
        # The whole run is bounded, silent stretches included: reading output alone could wait forever.
        deadline = threading.Timer(timeout, proc.kill)
        deadline.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                clean = _ANSI.sub("", line.rstrip())
                if _RESULT_LINE.search(clean):
                    on_result(clean.strip())
            rc = proc.wait()
        finally:
            deadline.cancel()
        return 124 if rc == -9 else rc
