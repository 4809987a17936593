#!/usr/bin/python3
"""What a NixOS machine's firmware side does at boot, for an ipex-fleet lab host.

stage2: on a host's very first boot, when `lab up` installed a first generation into its store
        (its system profile, no boot entry yet), first runs that generation's
        `switch-to-configuration boot`, as nixos-install does in the new system before its first
        boot; then, as systemd-boot picks an entry (the default, unless its tries are spent: then the newest
        entry that still has tries or is blessed) and counts a try down by renaming it
        (name+LEFT-DONE.conf); then, as NixOS stage 2 does, points /run/booted-system at the
        entry's generation and runs that generation's `activate`.
bless:  as systemd-bless-boot does once boot-complete.target is reached: the booted entry loses
        its counter (name.conf), and boots as a good entry from then on.
"""

import os
import re
import subprocess
import sys

ENTRIES = "/boot/loader/entries"
LOADER_CONF = "/boot/loader/loader.conf"
BOOTED_ENTRY = "/run/lab-boot/entry"
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
_NAME = re.compile(r"^(?P<id>nixos-generation-(?P<gen>\d+))(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf$")


def entries():
    out = []
    for name in os.listdir(ENTRIES) if os.path.isdir(ENTRIES) else []:
        m = _NAME.match(name)
        if m:
            left = int(m["left"]) if m["left"] is not None else None
            out.append({"file": name, "id": m["id"] + ".conf", "gen": int(m["gen"]), "left": left,
                        "done": int(m["done"] or 0)})
    return out


def default_id():
    try:
        for line in open(LOADER_CONF):
            key, _, value = line.strip().partition(" ")
            if key == "default":
                return value.strip()
    except FileNotFoundError:
        pass
    return None


def choose(found):
    """The default entry, unless it is out of tries: bad entries sort last (systemd-boot)."""
    ordered = sorted(found, key=lambda e: (e["left"] == 0, -e["gen"]))
    default = next((e for e in found if e["id"] == default_id()), None)
    if default is not None and default["left"] != 0:
        return default
    return ordered[0] if ordered else None


def toplevel_of(entry_file):
    for line in open(os.path.join(ENTRIES, entry_file)):
        key, _, value = line.strip().partition(" ")
        if key == "options":
            for option in value.split():
                if option.startswith("init="):
                    return os.path.dirname(option[len("init="):])
    return None


def atomic_symlink(target, link):
    tmp = f"{link}.tmp-{os.getpid()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def install_bootloader():
    """nixos-install's last step, for a generation installed into the store before the first boot."""
    if entries() or not os.path.exists(SYSTEM_PROFILE):
        return 0
    stc = os.path.join(SYSTEM_PROFILE, "bin", "switch-to-configuration")
    print(f"lab-boot: installing the boot loader of {os.path.realpath(SYSTEM_PROFILE)}")
    return subprocess.run([stc, "boot"]).returncode


def stage2():
    if install_bootloader() != 0:
        print("lab-boot: installing the boot loader failed", file=sys.stderr)
        return 1
    entry = choose(entries())
    if entry is None:
        print("lab-boot: no boot entry yet (a host before its first generation)")
        return 0
    name = entry["file"]
    if entry["left"] is not None and entry["left"] > 0:  # count this try down, before booting it
        name = f"{entry['id'][:-5]}+{entry['left'] - 1}-{entry['done'] + 1}.conf"
        os.rename(os.path.join(ENTRIES, entry["file"]), os.path.join(ENTRIES, name))
    os.makedirs(os.path.dirname(BOOTED_ENTRY), exist_ok=True)
    with open(BOOTED_ENTRY, "w") as f:
        f.write(name + "\n")
    toplevel = toplevel_of(name)
    print(f"lab-boot: booting {name} ({toplevel})")
    atomic_symlink(toplevel, "/run/booted-system")
    code = subprocess.run([os.path.join(toplevel, "activate")]).returncode
    if code != 0:
        # NixOS' stage 2 reports a failing activation and boots on: no unit is left failed by it (a
        # failed `lab-stage2.service` would fail every later health check of this boot, which the real
        # system never does). The boot check and the generation's own units say what is broken.
        print(f"lab-boot: activating {name} exited {code}; booting on, as NixOS' stage 2 does", file=sys.stderr)
    return 0


def bless():
    try:
        name = open(BOOTED_ENTRY).read().strip()
    except FileNotFoundError:
        return 0
    m = _NAME.match(name)
    if m and m["left"] is not None and os.path.exists(os.path.join(ENTRIES, name)):
        os.rename(os.path.join(ENTRIES, name), os.path.join(ENTRIES, m["id"] + ".conf"))
        print(f"lab-boot: {m['id']}.conf is good")
        with open(BOOTED_ENTRY, "w") as f:
            f.write(m["id"] + ".conf\n")
    return 0


if __name__ == "__main__":
    sys.exit({"stage2": stage2, "bless": bless}[sys.argv[1]]())
