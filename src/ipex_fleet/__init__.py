"""ipex-fleet: roll a NixOS flake out to a fleet of GPU hosts with pyinfra.

The public surface is small; the details live in the submodules.
"""

from .domain import Action, Generation, HostResult, ProfileState, Status
from .errors import UserError

__version__ = "0.1.0"
__all__ = ["Action", "Generation", "HostResult", "ProfileState", "Status", "UserError", "__version__"]
