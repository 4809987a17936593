"""Where a lab keeps its files, and its recorded shape (lab.json)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ipex_fleet.common.errors import UserError

DEFAULT_ROOT = "/srv/ipex-fleet-lab"
DEFAULT_NET = "127.0.10"
# Paths a lab host's own root filesystem hides: the controller's files there are not the host's.
REPLACED_PATHS = ("/tmp", "/root", "/etc", "/var/lib", "/run", "/nix", "/proc", "/sys", "/dev")
_NET_RE = re.compile(r"^127\.(\d{1,3})\.(\d{1,3})$")


def check_net(net: str) -> str:
    """Lab addresses must stay on loopback: 127.X.Y, hosts at .1 to .254."""
    m = _NET_RE.fullmatch(net)
    if not m or not all(0 <= int(g) <= 255 for g in m.groups()):
        raise UserError(f"--net {net!r} is not a loopback /24 like 127.0.10; lab hosts live on 127.0.0.0/8 only")
    return net


def check_root(root: str) -> str:
    path = os.path.abspath(root)
    for replaced in REPLACED_PATHS:
        if path == replaced or path.startswith(replaced + "/"):
            raise UserError(f"lab root {path} lies under {replaced}, which every lab host replaces; "
                            f"use a path like {DEFAULT_ROOT}")
    return path


@dataclass(frozen=True)
class LabLayout:
    root: Path

    @classmethod
    def at(cls, root: str | None = None) -> "LabLayout":
        return cls(Path(check_root(root or os.environ.get("IPEX_FLEET_LAB_ROOT") or DEFAULT_ROOT)))

    @property
    def spec_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.ssh_dir / "config"

    @property
    def flake_dir(self) -> Path:
        return self.root / "flake"

    @property
    def shared_dir(self) -> Path:
        """Mounted into every host at the same path (the lab's bench lock: its hosts share two cores)."""
        return self.root / "shared"

    @property
    def nix_conf_dir(self) -> Path:
        """NIX_CONF_DIR for controller-side Nix: the machine's own nix.conf stays untouched."""
        return self.root / "nix-conf"

    @property
    def cache_dir(self) -> Path:
        """The lab's binary cache, served over HTTP on loopback."""
        return self.root / "cache"

    @property
    def cache_keys(self) -> tuple[Path, Path]:
        return self.root / "cache-keys" / "secret", self.root / "cache-keys" / "public"

    def host_dir(self, name: str) -> Path:
        return self.root / "hosts" / name

    def host_settings(self, name: str) -> Path:
        return self.flake_dir / "hosts" / f"{name}.json"


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str


@dataclass(frozen=True)
class LabSpec:
    net: str
    count: int
    deploy_user: str | None = None  # a non-root user with sudo that deploys (`lab up --deploy-user`)

    @property
    def hosts(self) -> tuple[LabHost, ...]:
        return tuple(LabHost(f"host{i}", f"{self.net}.{i}") for i in range(1, self.count + 1))

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise UserError(f"no lab host named {name!r} (the lab has: {known})")

    @property
    def cache_address(self) -> tuple[str, int]:
        """The cache server's address: .254 of the lab's /24, which no host takes."""
        return f"{self.net}.254", 5000

    @property
    def nft_table(self) -> str:
        return "ipexfleet_" + self.net.replace(".", "_")


def read_spec(layout: LabLayout) -> LabSpec | None:
    try:
        data = json.loads(layout.spec_file.read_text())
    except FileNotFoundError:
        return None
    return LabSpec(net=data["net"], count=int(data["count"]), deploy_user=data.get("deploy_user"))


def write_spec(layout: LabLayout, spec: LabSpec) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    tmp = layout.spec_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"net": spec.net, "count": spec.count, "deploy_user": spec.deploy_user},
                              indent=2) + "\n")
    os.replace(tmp, layout.spec_file)
