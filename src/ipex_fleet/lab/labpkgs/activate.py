#!/usr/bin/python3 -u
"""switch-to-configuration (and `activate`) of an ipex-fleet lab generation: NixOS's, through systemd.

As NixOS does:
- `switch` and `boot` install the boot loader entries: one per generation of the system profile,
  new ones with boot-counting tries, the profile's current one the default;
- activation stops the units the new generation drops, links the generation's /etc (through
  /etc/static), points /run/current-system at it, reloads systemd, then restarts changed units
  and starts new ones;
- exit codes: 1 usage, 2 an activation script snippet failed, 4 units failed, 100 reboot required.

Run as `activate` (by the host's stage 2 at boot), it activates without stopping anything.
"""

import filecmp
import json
import os
import re
import socket
import subprocess
import sys
import time

_SELF = os.path.realpath(__file__)
# bin/switch-to-configuration, or `activate` at the generation's top.
TOPLEVEL = os.path.dirname(_SELF) if os.path.basename(_SELF) == "activate" else os.path.dirname(os.path.dirname(_SELF))
ACTIONS = ("switch", "boot", "test", "dry-activate")
PROFILE = "/nix/var/nix/profiles/system"
ENTRIES = "/boot/loader/entries"
LOADER_CONF = "/boot/loader/loader.conf"
BOOT_TRIES = 3
UNIT_DIR = "etc/systemd/system"
SSH_LOCK = "etc/ssh/sshd_config.d/00-lab-lock.conf"
SERVICE_PORTS = {"ollama.service": 11434, "comfyui.service": 8188}
_ENTRY = re.compile(r"^nixos-generation-(\d+)(\+\d+(-\d+)?)?\.conf$")
_LINK = re.compile(r"^system-(\d+)-link$")


def systemctl(*args, check=False):
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120, check=check)


def atomic_symlink(target, link):
    tmp = f"{link}.tmp-{os.getpid()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def load_settings():
    with open(os.path.join(TOPLEVEL, "settings.json")) as f:
        return json.load(f)


def units_of(toplevel):
    d = os.path.join(toplevel, UNIT_DIR) if toplevel else None
    return sorted(os.listdir(d)) if d and os.path.isdir(d) else []


# -- the boot loader (systemd-boot-builder's part) ------------------------------------------------


def install_bootloader():
    """One entry per generation; new entries count tries; the profile's current one is the default."""
    os.makedirs(ENTRIES, exist_ok=True)
    generations = {}
    profiles = os.path.dirname(PROFILE)
    for name in os.listdir(profiles):
        m = _LINK.match(name)
        if m:
            generations[int(m.group(1))] = os.path.realpath(os.path.join(profiles, name))
    existing = {}
    for name in os.listdir(ENTRIES):
        m = _ENTRY.match(name)
        if m:
            existing[int(m.group(1))] = name
    for gen, name in list(existing.items()):
        if gen not in generations or toplevel_in(name) != generations[gen]:
            os.unlink(os.path.join(ENTRIES, name))
            del existing[gen]
    for gen, toplevel in generations.items():
        if gen in existing:
            continue
        with open(os.path.join(toplevel, "nixos-version")) as f:
            version = f.read().strip()
        tmp = os.path.join(ENTRIES, f".gen-{gen}.tmp")
        with open(tmp, "w") as f:
            f.write(f"title NixOS (ipex-fleet lab)\nversion Generation {gen} {version}\nsort-key nixos\n"
                    f"options init={toplevel}/init\n")
        os.replace(tmp, os.path.join(ENTRIES, f"nixos-generation-{gen}+{BOOT_TRIES}.conf"))
    current = os.readlink(PROFILE)
    m = _LINK.match(current)
    with open(LOADER_CONF + ".tmp", "w") as f:
        f.write(f"timeout 0\ndefault nixos-generation-{m.group(1) if m else '0'}.conf\n")
    os.replace(LOADER_CONF + ".tmp", LOADER_CONF)
    print("updating the boot loader entries")


def toplevel_in(entry):
    with open(os.path.join(ENTRIES, entry)) as f:
        for line in f:
            if line.startswith("options "):
                for option in line.split()[1:]:
                    if option.startswith("init="):
                        return os.path.dirname(option[5:])
    return None


# -- activation --------------------------------------------------------------------------------


