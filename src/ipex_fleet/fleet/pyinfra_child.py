"""A pyinfra run's interpreter, started before the controller knows the run's command line.

It imports pyinfra and the host transaction's modules (0.3 to 0.4 s of one core here), then waits on
stdin for one line: `{"argv": [...], "env": {...}, "cwd": "..."}`. The controller starts it first
thing (ipex_fleet.fleet.pyinfra_run.prestart), so those imports overlap the controller's own start
and planning instead of following them. End of input without a line: exit 0, having run nothing.
"""

from __future__ import annotations

import json
import os
import sys

# As the `pyinfra` console script: its folder first on sys.path, not the current directory (-m's).
sys.path[0] = os.path.dirname(sys.executable)

from pyinfra_cli.main import main  # noqa: E402

import ipex_fleet.transaction.flow  # noqa: E402,F401  the deploy files' heavy imports, done ahead

request = sys.stdin.readline()
if not request:
    sys.exit(0)
job = json.loads(request)
devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(devnull, 0)  # pyinfra's stdin, as for a run started directly (-y: it asks nothing)
os.close(devnull)
os.chdir(job["cwd"])
os.environ.clear()
os.environ.update(job["env"])
sys.argv = job["argv"]
sys.exit(main())
