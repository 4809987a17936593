#!/usr/bin/python3
"""What a lab host's firmware and kernel show of its hardware, when the lab gives it some (knob `gpu`):
the PCI devices the controller wrote (sysfs' layout) bind-mounted over /sys/bus/pci/devices, and
the GPU's render nodes under /dev/dri, as the kernel makes them (char 226:128+, group render).
Without the knob (no devices written for this host) the host shows the machine's own devices.
"""

import grp
import json
import os
import shutil
import subprocess
import sys

SOURCE_FILE = "/etc/ipex-fleet-lab/hardware-dir"


def main():
    try:
        source = open(SOURCE_FILE).read().strip()
    except FileNotFoundError:
        return 0
    pci = os.path.join(source, "pci")
    if not os.path.isdir(pci):
        return 0
    # A copy of this boot's devices: a knob changed on the controller meanwhile shows from the next boot.
    booted = "/run/lab-hardware/pci"
    shutil.rmtree(booted, ignore_errors=True)
    shutil.copytree(pci, booted)
    subprocess.run(["mount", "--bind", "-o", "ro", booted, "/sys/bus/pci/devices"], check=True)
    os.makedirs("/dev/dri", exist_ok=True)
    try:
        render_gid = grp.getgrnam("render").gr_gid
    except KeyError:  # NixOS and udev-managed systems have it; Debian's minbase has not
        subprocess.run(["groupadd", "--system", "render"], check=True)
        render_gid = grp.getgrnam("render").gr_gid
    for minor in json.load(open(os.path.join(source, "render.json"))):
        node = f"/dev/dri/renderD{minor}"
        if not os.path.exists(node):
            os.mknod(node, 0o600 | 0o020000, os.makedev(226, minor))
        os.chown(node, 0, render_gid)
        os.chmod(node, 0o660)  # crw-rw---- root render, as udev leaves it
    print(f"lab-hardware: PCI devices from {pci}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
