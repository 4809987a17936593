"""The errors a user can act on.

UserError subclasses pyinfra's PyinfraError, so the same exception prints as one line
from `ipex-fleet` and from `pyinfra` (which shows "--> pyinfra error: ...", no traceback).
"""

from __future__ import annotations

try:
    from pyinfra.api.exceptions import PyinfraError
except ImportError:  # the hosts' package (probe, bench, models, metrics) is built without pyinfra

    class PyinfraError(Exception):  # type: ignore[no-redef]
        """Where pyinfra is absent nothing of it runs: a plain exception, printed the same way."""


class UserError(PyinfraError):
    """Bad input or a refused action: one line saying what is wrong and what to do."""


class CommandFailed(Exception):
    """A local command exited non-zero (see runner.run)."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        tail = output.strip().splitlines()[-1:] or [""]
        super().__init__(f"{argv[0]} exited {returncode}: {tail[0]}")
