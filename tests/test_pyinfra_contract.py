"""What ipex-fleet relies on in pyinfra, checked against the installed version: an upgrade that changes
any of it fails here, loudly and by name, before a deploy misbehaves. pyproject pins the range
(`pyinfra>=3.10,<4`). ipex_fleet.remote makes the heartbeat's and magic rollback's fresh connections
through the connector API (a new instance of the host's connector, `connect`, `run_shell_command`,
`disconnect`), and closes the SSH client the SSH connector keeps in `client`."""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version

import pytest
from packaging.requirements import Requirement

from .conftest import REPO


def test_the_installed_pyinfra_is_in_the_pinned_range():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["controller"]
    pinned = next(Requirement(d) for d in deps if Requirement(d).name == "pyinfra")
    assert pinned.specifier and version("pyinfra") in pinned.specifier, (version("pyinfra"), str(pinned))


def test_a_fresh_connection_is_a_new_connector_of_the_hosts_own_kind_with_host_key_checking():
    """ipex_fleet.remote.fresh_connector: `type(host.connector)(state, host)`, configured from the host's
    data, whose SSH client applies known_hosts and strict host-key checking; `close` closes `client`."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.connectors.ssh import SSHConnector
    from pyinfra.connectors.sshuserclient import SSHClient

    from ipex_fleet.remote import close

    inventory = Inventory((["127.0.0.9"], {"ssh_known_hosts_file": "/nonexistent/known_hosts"}))
    state = State(inventory, Config())
    host = inventory.get_host("127.0.0.9")
    fresh = type(host.connector)(state, host)
    assert isinstance(fresh, SSHConnector) and fresh is not host.connector
    kwargs = fresh.make_paramiko_kwargs()
    assert kwargs["hostname"] == "127.0.0.9"
    assert kwargs["_pyinfra_ssh_known_hosts_file"] == "/nonexistent/known_hosts"
    assert "_pyinfra_ssh_strict_host_key_checking" in kwargs
    source = inspect.getsource(SSHClient)
    for key in ("_pyinfra_ssh_known_hosts_file", "_pyinfra_ssh_strict_host_key_checking"):
        assert key in source, f"pyinfra's SSHClient no longer reads {key}: fresh connections would skip it"
    assert "self.client = SSHClient()" in inspect.getsource(SSHConnector._connect), \
        "SSHConnector no longer keeps its paramiko client in `client`: remote.close would leak connections"

    class Client:
        closed = False

        def close(self):
            self.closed = True

    fresh.client = Client()
    close(fresh)
    assert fresh.client.closed


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
    from pyinfra.connectors.base import BaseConnector
    from pyinfra.connectors.ssh import SSHConnector

    assert "print_output" in inspect.signature(SSHConnector.run_shell_command).parameters
    assert tuple(inspect.signature(BaseConnector.__init__).parameters)[1:3] == ("state", "host")
    for method in ("connect", "disconnect", "run_shell_command", "put_file"):
        assert callable(getattr(BaseConnector, method, None)), f"BaseConnector.{method} is gone"
    assert hasattr(BaseStateCallback, "host_disconnect"), "the StoppedRunGuard resolves hosts on disconnect"


def test_privilege_arguments_are_resolved_once_a_run_and_follow_the_deploy_context(monkeypatch):
    """ipex_fleet.remote.privilege_args: what pyinfra's pop_global_arguments resolves for the host
    (host data `_sudo`, config, a @deploy's keyword arguments), asked once a host and run, and asked
    again where its sources differ: a @deploy context, or another run."""
    from pyinfra.api import Config, Inventory, State

    from ipex_fleet import remote

    calls: list[str] = []
    real = remote.pop_global_arguments

    def counted(state, host, kwargs):
        calls.append(host.name)
        return real(state, host, kwargs)

    monkeypatch.setattr(remote, "pop_global_arguments", counted)
    inventory = Inventory(([("@local", {"_sudo": True})], {}))
    state = State(inventory, Config())
    host = inventory.get_host("@local")
    base = {"_sudo": True, "_shell_executable": "sh"}
    first = remote.privilege_args(host)
    assert first == base
    first["_sudo_user"] = "changed by a caller"  # a copy: the cached answer stays as resolved
    assert remote.privilege_args(host) == base and calls == ["@local"]
    with host.deploy("a role", kwargs={"_sudo_user": "ops"}, data=None):
        assert remote.privilege_args(host) == {**base, "_sudo_user": "ops"}
    assert remote.privilege_args(host) == base and len(calls) == 3
    State(inventory, Config(DOAS=True))  # another run over the same inventory: its own config
    assert host.state is not state and remote.privilege_args(host) == {**base, "_doas": True}
