"""The one place that runs commands on hosts through pyinfra's connection, bounded in time.

pyinfra's own `_timeout` covers only reading output; opening a channel on a dead connection can
block far longer. Every call here is also wrapped in a gevent timeout, and a timeout is told
apart from a dead host by a fresh TCP connect and SSH banner read.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import gevent
from paramiko.ssh_exception import SSHException
from pyinfra.api.arguments import pop_global_arguments
from pyinfra.api.command import StringCommand
from pyinfra.api.exceptions import ConnectError
from pyinfra.connectors.base import BaseConnector
from pyinfra.context import ctx_config

_RC_MARK = "__ipex_fleet_rc="
_CONNECTION_ERRORS = (OSError, EOFError, SSHException, TimeoutError, gevent.Timeout, ConnectError)


class HostUnreachable(Exception):
    """The host stopped answering: its connection is dead or it does not answer SSH."""


class StepTimeout(Exception):
    """The host answers SSH, but the command outran its timeout."""


class UploadFailed(Exception):
    """The host answered, but a file could not be written (a full disk, a permission)."""


class SessionLost(StepTimeout):
    """The SSH session ended before the command reported its exit code: its outcome is unknown."""


@dataclass(frozen=True)
class RemoteResult:
    returncode: int
    stdout_lines: tuple[str, ...]
    stderr_lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def stdout(self) -> str:
        return "\n".join(self.stdout_lines)

    @property
    def last_error(self) -> str:
        for stream in (self.stderr_lines, self.stdout_lines):
            lines = [l.strip() for l in stream if l.strip()]
            if lines:
                return lines[-1]
        return f"exit {self.returncode}"


def address(host: Any) -> tuple[str, int]:
    return str(host.data.get("ssh_hostname") or host.name), int(host.data.get("ssh_port") or 22)


def answers_ssh(host: Any, timeout: float = 5.0) -> bool:
    """Whether a new SSH session comes up, through pyinfra's own client and the host's ssh_config
    (HostName aliases, ports, ProxyJump): a raw socket to ssh_hostname would judge a bastion wrong."""
    try:
        return run_fresh(host, "true", timeout=timeout).ok
    except HostUnreachable:
        return False


# pyinfra's arguments that decide who runs a command and how (`--sudo`, host data `_sudo`, `_env`, ...).
PRIVILEGE_KEYS = ("_sudo", "_sudo_user", "_use_sudo_login", "_sudo_password", "_preserve_sudo_env", "_su_user",
                  "_use_su_login", "_preserve_su_env", "_su_shell", "_su_password", "_doas", "_doas_user", "_dzdo",
                  "_dzdo_user", "_shell_executable", "_env")


_PRIVILEGES: "weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], dict[str, Any]]]" = weakref.WeakKeyDictionary()


def privilege_args(host: Any) -> dict[str, Any]:
    """The host's privilege arguments as pyinfra resolves them for an operation (CLI, host data, config):
    a command run by hand through the connector gets none of them unless they are passed. Resolved
    once a host and run: pyinfra's resolution was a fifth of the controller's CPU in a change deploy
    (it runs for every remote command), and none of its sources changes during a run."""
    # What they are resolved from: the run, its config (pyinfra's context may swap it) and the
    # @deploy context the command runs in (its keyword arguments win over host data).
    sources = (host.state, ctx_config.get() if ctx_config.isset() else None, host.current_deploy_kwargs)
    cached = _PRIVILEGES.get(host)
    if cached is not None and all(a is b for a, b in zip(cached[0], sources)):
        return dict(cached[1])
    arguments, _found = pop_global_arguments(host.state, host, {})
    resolved = {k: arguments[k] for k in PRIVILEGE_KEYS if arguments.get(k)}  # type: ignore[literal-required]
    _PRIVILEGES[host] = (sources, resolved)
    return dict(resolved)


def run(host: Any, command: str, *, timeout: float, stream: bool = False) -> RemoteResult:
    """Run a shell command on `host`; its exit code is kept (pyinfra keeps only success).

    `stream` prints the output live with the host's prefix (progress of long steps).
    """
    try:
        with gevent.Timeout(timeout + 5):
            _ok, output = host.run_shell_command(_wrap(command), print_output=stream, _timeout=timeout,
                                                 **privilege_args(host))
    except _CONNECTION_ERRORS as exc:
        _raise_for(host, timeout, exc)
    return _exit_coded(output)


def _exit_coded(output: Any) -> RemoteResult:
    """The command's result with its exit code; SessionLost where the session ended before the command
    reported one (its outcome is unknown: never an exit code made up for it)."""
    stdout = list(output.stdout_lines)
    if not (stdout and stdout[-1].startswith(_RC_MARK)):
        raise SessionLost("the SSH session ended before the command reported its exit code")
    return _result(stdout, list(output.stderr_lines))


def _wrap(command: str) -> str:
    """Keep the exit code: pyinfra reports only success or failure."""
    return f"( {command}\n); printf '\\n{_RC_MARK}%d\\n' \"$?\""


def _result(stdout: list[str], stderr: list[str]) -> RemoteResult:
    rc = 255
    if stdout and stdout[-1].startswith(_RC_MARK):
        rc = int(stdout.pop()[len(_RC_MARK):])
        if stdout and stdout[-1] == "":
            stdout.pop()
    return RemoteResult(rc, tuple(stdout), tuple(stderr))


def put_bytes(host: Any, data: bytes | str, remote_path: str, *, timeout: float) -> None:
    """Upload bytes, or a local file given by its path, over pyinfra's SFTP."""
    try:
        with gevent.Timeout(timeout):
            if not host.put_file(BytesIO(data) if isinstance(data, bytes) else data, remote_path,
                                 **privilege_args(host)):
                raise UploadFailed(f"upload of {remote_path} failed (is the disk full?)")
    except _CONNECTION_ERRORS as exc:
        _raise_for(host, timeout, exc)