def install_etc():
    """Link the generation's etc/ into /etc through /etc/static, and drop the old generation's links."""
    etc_src = os.path.join(TOPLEVEL, "etc")
    atomic_symlink(etc_src, "/etc/static")
    wanted = set()
    for dirpath, _dirs, files in os.walk(etc_src):
        rel_dir = os.path.relpath(dirpath, etc_src)
        for name in files:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            wanted.add(rel)
            target = os.path.join("/etc", rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            atomic_symlink(os.path.join("/etc/static", rel), target)
    clean = "/etc/.clean"
    try:
        with open(clean) as f:
            before = {line.strip() for line in f if line.strip()}
    except FileNotFoundError:
        before = set()
    for rel in sorted(before - wanted):
        path = os.path.join("/etc", rel)
        if os.path.islink(path) and os.readlink(path).startswith("/etc/static/"):
            os.unlink(path)
    with open(clean + ".tmp", "w") as f:
        f.write("".join(f"{rel}\n" for rel in sorted(wanted)))
    os.replace(clean + ".tmp", clean)


def wait_ready(units, address, timeout=10):
    """Wait until each service answers on its port, or has failed (Type=exec starts return at once)."""
    deadline = time.monotonic() + timeout
    pending = [u for u in units if u in SERVICE_PORTS]
    while pending and time.monotonic() < deadline:
        for unit in list(pending):
            if systemctl("is-failed", "--quiet", unit).returncode == 0:
                pending.remove(unit)
                continue
            try:
                with socket.create_connection((address, SERVICE_PORTS[unit]), timeout=0.5):
                    pending.remove(unit)
            except OSError:
                pass
        time.sleep(0.05)


def failed_units(units):
    return [u for u in units if systemctl("is-failed", "--quiet", u).returncode == 0]


def activate(settings, old_toplevel, stop_old):
    """The activation proper; returns NixOS's exit code."""
    old_units, new_units = units_of(old_toplevel), units_of(TOPLEVEL)
    changed = [u for u in new_units if u in old_units and not filecmp.cmp(
        os.path.join(old_toplevel, UNIT_DIR, u), os.path.join(TOPLEVEL, UNIT_DIR, u), shallow=False)]
    if stop_old:
        to_stop = [u for u in old_units if u not in new_units]
        if to_stop:
            print("stopping the following units: " + ", ".join(to_stop))
            systemctl("stop", *to_stop)
    print("activating the configuration...")
    time.sleep(settings.get("slow_activation") or 0)  # lab knob: a slow activation script
    status = 0
    ssh_lock_before = os.path.exists("/etc/ssh/sshd_config.d/00-lab-lock.conf")
    if settings.get("fail_activation"):
        print("Activation script snippet 'lab-fail-activation' failed (1)", file=sys.stderr)
        status = 2
    if settings.get("fail_reactivation") and stop_old:  # lab knob: a generation that cannot come back
        marker = os.path.join("/var/lib/ipex-fleet-lab/activated", os.path.basename(TOPLEVEL))
        if os.path.exists(marker):
            print("Activation script snippet 'lab-fail-reactivation' failed (1)", file=sys.stderr)
            status = 2
        else:
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            open(marker, "w").close()
    install_etc()
    atomic_symlink(TOPLEVEL, "/run/current-system")
    systemctl("daemon-reload", check=True)
    if os.path.exists(os.path.join(TOPLEVEL, SSH_LOCK)) != ssh_lock_before:
        # Lab fault lock_ssh: this generation's sshd configuration refuses every login, as a broken
        # one would; sessions already open live on, new ones are refused. Any other generation lifts it.
        print("reloading the following units: ssh.service")
        systemctl("reload", "ssh.service")
    if stop_old and changed:
        print("restarting the following units: " + ", ".join(changed))
        systemctl("reset-failed", *changed)
        systemctl("restart", *changed)
    to_start = [u for u in new_units if u not in changed or not stop_old]
    if to_start:
        print("starting the following units: " + ", ".join(to_start))
        systemctl("reset-failed", *to_start)
        systemctl("start", *to_start)
    wait_ready(new_units, settings["address"])
    failed = failed_units(new_units)
    if failed:
        print("warning: the following units failed: " + ", ".join(failed), file=sys.stderr)
        for unit in failed:
            log = subprocess.run(["journalctl", "-b", "-u", unit, "-n", "3", "--no-pager", "-o", "cat"],
                                 capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
            if log:
                print(f"{unit}: {log[-1]}", file=sys.stderr)
        return status or 4
    if status == 0 and settings.get("reboot_required"):
        print("a reboot is required to activate the new kernel")
        return 100
    return status


def dry_activate(old_toplevel):
    old_units, new_units = units_of(old_toplevel), units_of(TOPLEVEL)
    print(f"would activate the configuration {TOPLEVEL}")
    stop = [u for u in old_units if u not in new_units]
    restart = [u for u in new_units if u in old_units and not filecmp.cmp(
        os.path.join(old_toplevel, UNIT_DIR, u), os.path.join(TOPLEVEL, UNIT_DIR, u), shallow=False)]
    start = [u for u in new_units if u not in old_units]
    for verb, units in (("stop", stop), ("restart", restart), ("start", start)):
        if units:
            print(f"would {verb} the following units: " + ", ".join(units))
    return 0


def main(argv):
    old = os.path.realpath("/run/current-system") if os.path.exists("/run/current-system") else None
    if os.path.basename(argv[0]) == "activate":  # stage 2, at boot
        return activate(load_settings(), None, stop_old=False)
    if len(argv) != 2 or argv[1] not in ACTIONS:
        print(f"Usage: {argv[0]} [{'|'.join(ACTIONS)}]", file=sys.stderr)
        return 1
    action = argv[1]
    if action == "dry-activate":
        return dry_activate(old)
    if action in ("switch", "boot"):
        install_bootloader()
    if action == "boot":
        return 0
    return activate(load_settings(), old, stop_old=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
