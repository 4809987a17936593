"""The controller's side of the host agent (ipex_fleet.host.agent): its commands, quoted once, and
its installation on a host.

The agent is copied to each host by content hash, under /var/lib/ipex-fleet/agent/, and run by a
small launcher that picks an interpreter which does not depend on the generation being deployed:
a Python pinned by a GC root (taken from the running system at install), then the host's own
python3. So it works on the first deploy (the previous generation has no agent) and when the target
generation is broken. The boot unit of the fleet module (and of the lab's generations) runs
`agent.py boot` from the same place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from shlex import quote
from typing import Any

from ipex_fleet.domain import STATE_DIR
from ipex_fleet.host import agent as _agent

SOURCE = Path(_agent.__file__).read_bytes()
SHA = hashlib.sha256(SOURCE).hexdigest()[:16]
DIR = f"{STATE_DIR}/agent"
SCRIPT = f"{DIR}/agent_{SHA}.py"  # a module's name: the launcher imports it (see LAUNCHER_TEXT)
LAUNCHER = f"{DIR}/run"
INTENT_FILE = f"{STATE_DIR}/intent.json"
RESOLVED = f"{STATE_DIR}/resolved"
LOST, FENCED, BUSY, FAILED = _agent.LOST, _agent.FENCED, _agent.BUSY, _agent.FAILED
COMMITTED = _agent.COMMITTED

# -S: the agent needs only the standard library; site's start-up (site-packages, .pth files, a
# distribution's sitecustomize) was a quarter of each agent call, and a deploy makes several per host.
# A versioned agent is imported (-c IMPORT_MAIN): Python then keeps its compiled code in __pycache__
# (one file per interpreter version, checked against the source), where a script is compiled again at
# every start (a third of what was left of an agent call's start-up). Not -m: runpy imports
# importlib.util and with it contextlib, collections and functools, which the agent itself no longer
# needs (a third of its start-up again). From its own folder, which -c puts first on sys.path as a
# script's folder is. The boot unit's agent.py runs as a script, from its source alone.
IMPORT_MAIN = "import sys, {module} as agent; sys.exit(agent.main())"
def launcher_text(folder: str = DIR) -> str:
    return f"""#!/bin/sh
# ipex-fleet's host agent launcher: an interpreter that does not depend on the generation being deployed.
case "$1" in
  {folder}/agent_*.py) m=${{1##*/}}; shift; set -- -c "{IMPORT_MAIN.format(module='${m%.py}')}" "$@"; cd {folder} || exit 127;;
esac
for p in {folder}/python3 /usr/bin/python3 python3 /run/current-system/sw/bin/python3; do
  if command -v "$p" >/dev/null 2>&1; then exec "$p" -S "$@"; fi
done
echo "ipex-fleet agent: no python3 on this host" >&2
exit 127
"""


LAUNCHER_TEXT = launcher_text()


def command(*args: str) -> str:
    """One agent command, each word quoted once."""
    return " ".join(quote(a) for a in (LAUNCHER, SCRIPT, "--root", STATE_DIR, *args))


def status_or_missing() -> str:
    """`agent=<status JSON>`, or `agent=missing` where this version is not installed."""
    return (f'if [ -f {quote(SCRIPT)} ] && [ -x {quote(LAUNCHER)} ]; then printf "agent=%s\\n" "$({command("status")})"; '
            "else echo agent=missing; fi")


def commit(intent_id: str, token: str | None, record: dict[str, Any], metrics_dir: str | None = None) -> str:
    """The agent's `commit`: claim, append `record` (given on its stdin by printf, a shell builtin, as
    the plain record's line is) and release the lock by `token`, in one call; with `metrics_dir`, the
    agent then writes the deployment metrics there (best effort: its answer says `metrics_error`)."""
    args = ["commit", "--intent", intent_id, "--record-stdin"] + (["--token", token] if token else [])
    args += ["--metrics-dir", metrics_dir] if metrics_dir else []
    return f"printf '%s\\n' {quote(json.dumps(record, sort_keys=True))} | {command(*args)}"


QUIET = "quiet"


def status_unless_quiet() -> str:
    """`agent=quiet` where nothing can be open (no lock file, no intent file, every revert claimed has
    its outcome written) and this version is installed; otherwise what status_or_missing prints. Only
    the no-change fast path asks this way: a host with nothing open, as almost every host is, answers
    without starting the agent; anything present (even a stale or unreadable file) asks the agent."""
    reverts = " ".join(f"{RESOLVED}/*.{who}.json" for who in _agent.WHO_REVERTS)
    return (f"q=1; [ -e {quote(STATE_DIR + '/lock')} ] && q=0; [ -e {quote(INTENT_FILE)} ] && q=0; "
            f"for f in {reverts}; do [ -e \"$f\" ] || continue; grep -q '\"outcome\": \"[^\"]' \"$f\" || q=0; done; "
            f"if [ $q = 1 ] && [ -f {quote(SCRIPT)} ] && [ -x {quote(LAUNCHER)} ]; then echo agent={QUIET}; "
            f"else {status_or_missing()}; fi")


def install(upload: str) -> str:
    """Put the uploaded agent in place, with its launcher and the `agent.py` the boot unit runs, and
    pin the running system's python3 by a GC root (NixOS: it survives the generations' GC)."""
    d = quote(DIR)
    pin = (f'if [ ! -e {d}/python3 ]; then p=$(readlink -f "$(command -v python3 || echo /run/current-system/sw/bin/python3)" '
           '2>/dev/null); case "$p" in /nix/store/*) r=${p#/nix/store/}; r=/nix/store/${r%%/*}; '
           f'nix-store --add-root {d}/python3-root --indirect -r "$r" >/dev/null 2>&1 && ln -sfn "$p" {d}/python3;; esac; fi'
           )
    return (f"mkdir -p {d} && mv -f {quote(upload)} {quote(SCRIPT)} && "
            f"printf '%s' {quote(LAUNCHER_TEXT)} > {d}/run.tmp && chmod 0755 {d}/run.tmp && mv -f {d}/run.tmp {d}/run && "
            f"ln -sfn {quote(Path(SCRIPT).name)} {d}/agent.py.tmp && mv -Tf {d}/agent.py.tmp {d}/agent.py; "
            f"{pin}; {d}/run -c {quote(_COMPILE)} >/dev/null 2>&1; true")


# The agent's compiled code, written at install by the interpreter the launcher picks, and synced: a
# crash can then not leave a torn cache behind for the calls that follow (best effort: without it the
# first call writes the cache).
_COMPILE = (f"import os, py_compile; f = os.open(py_compile.compile({SCRIPT!r}, doraise=True), os.O_RDONLY); "
            "os.fsync(f); os.close(f)")


def parse(lines: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The agent's one JSON object (its last line of output)."""
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {}


def parse_status(value: str | None) -> dict[str, Any] | None:
    """`agent=` from status_or_missing: the status, or None when the agent is missing."""
    if not value or value == "missing":
        return None
    try:
        return json.loads(value)
    except ValueError:
        return {}


def read_intent() -> str:
    """`intent=<the open intent's JSON>` when one is open (read without the agent: plans and
    maintenance only look)."""
    return f'if [ -s {quote(INTENT_FILE)} ]; then printf "intent=%s\\n" "$(cat {quote(INTENT_FILE)})"; fi'
