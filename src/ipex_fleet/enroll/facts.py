"""What enroll reads from a box over SSH: its hardware configuration, PCI devices, render nodes,
CPUs, memory, disks and firmware. Each read is one command through the project's one remote-command
helper (ipex_fleet.remote), with a timeout; parsing is pure and tested apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ipex_fleet.common.errors import UserError
from ipex_fleet.enroll.pciids import PciDevice, parse_sysfs_line

# Reads, each printed as plain lines (sysfs gives 0x-prefixed hex ids).
PCI_COMMAND = ("for d in /sys/bus/pci/devices/*; do [ -r \"$d/class\" ] || continue; "
               "printf '%s %s %s %s\\n' \"${d##*/}\" \"$(cat \"$d/vendor\")\" \"$(cat \"$d/device\")\" "
               "\"$(cat \"$d/class\")\"; done")
RENDER_COMMAND = "for n in /dev/dri/renderD*; do [ -e \"$n\" ] && echo \"$n\"; done; true"
SYSTEM_COMMAND = ("hostname; nproc; awk '/^MemTotal:/ {print $2}' /proc/meminfo; "  # kB
                  "if [ -d /sys/firmware/efi ]; then echo efi; else echo bios; fi; "
                  ". /etc/os-release 2>/dev/null; echo \"${ID:-unknown}\"")
# Whole disks, not partitions or virtual devices: name, size in 512-byte sectors, model.
DISKS_COMMAND = ("for d in /sys/block/*; do n=${d##*/}; case $n in loop*|ram*|zram*|dm-*|md*|sr*|nbd*|fd*) "
                 "continue;; esac; printf '%s %s %s\\n' \"$n\" \"$(cat \"$d/size\")\" "
                 "\"$(cat \"$d/device/model\" 2>/dev/null | tr -s ' \\t' '__' | sed 's/_$//')\"; done")
HARDWARE_COMMAND = "nixos-generate-config --show-hardware-config"
TIMEOUT = 60.0
HARDWARE_TIMEOUT = 180.0  # it scans every device and mount


@dataclass(frozen=True)
class Disk:
    name: str
    size_bytes: int
    model: str


@dataclass(frozen=True)
class HardwareFacts:
    hostname: str
    os_id: str
    cpus: int
    memory_bytes: int
    efi: bool
    disks: tuple[Disk, ...]
    pci: tuple[PciDevice, ...]
    render_nodes: tuple[str, ...]
    hardware_configuration: str

    @property
    def mounts_root(self) -> bool:
        return 'fileSystems."/"' in self.hardware_configuration


def parse_system(lines: list[str] | tuple[str, ...]) -> tuple[str, int, int, bool, str]:
    """(hostname, CPUs, memory in bytes, EFI firmware, os-release ID) from SYSTEM_COMMAND's lines (memory in kB)."""
    values = [l.strip() for l in lines if l.strip()]
    if len(values) != 5 or not values[1].isdigit() or not values[2].isdigit():
        raise ValueError(f"unexpected system facts: {values}")
    return values[0], int(values[1]), int(values[2]) * 1024, values[3] == "efi", values[4]


def parse_disks(lines: list[str] | tuple[str, ...]) -> tuple[Disk, ...]:
    disks = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) > 0:
            disks.append(Disk(parts[0], int(parts[1]) * 512, parts[2] if len(parts) > 2 else ""))
    return tuple(disks)


_NIX_HEADER = re.compile(r"^\{[^}]*\}:", re.MULTILINE)


def check_hardware_configuration(text: str, host: str) -> str:
    """nixos-generate-config's output is a module: a function of `{ config, lib, pkgs, modulesPath, ... }`."""
    if not _NIX_HEADER.search(text):
        first = next((l for l in text.splitlines() if l.strip()), "nothing")
        raise UserError(f"{host}: `{HARDWARE_COMMAND}` did not print a NixOS module (it printed: {first[:120]})")
    return text if text.endswith("\n") else text + "\n"


def read(host: Any, name: str) -> HardwareFacts:
    """Every fact, one bounded command each; a failed read is one line naming the command."""
    from ipex_fleet import remote

    def lines(command: str, what: str, timeout: float = TIMEOUT) -> tuple[str, ...]:
        try:
            result = remote.run(host, command, timeout=timeout)
        except (remote.HostUnreachable, remote.StepTimeout) as exc:
            raise UserError(f"{name}: reading its {what} failed: {exc}") from None
        if not result.ok:
            if what == "hardware configuration" and result.returncode == 127:
                raise UserError(f"{name}: has no nixos-generate-config: install NixOS on it first "
                                f"(or boot the NixOS installer, mount the system at /mnt and run enroll there)")
            raise UserError(f"{name}: reading its {what} failed: {result.last_error}")
        return result.stdout_lines

    try:
        hostname, cpus, memory, efi, os_id = parse_system(lines(SYSTEM_COMMAND, "system facts"))
        pci = tuple(parse_sysfs_line(l) for l in lines(PCI_COMMAND, "PCI devices") if l.strip())
    except ValueError as exc:
        raise UserError(f"{name}: unexpected answer: {exc}") from None
    return HardwareFacts(
        hostname=hostname, os_id=os_id, cpus=cpus, memory_bytes=memory, efi=efi,
        disks=parse_disks(lines(DISKS_COMMAND, "disks")), pci=pci,
        render_nodes=tuple(l.strip() for l in lines(RENDER_COMMAND, "render nodes") if l.strip()),
        hardware_configuration=check_hardware_configuration(
            "\n".join(lines(HARDWARE_COMMAND, "hardware configuration", HARDWARE_TIMEOUT)), name),
    )