def _raise_for(host: Any, timeout: float, exc: BaseException) -> None:
    if answers_ssh(host):
        raise StepTimeout(f"command did not finish within {timeout:g}s") from None
    raise HostUnreachable(f"no answer from {address(host)[0]} (after {type(exc).__name__}); "
                          f"the host is down or cut off") from None


def fresh_connector(host: Any) -> BaseConnector:
    """A new connection to `host`: a new instance of the host's own connector, made and connected
    through pyinfra's connector API (`Connector(state, host)`, `connect()`), from the same host data
    (keys, known_hosts with strict checking, ssh_config). Close it with `close`."""
    connector = type(host.connector)(host.state, host)
    connector.connect()
    return connector


def close(connector: BaseConnector) -> None:
    """Disconnect, and close the SSH client the connector opened (its `disconnect` keeps it open for
    the run's reuse; a fresh connection has none)."""
    connector.disconnect()
    client = getattr(connector, "client", None)
    if client is not None:
        client.close()


def run_on(connector: BaseConnector, host: Any, command: str, timeout: float) -> RemoteResult:
    """One command through a connector's `run_shell_command`, with the host's privileges, keeping its
    exit code. Raises what the connection raises (see _CONNECTION_ERRORS), and SessionLost as run does."""
    _ok, output = connector.run_shell_command(StringCommand(_wrap(command)), _timeout=timeout,
                                              **privilege_args(host))
    return _exit_coded(output)


def run_fresh(host: Any, command: str, *, timeout: float) -> RemoteResult:
    """Run a command over a new SSH connection, not the run's own (magic rollback confirms this way:
    a generation that breaks new logins must not be confirmed through an old session)."""
    connector = None
    try:
        with gevent.Timeout(timeout + 5):
            connector = fresh_connector(host)
            return run_on(connector, host, command, timeout)
    except _CONNECTION_ERRORS as exc:
        raise HostUnreachable(f"no new SSH connection to {address(host)[0]} ({type(exc).__name__}: {exc})") from None
    finally:
        if connector is not None:
            close(connector)
