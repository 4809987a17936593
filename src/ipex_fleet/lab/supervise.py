"""One lab host's supervisor: mounts its overlay, then boots it with systemd-nspawn, again and again.

Run by `ipex-fleet lab up` inside a private mount namespace (`unshare -m`), so the overlay goes
away with it. It joins the host's own cgroup first: nspawn --keep-unit puts `payload/` and
`supervisor/` under the cgroup it starts in, and the lab's nftables guard matches that cgroup.

nspawn's exit code says what the host did (LAB.md): 133 a reboot (boot again), 0 a poweroff,
1 a kill. A kill asked for by `lab crash` boots again, as a machine does after a hard reset.

Each boot's end of startup is an event: nspawn (--notify-ready=yes) passes on the READY=1 that the
host's systemd sends once its boot transaction is done, to this supervisor's notification socket;
the supervisor then writes `ready` in the host's directory (removed before each boot), which
`lab up` waits for instead of polling SSH.

Imports nothing but the standard library: one of these runs per host.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REBOOT = 133
MAX_BOOTS_PER_MINUTE = 30


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ipex_fleet.lab.supervise")
    p.add_argument("--host-dir", required=True, type=Path)
    p.add_argument("--template", required=True)
    p.add_argument("--machine", required=True)
    p.add_argument("--hostname", required=True)
    p.add_argument("--cgroup", action="append", default=[], help="cgroup directories to join")
    p.add_argument("--bind-ro", action="append", default=[])
    p.add_argument("--bind", action="append", default=[])
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for cgroup in args.cgroup:
        Path(cgroup).mkdir(parents=True, exist_ok=True)
        Path(cgroup, "cgroup.procs").write_text(f"{os.getpid()}\n")
    h = args.host_dir
    rootfs, upper, work = h / "rootfs", h / "upper", h / "work"
    for d in (rootfs, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={args.template},upperdir={upper},workdir={work}", str(rootfs)], check=True)
    argv_nspawn = [
        "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=read-only", "--link-journal=no",
        "--resolv-conf=off", "--timezone=off", "--notify-ready=yes", f"--directory={rootfs}", f"--machine={args.machine}",
        f"--hostname={args.hostname}",
        *(f"--bind-ro={p}" for p in args.bind_ro), *(f"--bind={p}" for p in args.bind),
    ]
    child: list[subprocess.Popen] = []
    notify, notify_env = _notify_socket(args.machine)

    def forward(signum: int, _frame: object) -> None:
        # `lab down`: nspawn turns SIGTERM into a clean poweroff of the host.
        if child and child[0].poll() is None:
            child[0].send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    boots: list[float] = []
    while want(h) == "up":
        now = time.monotonic()
        boots = [t for t in boots if now - t < 60] + [now]
        if len(boots) > MAX_BOOTS_PER_MINUTE:
            print(f"supervisor: {len(boots)} boots within a minute; giving up", file=sys.stderr, flush=True)
            return 1
        (h / "ready").unlink(missing_ok=True)
        _drain(notify)
        proc = subprocess.Popen(argv_nspawn, stdin=subprocess.DEVNULL,
                                env={**os.environ, "NOTIFY_SOCKET": notify_env})
        child[:] = [proc]
        _wait(proc, notify, h / "ready")
        rc = proc.wait()
        (h / "ready").unlink(missing_ok=True)
        crashed = (h / "crash").exists()
        (h / "crash").unlink(missing_ok=True)
        print(f"supervisor: nspawn exited {rc}", file=sys.stderr, flush=True)
        if rc == REBOOT or (crashed and want(h) == "up"):
            continue
        return 0 if rc == 0 else rc
    return 0


def _notify_socket(machine: str) -> tuple[socket.socket, str]:
    """An abstract datagram socket (no path to clean up) for nspawn's sd_notify messages."""
    name = f"ipex-fleet-lab/{machine}/{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    return sock, "@" + name


def _drain(sock: socket.socket) -> None:
    """Drop messages of an earlier boot."""
    while True:
        try:
            sock.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return


def _wait(proc: subprocess.Popen, sock: socket.socket, ready: Path) -> None:
    """Until nspawn exits; meanwhile, mark the boot ready when its READY=1 comes. One thread: a
    signal (SIGTERM from `lab down`) interrupts the select, runs its handler, and the select resumes."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        while True:
            readable, _, _ = select.select([sock, pidfd], [], [])
            if sock in readable:
                try:
                    message = sock.recv(4096, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    message = b""
                if b"READY=1" in message.split(b"\n"):
                    tmp = ready.with_name(".ready.tmp")
                    tmp.write_text(f"{time.time():.3f}\n")
                    os.replace(tmp, ready)
            if pidfd in readable:
                return
    finally:
        os.close(pidfd)


def want(host_dir: Path) -> str:
    try:
        return (host_dir / "want").read_text().strip()
    except FileNotFoundError:
        return "down"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
