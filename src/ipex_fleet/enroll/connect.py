"""One pyinfra host for enroll, connected by pyinfra's own SSH connector: the user's keys,
ssh_config (aliases, ProxyJump bastions), known_hosts with host-key checking on, and sudo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ipex_fleet.common.errors import UserError

CONNECT_TIMEOUT = 20


@dataclass(frozen=True)
class SshOptions:
    user: str | None = None
    port: int | None = None
    key: str | None = None
    config_file: str | None = None
    known_hosts_file: str | None = None
    sudo: bool = False

    def host_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ssh_strict_host_key_checking": "yes", "ssh_connect_timeout": CONNECT_TIMEOUT}
        for key, value in (("ssh_user", self.user), ("ssh_port", self.port), ("ssh_key", self.key),
                           ("ssh_config_file", self.config_file), ("ssh_known_hosts_file", self.known_hosts_file)):
            if value is not None:
                data[key] = value
        if self.sudo:
            data["_sudo"] = True
        return data


def connect(address: str, options: SshOptions) -> Any:
    """A connected pyinfra Host for `address`, or one line saying why not."""
    import logging

    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.exceptions import ConnectError

    # pyinfra logs its own connect lines; enroll prints its own one-line outcome instead.
    logging.getLogger("pyinfra").setLevel(logging.CRITICAL)
    inventory = Inventory(([(address, options.host_data())], {}))
    state = State(inventory, Config(CONNECT_TIMEOUT=CONNECT_TIMEOUT))
    host = inventory.get_host(address)
    try:
        host.connect(reason="enroll", show_errors=False, raise_exceptions=True)
    except ConnectError as exc:
        raise UserError(f"cannot connect to {address} over SSH: {exc.args[0] if exc.args else exc}; "
                        f"check --ssh-user, --ssh-key and that its host key is in known_hosts") from None
    state.activate_host(host)
    return host
