"""Read every host's current generation (for `ipex-fleet status`). Changes nothing on hosts."""

from roles.check import status
from roles.transaction import validate_once

validate_once()
status()
