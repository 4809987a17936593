"""The one way to wait for something: poll a predicate until it holds or a bound passes.

Every poll of the controller goes through `wait_until` (an intent's decision, an activation that
outlived its SSH session, a reboot, a lock held by another run). The clock and the sleep are this
module's `time`, so a test replaces one thing to make waiting cost nothing.
"""

from __future__ import annotations

import time
from typing import Callable


def wait_until(predicate: Callable[[], bool], bound: float, what: str = "", interval: float = 1.0,
               first_wait: bool = False) -> bool:
    """True once `predicate` holds, False when `bound` seconds passed (`what` names it for readers
    and debuggers). `first_wait`: sleep one interval before the first look (a state that cannot
    have changed yet, such as a reboot just asked for)."""
    deadline = time.monotonic() + bound
    if first_wait:
        time.sleep(interval)
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
