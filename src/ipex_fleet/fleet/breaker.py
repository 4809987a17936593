"""The circuit breaker: the same fault, seen again, stops the flake that causes it.

A failure's signature is its failing check (or the step) and its message with the particulars taken
out (store paths, hashes, numbers), under the flake's content hash. When the same signature of the
same flake has failed K times (default 2: two canaries, in one run or across runs), the breaker opens
for that flake: rollouts of it refuse to start, in one line naming the hosts and runs, until
`ipex-fleet breaker reset` or a flake with another hash. Unreachable hosts never count: that is the
network's fault, not the flake's. The state lives in the ledger.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Iterable

from ipex_fleet.domain import HostResult, Status
from ipex_fleet.ledger.runs import Ledger

COUNTED = (Status.ROLLED_BACK, Status.FAILED, Status.REVERT_FAILED)
DEFAULT_THRESHOLD = 2
_PARTICULARS = (
    (re.compile(r"/nix/store/[0-9a-z]{32}-[^\s'\",;)]*"), "<store path>"),
    (re.compile(r"\b[0-9a-f]{8,}\b"), "<hash>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def message_class(message: str) -> str:
    """The message with what differs between hosts and runs taken out."""
    text = message.strip()
    for pattern, replacement in _PARTICULARS:
        text = pattern.sub(replacement, text)
    return text[:160]


def signature(result: HostResult) -> str | None:
    """`check: message class` of a failed result (its first failing check, else its error)."""
    if result.status not in COUNTED:
        return None
    failing = (result.health or {}).get("failing") or []
    if failing:
        check, _, message = str(failing[0]).partition(": ")
        return f"{check}: {message_class(message)}"
    error = (result.error or "failed").split("; ")[0]
    return f"step: {message_class(error)}"


@dataclass(frozen=True)
class Breaker:
    flake_hash: str
    signature: str
    seen: tuple[tuple[str, str], ...]  # (host, run id) of each failure that counted
    opened: float

    def line(self) -> str:
        where = ", ".join(f"{host} (run {run})" for host, run in self.seen)
        return (f"circuit breaker open for flake {self.flake_hash}: {self.signature!r} failed {len(self.seen)} times, "
                f"on {where}; fix the flake (a new content hash closes it) or run `ipex-fleet breaker reset "
                f"{self.flake_hash}`")


def record_failures(ledger: Ledger, run_id: str, results: Iterable[HostResult],
                    threshold: int = DEFAULT_THRESHOLD) -> list[Breaker]:
    """Count each failed result's signature; return the breakers this opened."""
    opened = []
    for result in results:
        sig = signature(result)
        if sig is None or not result.flake_hash:
            continue
        ledger.add_failure_signature(result.flake_hash, sig, result.host, run_id)
        seen = ledger.failure_signatures(result.flake_hash, sig)
        if threshold > 0 and len(seen) >= threshold and ledger.open_breaker(result.flake_hash) is None:
            ledger.set_breaker(result.flake_hash, sig, seen)
            opened.append(Breaker(result.flake_hash, sig, tuple(seen), time.time()))
    return opened


def open_for(ledger: Ledger, flake_hashes: Iterable[str]) -> list[Breaker]:
    out = []
    for digest in sorted(set(flake_hashes)):
        row = ledger.open_breaker(digest)
        if row is not None:
            out.append(Breaker(row["flake_hash"], row["signature"],
                               tuple(tuple(pair) for pair in json.loads(row["seen"])), row["opened"]))
    return out


def all_open(ledger: Ledger) -> list[Breaker]:
    return open_for(ledger, [row["flake_hash"] for row in ledger.open_breakers()])
