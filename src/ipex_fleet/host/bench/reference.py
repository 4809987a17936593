"""The CPU's own speed: a fixed task, timed the same way at every run, so that a CPU slowed as a whole
is told apart from a slower case.

The kernel's CPU pressure sees tasks that wait for a CPU. It does not see a CPU that runs, only
slower: a busy sibling thread of the same physical core (a cloud VM's two vCPUs are often one core's
two hyper-threads, and the sibling may be another container, or another VM), a hypervisor's steal
or a throttled clock. Those slow every task on the CPU alike, so a task that never changes measures
them: a chain of SHA-256 over a 1 KiB block, with an interpreter loop around it (both the C code and
the Python an Ollama stand-in or a torch op waits on). A reading is the mean rate of BURSTS short
bursts, about a twentieth of a second in all.

The gate (bench/__main__.gated) takes a reading before each round on a CPU; a baseline keeps the
median of its readings, and a comparison divides by the slowest reading of its own run: a case that
is slower only as much as the CPU itself is not established as slower (inconclusive, `cpu_slowed`),
one slower still keeps its fail.
"""

from __future__ import annotations

import hashlib
import time

BLOCK = bytes(range(256)) * 4  # 1 KiB
LINKS = 4000  # hashes per burst: about 4 ms of CPU on this project's 2-core machine...
BURSTS = 15  # ...and the mean rate over this many bursts


def burst(links: int = LINKS) -> float:
    """Seconds of wall clock for one burst of the fixed task."""
    digest = b""
    started = time.perf_counter()
    for _ in range(links):
        digest = hashlib.sha256(digest + BLOCK).digest()
    return time.perf_counter() - started


def cpu_speed(bursts: int = BURSTS) -> float:
    """The fixed task's rate now, in bursts per second over `bursts` bursts: their mean, not their
    median, so that time the task lost to others (waiting for a CPU, or a hypervisor's steal) counts,
    as it does for the case measured."""
    return bursts / sum(burst() for _ in range(bursts))
