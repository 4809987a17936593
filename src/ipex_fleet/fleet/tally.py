"""What a wave's results spend: each kind of trouble counted apart, each with its own budget.

A host that rolled back and a host that never answered are different news (Argo Rollouts'
failureLimit beside its error limit; Kubernetes' maxUnavailable): `--max-fail` is spent by hosts
that took the change and failed it (rolled back, or failed before their gates passed), while
`--max-unreachable` is spent by hosts that never took it (unreachable, or skipped because another
run held them). A revert that did not verify always halts: the host is on nobody's generation.
Inconclusive hosts passed with a benchmark the gate could not judge (bench_inconclusive=warn), or wait
on probation for a person (pause): counted and shown, never spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ipex_fleet.domain import HostResult, Status
from ipex_fleet.fleet.waves import Budget

# In the order they are shown.
KINDS = ("revert-failed", "rolled_back", "failed", "unreachable", "skipped", "inconclusive")
SPENDS_FAIL = ("rolled_back", "failed")
SPENDS_UNREACHABLE = ("unreachable", "skipped")


def kind_of(result: HostResult, maintenance: bool = False) -> str | None:
    """The trouble a host's result counts as, or None for a plain success."""
    if result.status.succeeded:
        return "inconclusive" if (result.bench or {}).get("inconclusive_accepted") else None
    if result.status is Status.SKIPPED and maintenance:
        return None  # maintenance leaves a host alone while a deploy holds it: no trouble
    if result.status is Status.PAUSED:
        return "inconclusive"  # on probation: a person decides, the budgets do not
    return result.status.value


@dataclass(frozen=True)
class Tally:
    """Hosts per kind of trouble, in one wave (or one run)."""

    hosts: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, results: Mapping[str, HostResult], maintenance: bool = False,
           soak_failed: tuple[str, ...] = ()) -> "Tally":
        """The wave's results; hosts that failed the bake (soak) afterwards count as failed there."""
        kinds: dict[str, list[str]] = {}
        for host, result in results.items():
            kind = "failed" if host in soak_failed else kind_of(result, maintenance)
            if kind is not None:
                kinds.setdefault(kind, []).append(host)
        return cls({k: tuple(kinds[k]) for k in KINDS if k in kinds})

    def count(self, *kinds: str) -> int:
        return sum(len(self.hosts.get(k, ())) for k in kinds)

    def counts(self) -> dict[str, int]:
        """Every kind with its count, zeros included (for JSON, metrics and the ledger)."""
        return {k: len(self.hosts.get(k, ())) for k in KINDS}

    def text(self) -> str:
        """`rolled_back 1 (host2), unreachable 1 (host3)`, or `no trouble`."""
        parts = [f"{k} {len(h)} ({', '.join(h)})" for k, h in self.hosts.items()]
        return ", ".join(parts) or "no trouble"


@dataclass(frozen=True)
class Budgets:
    """A wave's budgets: failures, and hosts that never took the change."""

    max_fail: str
    max_unreachable: str

    def halts(self, tally: Tally, size: int) -> str | None:
        """Why this wave halts the run, or None when it may go on."""
        if tally.count("revert-failed"):
            return f"revert-failed on {', '.join(tally.hosts['revert-failed'])} (always halts)"
        failed = tally.count(*SPENDS_FAIL)
        if Budget(self.max_fail).exceeded(failed, size):
            return f"{failed} of {size} rolled back or failed, budget --max-fail {self.max_fail}"
        missing = tally.count(*SPENDS_UNREACHABLE)
        if Budget(self.max_unreachable).exceeded(missing, size):
            return f"{missing} of {size} unreachable or skipped, budget --max-unreachable {self.max_unreachable}"
        return None
