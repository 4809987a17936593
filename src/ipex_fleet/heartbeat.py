"""The controller's heartbeat: while this process runs a host's transaction, it renews the host's lock
and open intent every few seconds, independent of pyinfra's step boundaries (pyinfra runs each
operation on every host and waits for all before the next: a host must never be reverted because a
peer is slow). The lease it renews measures the controller's liveness; each step's own timeout
bounds each step. When this process dies the beats stop and the host's watchdog reverts within one
lease (host data lease_grace).

Each host gets an OS thread of its own (pyinfra's greenlets do not run while one step blocks the
hub; a thread does) with its own SSH connection, made by pyinfra's client from the same host data.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import hostagent
from .remote import connect_fresh, host_command


@dataclass
class Beat:
    host: str
    command: str
    interval: float
    connect: Any  # () -> a connected paramiko client
    stop: threading.Event = field(default_factory=threading.Event)
    beats: int = 0
    last_ok: float | None = None
    errors: int = 0

    def run(self) -> None:
        client = None
        while not self.stop.wait(self.interval):
            try:
                if client is None:
                    client = self.connect(self.interval * 2 + 5)
                _in, out, _err = client.exec_command(self.command, timeout=self.interval * 2 + 5)
                if not out.channel.status_event.wait(self.interval * 2 + 5):
                    raise TimeoutError("renewal did not answer")
                rc = out.channel.recv_exit_status()
                self.beats += 1
                if rc == 0:  # LOST (fenced out) needs nothing here: the transaction learns at its next step
                    self.last_ok = time.monotonic()
            except Exception:  # a dead or cut connection: a new one next beat; the lease bounds the rest
                self.errors += 1
                if client is not None:
                    try:
                        client.close()
                    except Exception:
                        pass
                client = None
        if client is not None:
            client.close()


class Heartbeat:
    def __init__(self) -> None:
        self._beats: dict[str, Beat] = {}

    def keep(self, host: Any, token: str, lease: float, intent_id: str | None = None) -> None:
        """Renew `host`'s lock (and intent) for `lease` seconds, every quarter of it."""
        args = ["renew", "--token", token, "--for", f"{lease:g}"] + (["--intent", intent_id] if intent_id else [])
        command = host_command(host, hostagent.command(*args))
        beat = self._beats.get(host.name)
        if beat is not None and not beat.stop.is_set():
            beat.command = command
            return
        beat = Beat(host.name, command, max(0.5, min(5.0, lease / 4)), lambda timeout: connect_fresh(host, timeout))
        self._beats[host.name] = beat
        threading.Thread(target=beat.run, name=f"heartbeat-{host.name}", daemon=True).start()

    def stop(self, host_name: str) -> None:
        beat = self._beats.pop(host_name, None)
        if beat is not None:
            beat.stop.set()

    def stop_all(self) -> None:
        for name in list(self._beats):
            self.stop(name)
