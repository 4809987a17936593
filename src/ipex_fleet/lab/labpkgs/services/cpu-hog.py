#!/usr/bin/python3
"""Lab fault `cpu_hog`: a generation whose service keeps every core busy, for a bounded time.

The starved benchmark is a real regression, measured, not faked. It stops by itself.
"""

import argparse
import ctypes
import signal
import multiprocessing
import os
import time


PR_SET_PDEATHSIG = 1


def spin(deadline):
    # A session (so a scheduler autogroup) of its own, as each systemd unit has its own cgroup:
    # the hog then takes its share per worker, not one share for the whole service.
    os.setsid()
    # ...and it dies with the service's main process, as a cgroup's processes do with their unit.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        return
    x = 0
    while time.monotonic() < deadline:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    workers = [multiprocessing.Process(target=spin, args=(deadline,), daemon=True)
               for _ in range(2 * len(os.sched_getaffinity(0)))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
