"""The controller's heartbeat: while this process runs a host's transaction, it renews the host's lock
and open intent every few seconds, independent of pyinfra's step boundaries (pyinfra runs each
operation on every host and waits for all before the next: a host must never be reverted because a
peer is slow). The lease it renews measures the controller's liveness; each step's own timeout
bounds each step. When this process dies the beats stop and the host's watchdog reverts within one
lease (host data lease_grace).

Each host gets a thread of its own (a greenlet under pyinfra's monkey-patching). Its renewals go
over the run's own SSH connection, a channel beside the step's (a login of its own cost each host as
much CPU as a renewal's whole round trip, and the controller a key exchange): the first that fails or
takes longer than a beat's interval moves the beat to a connection of its own (a new instance of the
host's connector, through pyinfra's connector API) for the rest of the run, and renews there at once.
A run whose own session died keeps its lease that way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import gevent

from ipex_fleet.transaction import hostagent
from ipex_fleet.remote import close, fresh_connector, run_on


@dataclass
class Beat:
    host: Any  # pyinfra's Host: its connector class and data make each new connection
    command: str
    interval: float
    stop: threading.Event = field(default_factory=threading.Event)
    beats: int = 0
    last_ok: float | None = None
    errors: int = 0
    shared: bool = True  # renewing over the run's own connection (until it fails once)

    def run(self) -> None:
        connector = None
        bound = self.interval * 2 + 5
        while not self.stop.wait(self.interval):
            try:
                renewed = self._over_the_runs_connection() if self.shared else None
                if renewed is None:
                    with gevent.Timeout(bound):
                        if connector is None:
                            connector = fresh_connector(self.host)
                        renewed = run_on(connector, self.host, self.command, bound)
                self.beats += 1
                if renewed.ok:  # LOST (fenced out) needs nothing here: the transaction learns at its next step
                    self.last_ok = time.monotonic()
            except (Exception, gevent.Timeout):  # a dead or cut connection: a new one next beat; the lease bounds the rest
                self.errors += 1
                if connector is not None:
                    _close_quietly(connector)
                connector = None
        if connector is not None:
            _close_quietly(connector)

    def _over_the_runs_connection(self) -> Any:
        """A renewal over the run's own connection, within one interval; None (and never again this
        run) where it failed."""
        try:
            with gevent.Timeout(self.interval):
                return run_on(self.host.connector, self.host, self.command, self.interval)
        except (Exception, gevent.Timeout):
            self.shared = False
            return None


def _close_quietly(connector: Any) -> None:
    try:
        close(connector)
    except Exception:  # already broken: nothing more to release
        pass


class Heartbeat:
    def __init__(self) -> None:
        self._beats: dict[str, Beat] = {}

    def keep(self, host: Any, token: str, lease: float, intent_id: str | None = None) -> None:
        """Renew `host`'s lock (and intent) for `lease` seconds, every quarter of it."""
        args = ["renew", "--token", token, "--for", f"{lease:g}"] + (["--intent", intent_id] if intent_id else [])
        command = hostagent.command(*args)
        beat = self._beats.get(host.name)
        if beat is not None and not beat.stop.is_set():
            beat.command = command
            return
        beat = Beat(host, command, max(0.5, min(5.0, lease / 4)))
        self._beats[host.name] = beat
        threading.Thread(target=beat.run, name=f"heartbeat-{host.name}", daemon=True).start()

    def lock_only(self, host: Any, token: str, lease: float) -> None:
        """A running beat renews the lock alone from now on: the intent is the host's to decide."""
        if host.name in self._beats:
            self.keep(host, token, lease)

    def stop(self, host_name: str) -> None:
        beat = self._beats.pop(host_name, None)
        if beat is not None:
            beat.stop.set()

    def stop_all(self) -> None:
        for name in list(self._beats):
            self.stop(name)
