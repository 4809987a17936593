"""What a fleet command shows while it runs (`rollout`, `plan`, `maintain`): a line per change of a
host's state, each wave's progress, then the final table.

The form is picked once:
- `rich` on a terminal: the lines scroll above a live bar for the running wave;
- `plain` when the output is a file or a pipe: the same lines with no control codes, and each
  host's last line carries its wave's count (`[wave1 2/3]`);
- `json` (`--json`) for machines: one JSON object per line, each with a `type` (message, wave, host,
  summary).
The hosts' events come from the run's events file (ipex_fleet.transaction.progress), followed while pyinfra runs.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ipex_fleet.transaction.progress import FINAL_STATES, Follower
from ipex_fleet.views.tables import width, wrap

FORMS = ("rich", "plain", "json")
POLL = 0.2  # seconds between reads of the events file
STYLES = {"ok": "green", "unchanged": "green", "rolled_back": "yellow", "rolling back": "yellow",
          "skipped": "yellow", "failed": "red", "unreachable": "red", "revert-failed": "red", "paused": "yellow"}


@dataclass
class _Wave:
    name: str
    hosts: tuple[str, ...]
    ended: dict[str, str] = field(default_factory=dict)  # host -> final state

    def counts(self) -> str:
        tally: dict[str, int] = {}
        for state in self.ended.values():
            tally[state] = tally.get(state, 0) + 1
        return " ".join(f"{k} {v}" for k, v in sorted(tally.items()))


class Live:
    def __init__(self, form: str | None = None, stream: TextIO | None = None, hosts: Sequence[str] = ()) -> None:
        self.stream = stream or sys.stdout
        self.form = form or ("rich" if self.stream.isatty() else "plain")
        if self.form not in FORMS:
            raise ValueError(self.form)
        rich = self.form == "rich"
        self.console = Console(file=self.stream, width=width(), force_terminal=rich, no_color=not rich,
                               highlight=False, soft_wrap=False)
        self.fit(hosts)
        self._lock = threading.RLock()
        self._wave: _Wave | None = None
        self._bar: Progress | None = None
        self._task: Any = None
        self._reasons: dict[str, str | None] = {}  # host -> the last reason shown

    def fit(self, hosts: Sequence[str]) -> None:
        """Align the host column to the longest name."""
        self.host_width = max([6, *(len(h) for h in hosts)])

    # -- output -----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A message for people (in json form: a `message` object)."""
        with self._lock:
            if self.form == "json":
                self._json({"type": "message", "text": text})
            elif self.form == "rich":  # tables come rendered, colour codes included
                self.console.print(Text.from_ansi(text), overflow="fold")
            else:
                print(text, file=self.stream, flush=True)

    def document(self, doc: dict[str, Any]) -> None:
        """A machine-readable object: printed in json form only (people get the table instead)."""
        if self.form == "json":
            with self._lock:
                self._json(doc)

    def _json(self, doc: dict[str, Any]) -> None:
        print(json.dumps(doc, sort_keys=True), file=self.stream, flush=True)

    # -- waves ------------------------------------------------------------------------------

    @contextmanager
    def wave(self, name: str, hosts: Sequence[str]) -> Iterator[None]:
        """The running wave: its bar on a terminal, its count on each host's last line otherwise."""
        wave = _Wave(name, tuple(hosts))
        with self._lock:
            self._wave = wave
            self.document({"type": "wave", "wave": name, "hosts": list(hosts), "state": "running"})
            if self.form == "rich":
                self._bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=16),
                                     MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                                     transient=True)
                self._task = self._bar.add_task(f"wave {name}", total=len(hosts))
                self._bar.start()
        try:
            yield
        finally:
            with self._lock:
                if self._bar is not None:
                    self._bar.stop()
                self._bar = self._task = self._wave = None
                self.document({"type": "wave", "wave": name, "state": "ended", "ended": wave.ended})
                if self.form != "json":
                    self.say(f"   wave {name}: {len(wave.ended)}/{len(wave.hosts)} ended"
                             + (f" ({wave.counts()})" if wave.ended else ""))

    # -- hosts ------------------------------------------------------------------------------

    @contextmanager
    def follow(self, run_id: str, label: str | None = None) -> Iterator[None]:
        """Show the events of run `run_id` while the body runs (pyinfra), then the rest of them."""
        follower, stop = Follower(run_id), threading.Event()

        def pump() -> None:
            while not stop.wait(POLL):
                for event in follower.new():
                    self.event(event, label)

        thread = threading.Thread(target=pump, name=f"follow-{run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            for event in follower.new():
                self.event(event, label)

    def event(self, event: dict[str, Any], label: str | None = None) -> None:
        """One change of a host's state, as a line (and the wave's progress when it ended)."""
        with self._lock:
            host, state = event["host"], event["state"]
            wave = self._wave
            ended = state in FINAL_STATES and label is None and wave is not None and host in wave.hosts
            if ended:
                wave.ended[host] = state
                if self._bar is not None:
                    self._bar.update(self._task, completed=len(wave.ended),
                                     description=f"wave {wave.name} {wave.counts()}")
            if self.form == "json":
                self._json({"type": "host", **event, **({"phase": label} if label else {})})
                return
            stamp = time.strftime("%H:%M:%S", time.localtime(event.get("ts", time.time())))
            line = f"{stamp} {host:<{self.host_width}} {(label + ':' if label else '') + state}"
            reason = event.get("error") or event.get("why") or event.get("note")
            line += _generations(event)
            if reason and reason != self._reasons.get(host):  # a rollback's reason is shown once
                line += f": {reason}"
            self._reasons[host] = reason
            if ended and self.form == "plain":
                line += f" [{wave.name} {len(wave.ended)}/{len(wave.hosts)}]"
            style = STYLES.get(state, "") if self.form == "rich" else ""
            for part in wrap(line, self.console.width, indent=" " * 9):
                if self.form == "rich":
                    self.console.print(Text(part, style=style), overflow="fold")
                else:
                    print(part, file=self.stream, flush=True)


def _generations(event: dict[str, Any]) -> str:
    """previous→final at a host's end; the generation it goes back to while rolling back."""
    if "generation" in event or "previous" in event:
        return f" {_gen(event.get('previous'))}→{_gen(event.get('generation'))}"
    if "to" in event:
        return f" to {_gen(event.get('to'))}"
    return ""


def _gen(number: Any) -> str:
    return "-" if number is None else str(number)
