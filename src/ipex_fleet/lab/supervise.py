"""One lab host's supervisor: mounts its overlay, then boots it with systemd-nspawn, again and again.

Run by `ipex-fleet lab up` inside a private mount namespace (`unshare -m`), so the overlay goes
away with it. It joins the host's own cgroup first: nspawn --keep-unit puts `payload/` and
`supervisor/` under the cgroup it starts in, and the lab's nftables guard matches that cgroup.

nspawn's exit code says what the host did (LAB.md): 133 a reboot (boot again), 0 a poweroff,
1 a kill. A kill asked for by `lab crash` boots again, as a machine does after a hard reset.
"""

from __future__ import annotations

import argparse
import os
import signal
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
        "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive", "--link-journal=no",
        "--resolv-conf=off", "--timezone=off", f"--directory={rootfs}", f"--machine={args.machine}",
        f"--hostname={args.hostname}",
        *(f"--bind-ro={p}" for p in args.bind_ro), *(f"--bind={p}" for p in args.bind),
    ]
    child: list[subprocess.Popen] = []

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
        proc = subprocess.Popen(argv_nspawn, stdin=subprocess.DEVNULL)
        child[:] = [proc]
        rc = proc.wait()
        crashed = (h / "crash").exists()
        (h / "crash").unlink(missing_ok=True)
        print(f"supervisor: nspawn exited {rc}", file=sys.stderr, flush=True)
        if rc == REBOOT or (crashed and want(h) == "up"):
            continue
        return 0 if rc == 0 else rc
    return 0


def want(host_dir: Path) -> str:
    try:
        return (host_dir / "want").read_text().strip()
    except FileNotFoundError:
        return "down"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
