"""Keys and configs of a lab: the controller's client key, each host's sshd, known_hosts."""

from __future__ import annotations

import os
from pathlib import Path

from ipex_fleet.runner import run
from ipex_fleet.lab.layout import LabHost, LabLayout, LabSpec


def ensure_key(path: Path, comment: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], timeout=30)


def host_key_pub(layout: LabLayout, host: LabHost) -> Path:
    return layout.host_dir(host.name) / "upper" / "etc" / "ssh" / "ssh_host_ed25519_key.pub"


def sshd_config(host: LabHost) -> str:
    """A drop-in for the host's own sshd (Debian's sshd_config includes sshd_config.d first)."""
    return "\n".join([
        f"ListenAddress {host.address}:22",  # never 0.0.0.0: the hosts share the machine's network
        "HostKey /etc/ssh/ssh_host_ed25519_key",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UseDNS no",
        "MaxStartups 200:30:400",
        "MaxSessions 100",
        "ClientAliveInterval 5",
        "ClientAliveCountMax 3",
        "",
    ])


def client_config(layout: LabLayout, spec: LabSpec) -> str:
    """An ssh_config for ssh(1), `nix copy` (NIX_SSHOPTS) and pyinfra (keepalives)."""
    blocks = []
    for host in spec.hosts:
        blocks += [
            f"Host {host.name} {host.address}",
            f"    HostName {host.address}",
            "    User root",
            f"    IdentityFile {layout.client_key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {layout.known_hosts}",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    ConnectTimeout 5",
            "    ServerAliveInterval 2",
            "    ServerAliveCountMax 3",
            "",
        ]
    return "\n".join(blocks)


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_client_side(layout: LabLayout, spec: LabSpec) -> None:
    ensure_key(layout.client_key, "ipex-fleet-lab-controller")
    write_file(layout.authorized_keys, layout.client_key.with_suffix(".pub").read_text(), 0o600)
    write_file(layout.ssh_config, client_config(layout, spec), 0o600)
    lines = []
    for host in spec.hosts:
        pub = host_key_pub(layout, host)
        if pub.exists():
            keytype, key = pub.read_text().split()[:2]
            lines.append(f"{host.address} {keytype} {key}")
    write_file(layout.known_hosts, "\n".join(lines) + "\n")


def write_host_side(layout: LabLayout, host: LabHost) -> None:
    """The host's identity, written into its overlay while it is stopped: host key, sshd, root's key."""
    upper = layout.host_dir(host.name) / "upper"
    ensure_key(upper / "etc" / "ssh" / "ssh_host_ed25519_key", f"{host.name}-hostkey")
    write_file(upper / "etc" / "ssh" / "sshd_config.d" / "10-lab.conf", sshd_config(host))
    write_file(upper / "root" / ".ssh" / "authorized_keys", layout.authorized_keys.read_text(), 0o600)
