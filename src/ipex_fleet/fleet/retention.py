"""Which system generations a maintenance run keeps: the policy (the last N, and every one younger
than D days), plus every anchor, whatever the policy says. An anchor is a generation something may
still need: the current one, the running and booted ones, the one an open intent names (the watchdog
would revert to it), the last deploy's recorded rollback target, and one whose boot entry is still
being counted (GC once deleted a booted, counted entry: nixpkgs #558850)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipex_fleet.domain import Generation, ProfileState

DAY = 86400


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int
    keep_days: float


@dataclass(frozen=True)
class Anchors:
    """Generation numbers (and store paths) that no policy may delete."""

    current: int | None = None
    running_path: str | None = None
    booted_path: str | None = None
    intent: tuple[int, ...] = ()
    intent_paths: tuple[str, ...] = ()  # an intent's target has a path; its number comes with the switch
    rollback_target: int | None = None
    counted: tuple[int, ...] = ()  # boot entries with tries left (name+N.conf)


@dataclass(frozen=True)
class RetentionPlan:
    keep: dict[int, tuple[str, ...]]  # generation -> why it stays
    delete: tuple[int, ...] = field(default_factory=tuple)


def choose(state: ProfileState, policy: RetentionPolicy, anchors: Anchors, now: float) -> RetentionPlan:
    reasons: dict[int, list[str]] = {}

    def keep(gen: Generation | None, why: str) -> None:
        if gen is not None and gen.number is not None:
            reasons.setdefault(gen.number, []).append(why)

    newest = sorted((g for g in state.generations if g.number is not None), key=lambda g: g.number, reverse=True)
    for gen in newest[: policy.keep_last]:
        keep(gen, f"last {policy.keep_last}")
    for gen in newest:
        if gen.date is not None and now - gen.date < policy.keep_days * DAY:
            keep(gen, f"younger than {policy.keep_days:g} days")
    keep(state.by_number(anchors.current) if anchors.current is not None else None, "current")
    keep(state.by_path(anchors.running_path) if anchors.running_path else None, "running")
    keep(state.by_path(anchors.booted_path) if anchors.booted_path else None, "booted")
    for number in anchors.intent:
        keep(state.by_number(number), "named by an open intent")
    for path in anchors.intent_paths:
        keep(state.by_path(path), "named by an open intent")
    if anchors.rollback_target is not None:
        keep(state.by_number(anchors.rollback_target), "the last deploy's rollback target")
    for number in anchors.counted:
        keep(state.by_number(number), "boot entry being counted")
    delete = tuple(g.number for g in sorted(newest, key=lambda g: g.number) if g.number not in reasons)
    return RetentionPlan({n: tuple(r) for n, r in sorted(reasons.items())}, delete)
