"""The kernel limits a lab of N hosts needs, raised (never lowered) before any host starts.

Every lab host runs its own systemd, journald, logind, dbus and sshd in the machine's own user
namespace, so they all draw on per-user budgets of the machine (root's, and messagebus's for dbus).
LAB.md ("Kernel limits at 20+ hosts"): with Debian's `fs.inotify.max_user_instances = 128` about 20
hosts boot and the next stop at once with "Failed to allocate manager object: Too many open files".
Measured on this machine's lab (benchmarks/lab_scale.py, 100 hosts, idle and at a deploy's peak): 6
to 7 inotify instances of root's a host, about 30 watches, 15 to 20 tasks (processes and threads).
The budgets below are four times that or more, per host, on top of what the machine itself needs
(`base`). A deploy user (`lab up --deploy-user`) is one user in every host, with its own count of
the same limit: its budget is the same value.

The hosts counted are this lab's and every host running in another lab on the machine: the limits
are the machine's, shared by all its labs.

`IPEX_FLEET_LAB_KERNEL_LIMITS=keep` leaves the kernel's limits as they are (hosts beyond them then
fail to boot, and `lab up` names each with the line of its log that says why).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ipex_fleet.common.errors import UserError

PROC_SYS = Path("/proc/sys")
ENV = "IPEX_FLEET_LAB_KERNEL_LIMITS"


@dataclass(frozen=True)
class Limit:
    key: str  # sysctl name, dotted
    base: int  # what the machine itself needs, with no lab host
    per_host: int
    why: str

    def needed(self, hosts: int) -> int:
        return self.base + self.per_host * hosts

    @property
    def path(self) -> Path:
        return PROC_SYS / self.key.replace(".", "/")


LIMITS = (
    Limit("fs.inotify.max_user_instances", 128, 32, "systemd, logind and dbus take inotify instances"),
    Limit("fs.inotify.max_user_watches", 8192, 128, "the watches on those instances"),
    Limit("kernel.pid_max", 4096, 128, "processes and threads of every host, a deploy's included"),
)
# Checked, not raised: nspawn gives each container one session keyring of root's, counted against
# kernel.keys.root_maxkeys (a million), and refuses the key system calls inside it, so nothing in a
# host counts against kernel.keys.maxkeys (200, for other users). Each host holds one pty (its
# console) of kernel.pty.max (4096). Neither binds below the lab's 253 hosts.


@dataclass(frozen=True)
class Change:
    key: str
    before: int
    after: int

    def __str__(self) -> str:
        return f"{self.key} {self.before} -> {self.after}"


def read(limit: Limit) -> int | None:
    try:
        return int(limit.path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None  # not on this kernel


def short(hosts: int, limits: tuple[Limit, ...] = LIMITS) -> list[Change]:
    """Each limit below what `hosts` lab hosts need: (key, now, needed)."""
    out = []
    for limit in limits:
        now = read(limit)
        if now is not None and now < limit.needed(hosts):
            out.append(Change(limit.key, now, limit.needed(hosts)))
    return out


def ensure(hosts: int, limits: tuple[Limit, ...] = LIMITS) -> list[Change]:
    """Raise every limit below what `hosts` lab hosts need; return what changed (from -> to).

    Nothing is ever lowered. A limit this process may not write (a container's read-only
    /proc/sys, say) fails `lab up` in one line, before any host starts, saying what to run."""
    if os.environ.get(ENV) == "keep":
        return []
    changes = short(hosts, limits)
    done: list[Change] = []
    for change in changes:
        path = PROC_SYS / change.key.replace(".", "/")
        try:
            now = int(path.read_text().split()[0])
            if now >= change.after:  # raised meanwhile, by another lab
                continue
            path.write_text(f"{change.after}\n")
        except OSError as exc:
            missing = " ".join(f"{c.key}={c.after}" for c in changes)
            raise UserError(f"{hosts} lab host(s) need {change.key} >= {change.after} (it is {change.before}) "
                            f"and it cannot be raised here ({exc.strerror or exc}): run `sysctl -w {missing}` "
                            f"as root, or set {ENV}=keep to start them anyway") from None
        done.append(Change(change.key, now, change.after))
    return done


def describe(hosts: int, changes: list[Change]) -> str:
    """The one line `lab up` prints when it raised anything."""
    return f"kernel limits raised for {hosts} lab host(s): " + ", ".join(str(c) for c in changes)
