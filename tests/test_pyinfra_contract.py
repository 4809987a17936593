"""What ipex-fleet relies on in pyinfra, checked against the installed version: an upgrade that changes
any of it fails here, loudly and by name, before a deploy misbehaves. pyproject pins the range
(`pyinfra>=3.10,<4`); the internals below (the SSH client and its connect arguments, the command
builder) are used by ipex_fleet.remote for the heartbeat's and magic rollback's fresh connections."""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement

from .conftest import REPO


def test_the_installed_pyinfra_is_in_the_pinned_range():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = next(Requirement(d) for d in deps if Requirement(d).name == "pyinfra")
    assert pinned.specifier and version("pyinfra") in pinned.specifier, (version("pyinfra"), str(pinned))


def test_a_fresh_connection_is_configured_from_the_hosts_data_with_host_key_checking():
    """ipex_fleet.remote.connect_fresh: the SSH connector's paramiko arguments, handed to pyinfra's own
    SSHClient, which applies known_hosts and strict host-key checking from them."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.connectors.sshuserclient import SSHClient

    inventory = Inventory((["127.0.0.9"], {"ssh_known_hosts_file": "/nonexistent/known_hosts"}))
    State(inventory, Config())
    host = inventory.get_host("127.0.0.9")
    kwargs = host.connector.make_paramiko_kwargs()
    assert kwargs["hostname"] == "127.0.0.9"
    for key in ("_pyinfra_ssh_known_hosts_file", "_pyinfra_ssh_strict_host_key_checking", "timeout"):
        assert key in kwargs, f"make_paramiko_kwargs() no longer returns {key}"
    assert kwargs["_pyinfra_ssh_known_hosts_file"] == "/nonexistent/known_hosts"
    source = inspect.getsource(SSHClient)
    for key in ("_pyinfra_ssh_known_hosts_file", "_pyinfra_ssh_strict_host_key_checking"):
        assert key in source, f"pyinfra's SSHClient no longer reads {key}: fresh connections would skip it"


@pytest.mark.parametrize("where, name, parameters", [
    ("pyinfra.connectors.util", "make_unix_command_for_host", ("state", "host", "command")),
    ("pyinfra.api.arguments", "pop_global_arguments", ("state", "host", "kwargs")),
])
def test_the_command_builders_keep_their_signatures(where, name, parameters):
    module = __import__(where, fromlist=[name])
    found = tuple(inspect.signature(getattr(module, name)).parameters)
    assert found[:len(parameters)] == parameters, f"{where}.{name}{found}"


def test_the_connector_and_callbacks_we_use_are_there():
    from pyinfra.api.state import BaseStateCallback
    from pyinfra.connectors.ssh import SSHConnector

    assert "print_output" in inspect.signature(SSHConnector.run_shell_command).parameters
    assert hasattr(BaseStateCallback, "host_disconnect"), "the StoppedRunGuard resolves hosts on disconnect"
