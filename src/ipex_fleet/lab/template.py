"""The root filesystem every lab host boots from: Debian bookworm with systemd, sshd and Nix.

Built once by debootstrap (about a minute) and cached by recipe, so that every lab on the machine
(the tests start several) shares it read-only as the lower layer of each host's overlay.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ipex_fleet.common.errors import CommandFailed, UserError
from ipex_fleet.runner import run

DEFAULT_CACHE = "/srv/ipex-fleet-lab-cache"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# libdbi-perl must be named: debootstrap does not resolve nix-bin's virtual perl-dbdabi-94 (LAB.md).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "nix-bin", "libdbi-perl", "python3",
            "iproute2", "sudo", "curl", "procps")
# Timers and units that would wake every idle host, or wait on a console that is not there.
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
          "dpkg-db-backup.timer", "e2scrub_reap.service", "console-getty.service", "getty@tty1.service",
          "systemd-networkd-wait-online.service")
NIX_CONF = (
    "experimental-features = nix-command flakes\n"
    "sandbox = false\n"
    "substituters =\n"
    "build-users-group =\n"
)
RECIPE = "|".join([SUITE, MIRROR, *PACKAGES, *MASKED, NIX_CONF, "prep-2"])


def cache_root() -> Path:
    return Path(os.environ.get("IPEX_FLEET_LAB_CACHE") or DEFAULT_CACHE)


def template_dir() -> Path:
    digest = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
    return cache_root() / f"rootfs-{SUITE}-{digest}"


def ensure_template() -> Path:
    """The cached root filesystem, built first if missing (into a temporary directory, then renamed)."""
    final = template_dir()
    if (final / ".complete").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    building = final.with_name(final.name + f".build-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(building), MIRROR],
            timeout=900)
    except CommandFailed as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise UserError(f"building the lab's root filesystem failed ({exc}); it needs Debian's package mirror "
                        f"({MIRROR}); see `debootstrap` output by running it by hand") from None
    _prepare(building)
    (building / ".complete").write_text(RECIPE + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(building, final)
    return final


def _prepare(root: Path) -> None:
    """What every host shares; each host's own identity (keys, machine id, address) goes in its overlay."""
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc" / "machine-id").write_text("")
    resolv = root / "etc" / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("")  # no resolver: nothing in a host looks a name up off the machine
    (root / "etc" / "nix").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "nix" / "nix.conf").write_text(NIX_CONF)
    units = root / "etc" / "systemd" / "system"
    for unit in MASKED:
        link = units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # apt inside a host would reach for the network: the hosts never install packages.
    (root / "etc" / "apt" / "sources.list").write_text("")
    for extra in (root / "etc" / "apt" / "sources.list.d").glob("*"):
        extra.unlink()
