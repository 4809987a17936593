"""Lab knob `gpu`: the PCI devices and render nodes a lab host shows, as a real box of that kind
does, so that `ipex-fleet enroll` reads a lab host as it reads real hardware.

The controller writes the devices as sysfs does (`<slot>/{vendor,device,class}`, 0x-prefixed hex)
under the lab's shared directory; at boot the host's lab-hardware.service bind-mounts them over
/sys/bus/pci/devices and makes the render nodes (char 226:128+) under /dev/dri. Without the knob
a host shows the machine's own devices, as before.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Dev:
    slot: str
    vendor: int
    device: int
    klass: int


# What every box has beside its GPU: host bridge, SATA, NVMe, Ethernet.
_BASE = (Dev("0000:00:00.0", 0x8086, 0x1237, 0x060000), Dev("0000:00:1f.2", 0x8086, 0x2922, 0x010601),
         Dev("0000:01:00.0", 0x144D, 0xA808, 0x010802), Dev("0000:02:00.0", 0x8086, 0x1533, 0x020000))
# A server's BMC console (ASPEED AST2500): a VGA controller that is not an accelerator.
_BMC = Dev("0000:05:00.0", 0x1A03, 0x2000, 0x030000)

# name -> (devices beside the base ones, render nodes)
GPUS: dict[str, tuple[tuple[Dev, ...], int]] = {
    "arc-a770": ((Dev("0000:03:00.0", 0x8086, 0x56A0, 0x030000), Dev("0000:04:00.0", 0x8086, 0x4F90, 0x040300)), 1),
    "arc-b580": ((Dev("0000:03:00.0", 0x8086, 0xE20B, 0x030000), Dev("0000:04:00.0", 0x8086, 0xE2F7, 0x040300)), 1),
    "flex-170": ((_BMC, Dev("0000:3a:00.0", 0x8086, 0x56C0, 0x038000)), 1),
    "max-1550": ((_BMC, Dev("0000:29:00.0", 0x8086, 0x0BD5, 0x038000)), 1),
    "h100": ((_BMC, Dev("0000:18:00.0", 0x10DE, 0x2330, 0x030200)), 0),
    "mi300x": ((_BMC, Dev("0000:11:00.0", 0x1002, 0x74A1, 0x038000)), 1),  # not one of the fleet's: a warning
    "cpu": ((_BMC,), 0),
}


def tree(root: Path, name: str) -> Path:
    return root / "hardware" / name


def write(root: Path, name: str, gpu: str | None) -> None:
    """The host's fake devices under `root` (the lab's shared directory); none without the knob."""
    base = tree(root, name)
    shutil.rmtree(base, ignore_errors=True)
    if gpu is None:
        return
    devices, render = GPUS[gpu]
    for d in (*_BASE, *devices):
        folder = base / "pci" / d.slot
        folder.mkdir(parents=True)
        (folder / "vendor").write_text(f"0x{d.vendor:04x}\n")
        (folder / "device").write_text(f"0x{d.device:04x}\n")
        (folder / "class").write_text(f"0x{d.klass:06x}\n")
    (base / "render.json").write_text(json.dumps([128 + i for i in range(render)]) + "\n")
