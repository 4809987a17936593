"""`ipex-fleet enroll HOST`: read a NixOS box's hardware over SSH and add it to the fleet as
flake/hosts/<name>/{default.nix,hardware-configuration.nix} plus an inventory entry.

Bad input is refused in one line before any host is touched; nothing is written before every
check passed (and nothing at all with --dry)."""

from __future__ import annotations

import argparse
import ipaddress
import re
from pathlib import Path

from ipex_fleet.common.errors import UserError
from ipex_fleet.enroll import facts as hwfacts
from ipex_fleet.enroll.connect import SshOptions, connect
from ipex_fleet.enroll.pciids import Identified, identify
from ipex_fleet.enroll.render import HostPlan, plan, render_host, render_inventory_entry
from ipex_fleet.enroll.write import check_folder, check_inventory, inventory_edit, write_atomic

_ADDRESS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enroll", help="add a NixOS box to the fleet: read its hardware, write its host folder",
                       description="Reads HOST's hardware over SSH (nixos-generate-config --show-hardware-config, "
                                   "PCI devices, render nodes, CPUs, memory, disks), recognises its accelerator and "
                                   "writes FLAKE/hosts/NAME/default.nix and hardware-configuration.nix and an entry "
                                   "in INVENTORY. An existing host is refused unless --force.")
    p.add_argument("host", metavar="HOST", help="address or ssh_config name of the box")
    p.add_argument("--name", help="the host's name in the flake and inventory (default: the box's hostname)")
    p.add_argument("--ssh-user", help="SSH user (default: yours, or ssh_config's)")
    p.add_argument("--ssh-port", type=int, help="SSH port")
    p.add_argument("--ssh-key", help="private key file")
    p.add_argument("--ssh-config", help="an ssh_config file (aliases, ProxyJump)")
    p.add_argument("--known-hosts", help="known_hosts file (host-key checking stays on)")
    p.add_argument("--sudo", action="store_true", help="run the reads with sudo (a non-root --ssh-user)")
    p.add_argument("--flake", default="flake", help="the flake directory (default: flake)")
    p.add_argument("--inventory", default="inventories/prod.py", help="the Python inventory to add the host to")
    p.add_argument("--group", help="the inventory group (default: its last waveN group, else `enrolled`)")
    p.add_argument("--metrics-from", action="append", default=[], metavar="ADDRESS",
                   help="an address that may scrape its node exporter (metrics.allowFrom); repeatable")
    p.add_argument("--dry", action="store_true", help="print what would be written; write nothing")
    p.add_argument("--force", action="store_true", help="overwrite an existing host folder")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """Every argument, before any connection."""
    if "@" in args.host:
        raise UserError(f"HOST {args.host!r}: give the user with --ssh-user, not user@host")
    if not _ADDRESS_RE.fullmatch(args.host):
        raise UserError(f"HOST {args.host!r} is not an address or host name")
    if args.name is not None and not _NAME_RE.fullmatch(args.name):
        raise UserError(f"--name {args.name!r}: use lower-case letters, digits and '-' (a NixOS host name, up to 63)")
    if args.ssh_user is not None and not _USER_RE.fullmatch(args.ssh_user):
        raise UserError(f"--ssh-user {args.ssh_user!r} is not a user name")
    if args.ssh_port is not None and not 0 < args.ssh_port < 65536:
        raise UserError(f"--ssh-port {args.ssh_port}: give a port from 1 to 65535")
    for flag, path in (("--ssh-key", args.ssh_key), ("--ssh-config", args.ssh_config),
                       ("--known-hosts", args.known_hosts)):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file")
    if args.group is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,62}", args.group):
        raise UserError(f"--group {args.group!r} is not a Python name")
    for address in args.metrics_from:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise UserError(f"--metrics-from {address!r} is not an IP address or network") from None
    flake = Path(args.flake)
    if not (flake / "flake.nix").is_file() or not (flake / "hosts").is_dir():
        raise UserError(f"--flake {args.flake}: no flake.nix with a hosts/ folder there (run from the repository root)")
    if args.name is not None:
        check_folder(flake / "hosts", args.name, args.force)
    check_inventory(Path(args.inventory))


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    ssh = SshOptions(args.ssh_user, args.ssh_port, args.ssh_key, args.ssh_config, args.known_hosts, args.sudo)
    host = connect(args.host, ssh)
    try:
        found_facts = hwfacts.read(host, args.host)
    finally:
        host.disconnect()
    name = args.name or found_facts.hostname.split(".")[0].lower()
    if not _NAME_RE.fullmatch(name):
        raise UserError(f"{args.host}'s hostname {found_facts.hostname!r} is not a usable host name: give --name NAME")
    hosts_dir = Path(args.flake) / "hosts"
    folder = check_folder(hosts_dir, name, args.force)
    found = identify(found_facts.pci)
    host_plan = plan(name, args.host, found_facts, found)
    files = render_host(host_plan, found_facts, tuple(args.metrics_from))
    entry = render_inventory_entry(host_plan, ssh)
    edit = inventory_edit(Path(args.inventory), name, entry, args.group)

    _say_found(args.host, name, found_facts, found, host_plan)
    if args.dry:
        for file, text in files.items():
            print(f"\n--- {folder / file} (not written: --dry)\n{text}", end="")
        print(f"\n--- {edit.path}, group {edit.group} (not written: --dry)\n"
              + (entry if edit.text is not None else f"(already lists {name})\n"), end="")
        return 0
    for file, text in files.items():
        write_atomic(folder / file, text)
    if edit.text is not None:
        write_atomic(edit.path, edit.text)
    listed = f"added to group {edit.group}" if edit.text is not None else "already listed there, left as it is"
    print(f"wrote {folder}/default.nix and {folder}/hardware-configuration.nix; {edit.path}: {name} {listed}")
    print(f"next: ipex-fleet plan {edit.path} --limit {name}")
    print(f"then: pyinfra {edit.path} deploys/prod.py -y --limit {name}")
    return 0


def _say_found(address: str, name: str, f: hwfacts.HardwareFacts, found: Identified, p: HostPlan) -> None:
    devices = "; ".join(f"{m.name} ({d.ids} at {d.slot})" for d, m in found.models) or "none"
    disks = ", ".join(f"{d.name} {d.size_bytes / 1e9:.0f} GB" for d in f.disks) or "none found"
    print(f"{address} as {name} (hostname {f.hostname}, {f.os_id}, {'EFI' if f.efi else 'BIOS'} firmware):")
    print(f"  accelerator {p.accelerator}: {devices}")
    print(f"  render nodes: {', '.join(f.render_nodes) or 'none'}; {f.cpus} CPUs, {f.memory_bytes / 2**30:.1f} GiB "
          f"memory; disks: {disks}")
    print(f"  profile {p.profile}" + (f", device selector {p.device_selector}" if p.device_selector else "")
          + (f", {p.min_devices} devices required" if p.min_devices > 1 else "")
          + (f", ComfyUI {' '.join(f'{k}={v}' for k, v in p.optimisation.items())}" if p.optimisation else ""))
    for w in p.warnings:
        print(f"  warning: {w}")
