"""One lab host = one set of Linux namespaces around one sshd (LAB.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from .layout import LabHost, LabLayout

HOST_DIRS = ("nix", "var-lib", "root", "tmp", "etc-upper", "etc-work", "ssh")


def boot_script(layout: LabLayout, host: LabHost) -> str:
    h = layout.host_dir(host.name)
    return "\n".join([
        "set -e",
        f"mount --bind {h}/nix /nix",
        f"mount --bind {h}/var-lib /var/lib",
        f"mount --bind {h}/root /root",
        f"mount --bind {h}/tmp /tmp",
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={h}/etc-upper,workdir={h}/etc-work /etc",
        "mount -t tmpfs -o mode=0755 tmpfs /run",
        "mkdir -p /run/sshd",
        f"hostname {host.name}",
        f"exec /usr/sbin/sshd -D -e -f {h}/ssh/sshd_config",
    ])


def pid_file(layout: LabLayout, host: LabHost) -> Path:
    return layout.host_dir(host.name) / "unshare.pid"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state == "Z":
        try:  # our own child: reap it
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def unshare_pid(layout: LabLayout, host: LabHost) -> int | None:
    """The `unshare` process of a running host, or None."""
    try:
        pid = int(pid_file(layout, host).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    if not cmdline or not cmdline[0].endswith(b"unshare") or not _alive(pid):
        return None
    return pid


def init_pid(layout: LabLayout, host: LabHost) -> int | None:
    """The namespace's init: the sshd, child of `unshare`."""
    pid = unshare_pid(layout, host)
    if pid is None:
        return None
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    return int(children[0]) if children else None


def namespace_pids(layout: LabLayout, host: LabHost) -> list[int]:
    """Every process inside the host's PID namespace."""
    init = init_pid(layout, host)
    if init is None:
        return []
    try:
        ns = os.readlink(f"/proc/{init}/ns/pid")
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    pids.append(int(entry))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
    return pids


def start(layout: LabLayout, host: LabHost) -> int:
    h = layout.host_dir(host.name)
    log = open(h / "host.log", "ab")
    proc = subprocess.Popen(
        ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
         "--propagation", "private", "sh", "-c", boot_script(layout, host)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    log.close()
    pid_file(layout, host).write_text(f"{proc.pid}\n")
    return proc.pid


def signal_stop(layout: LabLayout, host: LabHost) -> int | None:
    """Signal the host's init; the kernel then ends everything in the host.

    `unshare --fork` ignores SIGTERM, so the namespace's init is the one to signal.
    Thaw first: a frozen sshd would never act on SIGTERM.
    """
    pid = unshare_pid(layout, host)
    if pid is None:
        return None
    for p in namespace_pids(layout, host):
        _kill(p, signal.SIGCONT)
    init = init_pid(layout, host)
    if init is not None:
        _kill(init, signal.SIGTERM)
    else:
        _kill(pid, signal.SIGKILL)
    return pid


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every pid has exited; SIGKILL the ones that outlast the timeout."""
    deadline = time.monotonic() + timeout
    remaining = [p for p in pids if _alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = [p for p in remaining if _alive(p)]
    for p in remaining:
        _kill(p, signal.SIGKILL)
    return remaining


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
