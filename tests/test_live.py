"""Live progress: the transaction's events, followed while they are written, shown as lines (plain),
as JSON objects (--json), and as a live bar on a terminal, within 80 columns."""

from __future__ import annotations

import io
import json
import re
import threading
import time

import pytest

from ipex_fleet.transaction import progress
from ipex_fleet.views.live import Live

HOSTS = [f"gpu-node-{i:02d}" for i in range(1, 4)]
LONG = ("health: health checks failed: accelerator: expected 2 xpu devices, torch sees 1 "
        "(ZE_AFFINITY_MASK=0); comfyui: comfyui.service failed: Torch not compiled with CUDA enabled")


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("IPEX_FLEET_STATE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "80")
    return tmp_path


def play(run_id: str) -> None:
    """What three hosts' transactions write while a wave runs: one rolls back."""
    for state in ("preflight", "pushing", "building", "switching", "health"):
        for host in HOSTS:
            progress.emit(run_id, host, state)
            time.sleep(0.01)
    progress.emit(run_id, HOSTS[0], "ok", previous=41, generation=42)
    progress.emit(run_id, HOSTS[1], "rolling back", to=41, why=LONG)
    progress.emit(run_id, HOSTS[1], "rolled_back", previous=41, generation=41, error=LONG)
    progress.emit(run_id, HOSTS[2], "ok", previous=41, generation=42)


def run_wave(live: Live, run_id: str) -> None:
    writer = threading.Thread(target=play, args=(run_id,))
    with live.wave("wave1", HOSTS), live.follow(run_id):
        writer.start()  # written while followed, as pyinfra does
        writer.join()


def test_plain_lines_follow_each_host_and_count_the_wave(state):
    out = io.StringIO()
    live = Live(None, out, HOSTS)
    assert live.form == "plain"  # not a terminal
    run_wave(live, "r1")
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= 80, out.getvalue()
    assert "\x1b[" not in out.getvalue()
    for host in HOSTS:  # a line per change of state, in order
        states = [re.split(r"\s+", line)[2] for line in lines if re.match(rf"\d\d:\d\d:\d\d {host} ", line)]
        assert states[:5] == ["preflight", "pushing", "building", "switching", "health"], lines
    assert re.search(r"gpu-node-01 +ok 41→42 \[wave1 1/3\]", out.getvalue())
    assert re.search(r"gpu-node-03 +ok 41→42 \[wave1 3/3\]", out.getvalue())
    # The rollback's reason folds onto the next lines, indented; no word is lost. It is shown once:
    # the host's end does not repeat it.
    start = next(i for i, line in enumerate(lines) if "gpu-node-02 rolling back to 41:" in line)
    folded = " ".join(line.strip() for line in lines[start:start + 4])
    assert "ZE_AFFINITY_MASK=0); comfyui: comfyui.service failed: Torch not compiled with CUDA enabled" in folded
    assert lines[start + 1].startswith(" " * 9)
    assert re.search(r"gpu-node-02 +rolled_back 41→41 \[wave1 2/3\]$", out.getvalue(), re.M)
    assert out.getvalue().count("comfyui.service failed") == 1
    assert lines[-1] == "   wave wave1: 3/3 ended (ok 2 rolled_back 1)"


def test_events_of_other_phases_do_not_count_toward_the_wave(state):
    out = io.StringIO()
    live = Live("plain", out, HOSTS)
    with live.wave("canary", HOSTS[:1]):
        with live.follow("r2"):
            progress.emit("r2", HOSTS[0], "ok", previous=1, generation=2)
        with live.follow("r2.rollback", "rollback"):
            progress.emit("r2.rollback", HOSTS[0], "ok", previous=2, generation=1)
    text = out.getvalue()
    assert re.search(r"gpu-node-01 +rollback:ok 2→1$", text, re.M)
    assert text.splitlines()[-1] == "   wave canary: 1/1 ended (ok 1)"


def test_json_form_is_one_object_per_line(state):
    out = io.StringIO()
    live = Live("json", out, HOSTS)
    live.say("rollout r3: 1 wave(s)")
    run_wave(live, "r3")
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert docs[0] == {"type": "message", "text": "rollout r3: 1 wave(s)"}
    assert docs[1] == {"type": "wave", "wave": "wave1", "hosts": HOSTS, "state": "running"}
    hosts = [d for d in docs if d["type"] == "host"]
    assert len(hosts) == 5 * 3 + 4 and all(d["run_id"] == "r3" for d in hosts)
    assert {"host": HOSTS[1], "state": "rolled_back", "generation": 41, "error": LONG}.items() <= hosts[-2].items()
    assert docs[-1] == {"type": "wave", "wave": "wave1", "state": "ended",
                        "ended": {HOSTS[0]: "ok", HOSTS[1]: "rolled_back", HOSTS[2]: "ok"}}


def test_a_terminal_gets_a_live_bar_within_80_columns(state):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    live = Live(None, out, HOSTS)
    assert live.form == "rich"
    run_wave(live, "r4")
    raw = out.getvalue()
    assert "\x1b[" in raw  # colour and cursor control
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    lines = [part for line in shown.split("\n") for part in line.split("\r")]
    assert max(map(len, lines)) <= 80
    assert any(re.search(r"wave wave1 .*\d/3", line) for line in lines), "the wave's bar was drawn"
    assert any("gpu-node-02 rolled_back 41→41" in line for line in lines)


def test_a_half_written_line_waits_for_its_end(state):
    path = progress.events_path("r5")
    path.parent.mkdir(parents=True)
    path.write_text('{"host": "z", "state": "ok"}\n')  # an earlier wave's: not shown again
    follower = progress.Follower("r5")
    with open(path, "a") as f:
        f.write('{"host": "a", "state": "ok"}\n{"host": "b", ')
    assert [e["host"] for e in follower.new()] == ["a"]
    with open(path, "a") as f:
        f.write('"state": "failed"}\n')
    assert [e["host"] for e in follower.new()] == ["b"]
    assert list(follower.new()) == []
