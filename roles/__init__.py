"""Reusable pyinfra @deploy roles, one module per concern. Import them from deploy files run
from the repository root (pyinfra puts only the current directory on sys.path)."""
