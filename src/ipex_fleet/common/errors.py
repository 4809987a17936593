"""The errors a user can act on.

In a pyinfra run UserError subclasses pyinfra's PyinfraError, so pyinfra prints it as one line
("--> pyinfra error: ...", no traceback), as `ipex-fleet` does. pyinfra's command line imports pyinfra
before any deploy file imports this module, so whether pyinfra is loaded already tells the two apart.
Elsewhere (the `ipex-fleet` command line, which catches UserError itself, and the hosts' package,
built without pyinfra) it is a plain exception: importing pyinfra for its base class cost every
`ipex-fleet` command 0.16-0.23 s before its first line.
"""

from __future__ import annotations

import sys

if "pyinfra.api" in sys.modules:
    from pyinfra.api.exceptions import PyinfraError
else:

    class PyinfraError(Exception):  # type: ignore[no-redef]
        """Outside a pyinfra run nothing of pyinfra prints it: a plain exception, printed the same way."""


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
