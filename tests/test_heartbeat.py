"""The controller's heartbeat (ipex_fleet.transaction.heartbeat.Beat), with connectors that answer as
pyinfra's do: renewals ride the run's own connection; one that fails or hangs moves the beat to a
connection of its own for the rest of the run, renewing there in the same beat."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import gevent
import pytest

from ipex_fleet import remote
from ipex_fleet.transaction import heartbeat

from .conftest import wait_for


class Connector:
    """A connector's run_shell_command: each command answered with exit 0, or `fail` (an exception)
    or `hang` (seconds) where set."""

    def __init__(self, name: str, fail: bool = False, hang: float = 0.0) -> None:
        self.name, self.fail, self.hang = name, fail, hang
        self.commands: list[str] = []
        self.closed = False

    def run_shell_command(self, command, _timeout=None, **_kw):
        self.commands.append(str(command))
        if self.hang:
            gevent.sleep(self.hang)
        if self.fail:
            raise OSError("Socket is closed")
        return True, SimpleNamespace(stdout_lines=["{}", "", f"{remote._RC_MARK}0"], stderr_lines=[])

    def disconnect(self):
        self.closed = True


@pytest.fixture
def fresh(monkeypatch):
    made: list[Connector] = []

    def connector(_host):
        made.append(Connector(f"own-{len(made)}"))
        return made[-1]

    monkeypatch.setattr(heartbeat, "fresh_connector", connector)
    monkeypatch.setattr(remote, "privilege_args", lambda host: {})
    return made


def beat_for(run: Connector, seconds: float) -> heartbeat.Beat:
    """Beat for `seconds` in a thread of its own (as the heartbeat does; a greenlet under pyinfra)."""
    beat = heartbeat.Beat(SimpleNamespace(name="h1", connector=run), "agent renew", interval=0.05)
    thread = threading.Thread(target=beat.run, daemon=True)
    thread.start()
    time.sleep(seconds)
    beat.stop.set()
    thread.join(timeout=15)
    assert not thread.is_alive()
    return beat


def test_renewals_ride_the_runs_own_connection(fresh):
    run = Connector("run")
    beat = beat_for(run, 0.4)
    assert beat.shared and beat.beats >= 4 and beat.errors == 0 and beat.last_ok is not None
    assert len(run.commands) == beat.beats and fresh == []  # no login of its own
    assert all("agent renew" in c for c in run.commands)


@pytest.mark.parametrize("how", [{"fail": True}, {"hang": 10.0}])
def test_a_run_connection_that_fails_or_hangs_moves_the_beat_to_its_own_at_once(fresh, how):
    run = Connector("run", **how)
    started = time.monotonic()
    beat = beat_for(run, 0.6)
    assert not beat.shared and len(run.commands) == 1  # tried once, never again
    assert len(fresh) == 1 and beat.beats >= 3 and beat.errors == 0  # every beat renewed, the first included
    assert len(fresh[0].commands) == beat.beats and fresh[0].closed
    assert time.monotonic() - started < 5  # a hang costs one interval, not the beat's bound


def test_lock_only_renews_the_lock_alone_from_then_on_and_starts_no_beat(fresh):
    """When the controller leaves the decision to the host (it waits for the watchdog's revert), the
    beat stops renewing the intent: a renewed intent would hold off that very watchdog."""
    run = Connector("run")
    host = SimpleNamespace(name="h1", connector=run)
    beats = heartbeat.Heartbeat()
    beats.lock_only(host, "tok", 30)
    assert beats._beats == {}  # no beat was running: none is started
    beats.keep(host, "tok", 0.2, "intent-1")
    try:
        assert "--intent intent-1" in beats._beats["h1"].command
        beats.lock_only(host, "tok", 0.2)
        assert "--intent" not in beats._beats["h1"].command and "renew --token tok" in beats._beats["h1"].command
        seen = len(run.commands)
        assert wait_for(lambda: len(run.commands) > seen + 1, 5, 0.02)
        assert all("--intent" not in c for c in run.commands[seen + 1:])
    finally:
        beats.stop_all()


def test_run_on_a_session_that_ends_before_the_exit_code_is_session_lost_never_exit_255(fresh):
    """A connector's answer without the exit code's mark (the session ended mid-command): the outcome
    is unknown, as run says of the run's own session; an exit code made up for it (255) was taken for
    the command's own failure (a commit whose answer was lost called a failed claim)."""
    class Cut(Connector):
        def run_shell_command(self, command, _timeout=None, **_kw):
            self.commands.append(str(command))
            return False, SimpleNamespace(stdout_lines=['{"committed": true}'], stderr_lines=[])

    host = SimpleNamespace(name="h1")
    with pytest.raises(remote.SessionLost):
        remote.run_on(Cut("fresh"), host, "agent commit", 5)
    assert remote.run_on(Connector("fresh"), host, "agent commit", 5).returncode == 0
