"""The host agent (ipex_fleet.host.agent), the real program against a model of a NixOS host's profile,
activation and boot loader, on a host clock that tests move: leases, fencing, claims, reverts,
reboots, and a Hypothesis state machine of everything interleaved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ipex_fleet.host import agent as A

OLD, NEW = "/nix/store/aaa-nixos-system-1", "/nix/store/bbb-nixos-system-2"
PROFILE = "/nix/var/nix/profiles/system"


@dataclass
class HostClock:
    """CLOCK_BOOTTIME of one boot, and the boot id; sleeping moves it. Wall time is never read."""

    t: float = 100.0
    boot: str = "boot-1"

    def now(self) -> float:
        return self.t

    def boot_id(self) -> str:
        return self.boot

    def sleep(self, s: float) -> None:
        self.t += s

    def reboot(self) -> None:
        self.boot = f"boot-{int(self.boot.split('-')[1]) + 1}"
        self.t = 5.0  # a new boot's clock starts near zero


@dataclass
class FakeSystem:
    generations: dict[int, str] = field(default_factory=lambda: {1: OLD})
    current: int = 1
    running_path: str = OLD
    boot_entry: int | None = 1
    fail_activation: set[str] = field(default_factory=set)  # store paths whose activation exits 2
    detached: list[tuple[str, list[str]]] = field(default_factory=list)
    active_units: set[str] = field(default_factory=set)
    activating_for: int = 0  # ticks an activation unit stays active

    def profile(self, profile):
        return self.current, self.generations[self.current]

    def set_profile(self, profile, number, path):
        if number in self.generations and self.generations[number] == path:
            self.current = number
        else:
            self.current = max(self.generations) + 1
            self.generations[self.current] = path
        self.boot_entry = self.current
        return True

    def running(self):
        return self.running_path

    def activate(self, path, action, log):
        if path in self.fail_activation:
            return 2
        if action in ("switch", "test"):
            self.running_path = path
        if action in ("switch", "boot"):
            self.boot_entry = self.current
        return 0

    def boot_default(self):
        return self.boot_entry

    def activations_running(self):
        if self.activating_for > 0:
            self.activating_for -= 1
            return ["ipex-fleet-switch-abc.service"]
        return []

    def detach(self, unit, argv, log):
        self.detached.append((unit, argv))
        self.active_units.add(unit)
        return True

    def unit_active(self, unit):
        return unit in self.active_units

    # what the controller does between agent calls
    def switch_to(self, path):
        self.set_profile(PROFILE, None, path)
        self.running_path = path


def make(tmp_path, clock=None, system=None):
    return A.Agent(str(tmp_path / "state"), clock or HostClock(), system or FakeSystem())


def intent(intent_id="i1", run_id="r1", mode="switch"):
    return {"intent_id": intent_id, "run_id": run_id, "previous": {"generation": 1, "path": OLD},
            "target": {"path": NEW}, "mode": mode, "profile": PROFILE, "activation_timeout": 60,
            "record": {"host": "h", "run_id": run_id, "status": "rolled_back"}}


def locked(agent, run_id="r1", seconds=30, grace=0):
    return agent.lock_take({"run_id": run_id, "controller": "c", "pid": 1}, seconds, grace)["token"]


# -- the lock -----------------------------------------------------------------------------------


def test_the_lock_is_taken_once_and_released_only_with_its_token(tmp_path):
    agent = make(tmp_path)
    token = locked(agent)
    with pytest.raises(A.Refused) as refused:
        locked(agent, "r2")
    assert refused.value.code == A.BUSY and refused.value.detail["holder"]["run_id"] == "r1"
    with pytest.raises(A.Refused) as lost:
        agent.lock_release("not-the-token")
    assert lost.value.code == A.LOST and os.path.exists(agent.lock_path)
    agent.lock_release(token)
    assert not os.path.exists(agent.lock_path)
    locked(agent, "r2")


def _push_spec(tmp_path, inputs, current="cur", keep=2):
    return {"flakes": str(tmp_path / "flake"), "roots": str(tmp_path / "roots"), "hash": current,
            "inputs": [str(p) for p in inputs], "keep": keep}


def _pushed(tmp_path, name, age, complete=True):
    d = tmp_path / "flake" / name
    d.mkdir(parents=True)
    if complete:
        (d / ".complete").touch()
    os.utime(d, (time.time() - age, time.time() - age))


def test_the_locks_call_reads_the_push_and_tidies_as_the_builds_round_trip_did(tmp_path):
    """push_state, in the lock's call: the flake's presence, the inputs no root of ours proves valid,
    the older flakes pruned (the newest keep-1 and the current one kept), the roots of flakes gone
    removed, and this flake's inputs rooted only where every one is proven."""
    agent = make(tmp_path)
    inputs = [tmp_path / "store" / "aaa-source", tmp_path / "store" / "bbb-source"]
    for p in inputs:
        p.mkdir(parents=True)
    fresh = agent.push_state(_push_spec(tmp_path, inputs))  # a new host: nothing there yet
    assert fresh == {"present": False, "rooted": False, "unproven": [str(p) for p in inputs]}
    assert (tmp_path / "flake").is_dir() and not (tmp_path / "roots").exists()  # the upload's folder made

    for name, age in (("old1", 400), ("old2", 300), ("old3", 200), ("new", 100)):
        _pushed(tmp_path, name, age)
    (tmp_path / "flake" / ".upload-x.tar.gz").write_text("in flight")  # dot files: never pruned
    for flake, targets in (("new", inputs), ("gone", inputs[:1])):  # "gone": its flake was pruned earlier
        (tmp_path / "roots" / flake).mkdir(parents=True)
        for i, p in enumerate(targets):
            os.symlink(p, tmp_path / "roots" / flake / str(i))
    _pushed(tmp_path, "cur", 50)
    out = agent.push_state(_push_spec(tmp_path, inputs))
    assert out == {"present": True, "rooted": True, "unproven": []}
    assert sorted(os.listdir(tmp_path / "flake")) == [".upload-x.tar.gz", "cur", "new"]
    assert sorted(os.listdir(tmp_path / "roots")) == ["cur", "new"]
    assert [os.readlink(tmp_path / "roots" / "cur" / str(i)) for i in range(2)] == [str(p) for p in inputs]

    again = agent.push_state(_push_spec(tmp_path, inputs))  # rooting again replaces the links
    assert again["rooted"] and again["unproven"] == []


def test_the_locks_call_proves_no_input_a_root_does_not_keep_and_roots_none_then(tmp_path):
    agent = make(tmp_path)
    kept, lost, never = (tmp_path / "store" / n for n in ("kept-src", "lost-src", "never-src"))
    kept.mkdir(parents=True)
    (tmp_path / "roots" / "old").mkdir(parents=True)
    _pushed(tmp_path, "old", 100)
    os.symlink(kept, tmp_path / "roots" / "old" / "0")
    os.symlink(lost, tmp_path / "roots" / "old" / "1")  # a root whose path is not there (a dangling link)
    out = agent.push_state(_push_spec(tmp_path, [kept, lost, never], current="next", keep=3))
    assert out == {"present": False, "rooted": False, "unproven": [str(lost), str(never)]}
    assert not (tmp_path / "roots" / "next").exists()  # the build's round trip roots them, once carried
    assert (tmp_path / "flake" / "old").is_dir()  # within keep


def test_a_push_state_that_cannot_read_says_so_and_proves_nothing(tmp_path):
    agent = make(tmp_path)
    (tmp_path / "roots").write_text("not a folder")
    out = agent.push_state(_push_spec(tmp_path, [tmp_path]))
    assert out["error"] and out["unproven"] == [str(tmp_path)] and not out["rooted"]


def test_the_lock_take_command_carries_the_push_state_only_once_the_lock_is_won(tmp_path, capsys):
    spec = json.dumps(_push_spec(tmp_path, []))
    argv = ["--root", str(tmp_path / "state"), "lock-take", "--owner", '{"run_id": "r1"}', "--for", "30",
            "--push-json", spec]
    assert A.main(argv, make=lambda root: make(tmp_path)) == 0
    assert json.loads(capsys.readouterr().out)["push"] == {"present": False, "rooted": True, "unproven": []}
    (tmp_path / "flake").rmdir()
    argv[argv.index('{"run_id": "r1"}')] = '{"run_id": "r2"}'
    assert A.main(argv, make=lambda root: make(tmp_path)) == A.BUSY
    assert "push" not in json.loads(capsys.readouterr().out) and not (tmp_path / "flake").exists()


def test_a_dead_holders_lock_frees_itself_by_the_hosts_clock_alone(tmp_path, monkeypatch):
    clock = HostClock()
    agent = make(tmp_path, clock)
    token = locked(agent, seconds=30)
    # The controller's wall clock is an hour off, and NTP steps this host's wall clock: irrelevant.
    monkeypatch.setattr(time, "time", lambda: 10**10)
    clock.t += 29
    with pytest.raises(A.Refused):
        locked(agent, "r2")
    clock.t += 2
    new = agent.lock_take({"run_id": "r2"}, 30, 0)
    assert new["took_over"]["run_id"] == "r1"
    with pytest.raises(A.Refused) as lost:  # the old holder is fenced out of everything
        agent.renew(token, 30)
    assert lost.value.code == A.LOST


def test_the_heartbeat_keeps_the_lock_for_as_long_as_it_beats(tmp_path):
    clock = HostClock()
    agent = make(tmp_path, clock)
    token = locked(agent, seconds=10)
    for _ in range(100):  # 500 s of a long build, renewed every 5 s
        clock.t += 5
        agent.renew(token, 10)
    with pytest.raises(A.Refused):
        locked(agent, "r2")


# -- the intent ---------------------------------------------------------------------------------


def test_opening_is_fenced_by_the_lock_and_by_the_recorded_generation(tmp_path):
    system = FakeSystem()
    agent = make(tmp_path, system=system)
    token = locked(agent)
    with pytest.raises(A.Refused) as fenced:
        agent.open(intent(), "stale-token", 30, 0)
    assert fenced.value.code == A.FENCED
    system.switch_to("/nix/store/ccc-someone-elses")  # another deploy moved the host meanwhile
    with pytest.raises(A.Refused) as moved:
        agent.open(intent(), token, 30, 0)
    assert moved.value.code == A.FENCED and "not on the recorded generation 1" in moved.value.detail["error"]
    assert not os.path.exists(agent.intent_path)


def test_one_intent_at_a_time_and_each_claimed_once(tmp_path):
    agent = make(tmp_path)
    token = locked(agent)
    agent.open(intent("i1"), token, 30, 0)
    with pytest.raises(A.Refused) as busy:
        agent.open(intent("i2"), token, 30, 0)
    assert busy.value.code == A.BUSY
    assert agent.claim("i1", A.COMMITTED) is True
    assert agent.claim("i1", "reverting-controller") is False, "rename(2): the second claim fails"
    assert agent.outcome("i1")["decided_by"] == A.COMMITTED


def test_the_watchdog_acts_only_on_a_spent_lease_and_restores_verified(tmp_path):
    clock, system = HostClock(), FakeSystem()
    agent = make(tmp_path, clock, system)
    token = locked(agent)
    agent.open(intent(), token, 30, 0)
    assert system.detached[0][0] == "ipex-fleet-watchdog-i1"
    system.switch_to(NEW)
    assert agent.claim("i1", "watchdog") is False  # lease alive
    clock.t += 31
    result = agent.watch("i1", poll=1)
    assert result["outcome"] == "reverted" and result["by"] == "watchdog"
    assert (system.current, system.running_path, system.boot_entry) == (1, OLD, 1)
    assert not os.path.exists(agent.lock_path), "the run's lock goes with its reverted intent"
    record = json.loads(Path(agent.root, "deploys.jsonl").read_text().splitlines()[-1])
    assert record["status"] == "rolled_back" and record["final"]["path"] == OLD


def test_a_revert_whose_old_generation_fails_to_activate_is_revert_failed(tmp_path):
    clock, system = HostClock(), FakeSystem(fail_activation={OLD})
    agent = make(tmp_path, clock, system)
    agent.open(intent(), locked(agent), 30, 0)
    system.switch_to(NEW)
    clock.t += 31
    with pytest.raises(A.Refused) as failed:
        agent.watch("i1")
    assert failed.value.code == A.FAILED and failed.value.detail["outcome"] == "revert-failed"
    assert agent.outcome("i1")["outcome"] == "revert-failed"
    record = json.loads(Path(agent.root, "deploys.jsonl").read_text().splitlines()[-1])
    assert record["status"] == "revert-failed" and "exited 2" in record["error"]


def test_an_activations_fence_opens_only_for_its_open_intent_with_lease_left(tmp_path):
    """The fence an activation runs first, inside its unit: its intent open, its lease unspent; an
    activation that reaches the host after a revert (or a commit) claimed the intent switches nothing."""
    clock, system = HostClock(), FakeSystem()
    agent = make(tmp_path, clock, system)
    agent.open(intent(), locked(agent), 30, 0)
    assert agent.fence("i1")["fence"] == "open"
    with pytest.raises(A.Refused) as other:
        agent.fence("i0")
    assert other.value.code == A.LOST
    clock.t += 31  # the lease spent, the watchdog not yet round: nothing starts
    with pytest.raises(A.Refused) as spent:
        agent.fence("i1")
    assert spent.value.code == A.LOST and "lease ran out" in spent.value.detail["error"]
    assert agent.watch("i1", poll=1)["outcome"] == "reverted"
    with pytest.raises(A.Refused) as decided:
        agent.fence("i1")
    assert decided.value.code == A.LOST and decided.value.detail["decided_by"] == "watchdog"
    assert (system.current, system.running_path) == (1, OLD)


def test_a_revert_claimed_after_the_fence_opened_waits_for_that_activation(tmp_path):
    """The other order: the fence opened (the activation's unit runs), then the revert claims; the
    revert waits for the running activation before it restores, so the host ends on the recorded one."""
    clock, system = HostClock(), FakeSystem()
    agent = make(tmp_path, clock, system)
    agent.open(intent(), locked(agent), 30, 0)
    assert agent.fence("i1")["fence"] == "open"
    waited = []

    def running():
        if not waited:  # the activation the fence let through: it ends while the revert waits
            system.switch_to(NEW)
            waited.append(True)
            return ["ipex-fleet-switch-abc.service"]
        return []

    system.activations_running = running
    result = agent.revert("i1", "reverting-controller")
    assert waited and result["outcome"] == "reverted"
    assert (system.current, system.running_path) == (1, OLD)


def test_the_boot_entry_is_part_of_the_verification(tmp_path):
    class StuckLoader(FakeSystem):
        def activate(self, path, action, log):
            rc = super().activate(path, action, log)
            self.boot_entry = 2  # the boot loader kept the new default
            return rc

    clock, system = HostClock(), StuckLoader()
    agent = make(tmp_path, clock, system)
    agent.open(intent(), locked(agent), 30, 0)
    system.switch_to(NEW)
    with pytest.raises(A.Refused) as failed:
        agent.revert("i1", "reverting-controller")
    assert "boot loader's default is generation 2" in " ".join(failed.value.detail["problems"])


def test_a_requested_rollback_uses_the_reverts_own_restore_fenced_by_the_lock(tmp_path):
    """deploys/rollback.py's move to an earlier generation is the agent's `restore`: the code every revert
    runs (profile, activation, verification), only under the caller's lock and with no intent open."""
    system = FakeSystem()
    agent = make(tmp_path, system=system)
    token = locked(agent)
    agent.open(intent(), token, 30, 0)
    system.switch_to(NEW)
    with pytest.raises(A.Refused) as busy:
        agent.restore(token, {"generation": 1, "path": OLD}, "switch", PROFILE)
    assert busy.value.code == A.BUSY and system.running_path == NEW
    agent.claim("i1", A.COMMITTED)
    with pytest.raises(A.Refused) as fenced:
        agent.restore("not-the-token", {"generation": 1, "path": OLD}, "switch", PROFILE)
    assert fenced.value.code == A.LOST and system.running_path == NEW
    done = agent.restore(token, {"generation": 1, "path": OLD}, "switch", PROFILE)
    assert done["problems"] == [] and done["final"] == {"generation": 1, "path": OLD}
    assert (system.running_path, system.current, system.boot_entry) == (OLD, 1, 1)
    assert os.path.exists(agent.lock_path)  # the caller records, then releases its lock
    system.fail_activation.add(NEW)
    with pytest.raises(A.Refused) as failed:  # the same verification a revert makes
        agent.restore(token, {"generation": 2, "path": NEW}, "switch", PROFILE)
    assert failed.value.code == A.FAILED and "exited 2" in failed.value.detail["problems"][0]


def test_a_revert_waits_for_an_activation_that_still_runs(tmp_path):
    clock, system = HostClock(), FakeSystem(activating_for=5)
    agent = make(tmp_path, clock, system)
    agent.open(intent(), locked(agent), 30, 0)
    system.switch_to(NEW)
    clock.t += 31
    agent.watch("i1")
    data = json.loads(Path(agent.resolved_path("i1", "watchdog")).read_text())
    assert data["verified"]["waited_for_activation"] >= 5 and data["outcome"] == "reverted"


def test_between_activation_and_confirmation_only_confirm_renews(tmp_path):
    clock = HostClock()
    agent = make(tmp_path, clock)
    token = locked(agent)
    agent.open(intent(), token, 30, 0)
    agent.mark("i1", "activated", 10)
    for _ in range(3):
        clock.t += 4
        agent.renew(token, 30, "i1")  # the heartbeat, over the old session, does not extend it
    assert agent.status()["intent"]["left"] < 0
    with pytest.raises(A.Refused):
        agent.mark("i1", "confirmed", 30)


def test_a_confirmed_intent_lives_while_the_heartbeat_beats_and_dies_without_it(tmp_path):
    clock = HostClock()
    agent = make(tmp_path, clock)
    token = locked(agent, seconds=10)
    agent.open(intent(), token, 10, 0)
    agent.mark("i1", "activated", 10)
    agent.mark("i1", "confirmed", 10)
    for _ in range(60):  # a slow peer keeps pyinfra waiting for five minutes: no matter
        clock.t += 5
        agent.renew(token, 10, "i1")
    assert agent.status()["intent"]["left"] > 0
    clock.t += 11  # the controller died
    assert agent.watch("i1")["outcome"] == "reverted"


def test_a_reboot_rearms_the_lease_from_the_new_boot(tmp_path):
    clock, system = HostClock(), FakeSystem()
    agent = make(tmp_path, clock, system)
    token = locked(agent, seconds=30, grace=120)
    agent.open(intent(mode="boot"), token, 30, 120)
    system.set_profile(PROFILE, None, NEW)
    clock.reboot()
    system.running_path = NEW  # it booted the new generation; the controller never came back
    system.active_units.clear()  # a boot ends every transient unit
    assert agent.boot()["watching"] == "i1"
    assert 119 < agent.status()["intent"]["left"] <= 120
    clock.t += 121
    assert agent.watch("i1")["outcome"] == "reverted"
    assert (system.current, system.running_path, system.boot_entry) == (1, OLD, 1)


def test_a_revert_cut_by_a_crash_is_finished_at_boot_once(tmp_path):
    clock, system = HostClock(), FakeSystem()
    agent = make(tmp_path, clock, system)
    agent.open(intent(), locked(agent), 30, 0)
    system.switch_to(NEW)
    assert agent.claim("i1", "reverting-controller")  # then the host crashed before restoring
    clock.reboot()
    system.active_units.clear()
    booted = agent.boot()
    assert booted["finishing"] == ["i1"]
    unit, argv = system.detached[-1]
    assert unit == "ipex-fleet-revert-i1" and argv[-4:] == ["--intent", "i1", "--who", "reverting-controller"]
    assert agent.finish("i1", "reverting-controller")["outcome"] == "reverted"
    assert agent.finish("i1", "reverting-controller")["outcome"] == "reverted"  # idempotent
    assert len(Path(agent.root, "deploys.jsonl").read_text().splitlines()) == 1


def test_recovery_refuses_a_live_intent_and_reverts_a_dead_one_detached(tmp_path):
    clock, system = HostClock(), FakeSystem()
    agent = make(tmp_path, clock, system)
    agent.open(intent(), locked(agent), 30, 0)
    system.switch_to(NEW)
    with pytest.raises(A.Refused) as busy:
        agent.recover()
    assert busy.value.code == A.BUSY and busy.value.detail["run_id"] == "r1"
    clock.t += 31
    assert agent.recover() == {"reverting": ["i1"]}
    assert system.detached[-1][0] == "ipex-fleet-revert-i1"
    with pytest.raises(A.Refused) as pending:
        agent.outcome("i1")
    assert pending.value.code == A.BUSY
    agent.finish("i1", "recovery")
    assert agent.outcome("i1") == {"decided_by": "recovery", "outcome": "reverted", "problems": []}


def test_a_torn_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "intent.json")
    A.write_json(path, {"intent_id": "old"})

    def power_cut(*_a):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError):
        A.write_json(path, {"intent_id": "new"})
    assert json.loads(Path(path).read_text()) == {"intent_id": "old"}


def test_commit_claims_records_and_releases_in_one_call_and_a_won_claim_stands(tmp_path):
    agent = make(tmp_path)
    token = locked(agent)
    agent.open(intent("i1"), token, 30, 0)
    record = {"run_id": "r1", "status": "ok"}
    assert agent.commit("i1", token, record) == {"won": True, "recorded": True, "released": True, "again": False}
    assert agent.outcome("i1")["decided_by"] == A.COMMITTED and agent.status()["lock"] is None
    # asked again (its answer was lost): the same answer, the record once
    assert agent.commit("i1", token, record)["recorded"] is True
    log = tmp_path / "state" / "deploys.jsonl"
    assert [json.loads(line) for line in log.read_text().splitlines()] == [record]
    # a claim the watchdog won first: LOST, nothing written
    token = locked(agent, "r2")
    agent.open({**intent("i2", "r2"), "previous": {"generation": 1, "path": OLD}}, token, 30, 0)
    agent.clock.t += 31
    agent.revert("i2", "watchdog")
    with pytest.raises(A.Refused) as lost:
        agent.commit("i2", token, {"run_id": "r2"})
    assert lost.value.code == A.LOST and lost.value.detail["decided_by"] == "watchdog"
    assert [json.loads(line)["status"] for line in log.read_text().splitlines()] == ["ok", "rolled_back"], \
        "the watchdog's own line only"


def test_a_commit_whose_record_cannot_be_written_is_still_won(tmp_path):
    agent = make(tmp_path)
    token = locked(agent)
    agent.open(intent("i1"), token, 30, 0)
    (tmp_path / "state" / "deploys.jsonl").mkdir()  # the append fails after the claim
    out = agent.commit("i1", token, {"run_id": "r1"})
    assert out["won"] and not out["recorded"] and out["record_error"] and out["released"]
    assert agent.outcome("i1")["decided_by"] == A.COMMITTED
    other = make(tmp_path / "other")
    tok = locked(other)
    other.open(intent("i9"), tok, 30, 0)
    out = other.commit("i9", "not-the-token", None)
    assert out["won"] and not out["released"] and other.status()["lock"] is not None


@pytest.mark.parametrize("argv", [
    ["--root", "/r", "status"],
    ["--root", "/r", "lock-take", "--owner", '{"run_id": "r"}', "--for", "30", "--reboot-grace", "90", "--adopt-run"],
    ["--root", "/r", "lock-take", "--owner", "{}", "--for", "30", "--force"],
    ["--root", "/r", "lock-take", "--owner", "{}", "--for", "30", "--push-json", '{"hash": "h"}'],
    ["--root", "/r", "lock-release", "--token", "t"],
    ["--root", "/r", "renew", "--token", "t", "--for", "7.5"],
    ["--root", "/r", "renew", "--token", "t", "--for", "30", "--intent", "i1"],
    ["--root", "/r", "open", "--intent-json", "{}", "--token", "t", "--for", "30", "--reboot-grace", "1"],
    ["--root", "/r", "activated", "--intent", "i", "--for", "30"],
    ["--root", "/r", "confirm", "--intent", "i", "--for", "30"],
    ["--root", "/r", "claim", "--intent", "i", "--who", "committed"],
    ["--root", "/r", "commit", "--intent", "i", "--record-stdin", "--token", "t"],
    ["--root", "/r", "commit", "--intent", "i"],
    ["--root", "/r", "commit", "--intent", "i", "--record-stdin", "--token", "t", "--metrics-dir", "/m d"],
    ["--root", "/r", "metrics", "--textfile-dir", "/var/lib/prometheus-node-exporter-text"], ["metrics", "--textfile-dir", "d"],
    ["--root", "/r", "revert", "--intent", "i", "--who", "watchdog", "--detach"],
    ["--root", "/r", "finish", "--intent", "i", "--who", "recovery"],
    ["--root", "/r", "outcome", "--intent", "i"], ["--root", "/r", "watch", "--intent", "i"],
    ["--root", "/r", "rearm", "--intent", "i"], ["recover"], ["--root", "/r", "boot"],
])
def test_the_fast_reading_of_the_command_line_is_argparses(argv):
    assert vars(A.parse_fast(argv)) == vars(A._parse(argv))


@pytest.mark.parametrize("argv", [
    ["--root", "/r", "claim", "--intent", "i", "--who", "nobody"], ["--root", "/r", "renew", "--token", "t"],
    ["--root", "/r", "renew", "--token", "t", "--for", "x"], ["--root", "/r", "status", "--help"],
    ["--root", "/r", "lock-release", "--token=t"], ["--root", "/r", "nonsense"], [],
    ["--root", "/r", "outcome", "--intent", "i", "--intent", "j"],
    ["--root", "/r", "metrics"], ["--root", "/r", "commit", "--intent", "i", "--metrics-dir"],
])
def test_anything_unusual_goes_to_argparse(argv):
    assert A.parse_fast(argv) is None


def test_the_command_line_prints_one_json_object_and_its_exit_code(tmp_path):
    root = str(tmp_path / "state")
    run = lambda *args: subprocess.run([sys.executable, A.__file__, "--root", root, *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=30)
    took = run("lock-take", "--owner", json.dumps({"run_id": "r1"}), "--for", "30")
    assert took.returncode == 0 and "token" in json.loads(took.stdout)
    again = run("lock-take", "--owner", json.dumps({"run_id": "r2"}), "--for", "30")
    assert again.returncode == A.BUSY and json.loads(again.stdout)["holder"] == {"run_id": "r1"}
    status = json.loads(run("status").stdout)
    assert status["lock"]["owner"] == {"run_id": "r1"} and 29 < status["lock"]["left"] <= 30
    assert "token" not in json.dumps(status), "the token never leaves through status"


# -- everything interleaved ---------------------------------------------------------------------


class HostAgentMachine(RuleBasedStateMachine):
    """A controller (or two), the watchdog, recovery and reboots, in any order: every intent is decided
    exactly once, a decided host is on the recorded generation or committed on the target, and a lock
    is never held by two."""

    def __init__(self):
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="agent-sm-"))
        self.clock, self.system = HostClock(), FakeSystem()
        self.agent = A.Agent(str(self.dir), self.clock, self.system)
        self.tokens: dict[str, str] = {}
        self.opened: list[str] = []
        self.n = 0

    def teardown(self):
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)  # one folder per example, else hundreds in /tmp

    @rule(run=st.sampled_from(["r1", "r2"]))
    def take_lock(self, run):
        try:
            self.tokens[run] = self.agent.lock_take({"run_id": run}, 20, 60)["token"]
        except A.Refused:
            pass

    @rule(run=st.sampled_from(["r1", "r2"]))
    def open_and_switch(self, run):
        if run not in self.tokens:
            return
        self.n += 1
        iid = f"i{self.n}"
        n, path = self.system.profile(PROFILE)
        record = {**intent(iid, run), "previous": {"generation": n, "path": path}}
        try:
            self.agent.open(record, self.tokens[run], 20, 60)
        except A.Refused:
            return
        self.opened.append(iid)
        self.system.switch_to(f"/nix/store/{self.n:03d}-nixos-system")

    @rule(run=st.sampled_from(["r1", "r2"]))
    def heartbeat(self, run):
        intent_ = self.agent.status()["intent"]
        try:
            self.agent.renew(self.tokens.get(run, "none"), 20,
                             intent_["intent_id"] if intent_ and intent_["run_id"] == run else None)
        except A.Refused:
            pass

    @rule(seconds=st.sampled_from([1, 5, 19, 21, 70]))
    def time_passes(self, seconds):
        self.clock.t += seconds

    @rule()
    def watchdog_looks(self):
        intent_ = self.agent.status()["intent"]
        if intent_ and intent_["left"] <= 0:
            try:
                self.agent.revert(intent_["intent_id"], "watchdog")
            except A.Refused:
                pass

    @rule(who=st.sampled_from([A.COMMITTED, "reverting-controller"]))
    def controller_decides(self, who):
        intent_ = self.agent.status()["intent"]
        if not intent_:
            return
        if who == A.COMMITTED:
            self.agent.claim(intent_["intent_id"], who)
        else:
            try:
                self.agent.revert(intent_["intent_id"], who)
            except A.Refused:
                pass

    @rule(run=st.sampled_from(["r1", "r2"]))
    def controller_commits_in_one_call(self, run):
        """The agent's commit (claim, record, release): decides like the claim, even asked twice."""
        intent_ = self.agent.status()["intent"]
        if not intent_ or intent_["run_id"] != run:
            return
        for _ in range(2):
            try:
                self.agent.commit(intent_["intent_id"], self.tokens.get(run), {"run_id": run, "i": intent_["intent_id"]})
            except A.Refused:
                pass

    @rule()
    def reboot(self):
        self.clock.reboot()
        self.system.active_units.clear()
        self.agent.boot()

    @rule()
    def recovery(self):
        try:
            self.agent.recover()
        except A.Refused:
            pass
        for u in list(self.system.detached):
            if u[0].startswith("ipex-fleet-revert-"):
                iid, who = u[1][-3], u[1][-1]
                try:
                    self.agent.finish(iid, who)
                except A.Refused:
                    pass

    @invariant()
    def each_intent_decided_at_most_once(self):
        for iid in self.opened:
            claims = list((self.dir / "resolved").glob(f"{iid}.*.json"))
            open_ = (self.dir / "intent.json").exists() and json.loads(
                (self.dir / "intent.json").read_text())["intent_id"] == iid
            assert len(claims) + int(open_) <= 1, (iid, claims)

    @invariant()
    def a_reverted_intent_left_the_host_on_its_previous_generation(self):
        last = self.opened[-1] if self.opened else None
        if last is None:
            return
        for path in (self.dir / "resolved").glob(f"{last}.*.json"):
            data = json.loads(path.read_text())
            if data.get("outcome") == "reverted":
                assert self.system.running_path == data["previous"]["path"]
                assert self.system.generations[self.system.current] == data["previous"]["path"]


TestHostAgentMachine = HostAgentMachine.TestCase
TestHostAgentMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# -- what the agent imports: json's C half, no re ------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_the_agents_json_is_jsons_own_both_ways(value):
    """dumps and loads, by json's C encoder and scanner, give what json.dumps(sort_keys=True) and
    json.loads give: the host's records and answers read the same by every reader."""
    text = A.dumps(value)
    assert text == json.dumps(value, sort_keys=True)
    back, expected = A.loads(text), json.loads(text)
    assert json.dumps(back, sort_keys=True) == json.dumps(expected, sort_keys=True)  # NaN != NaN: compare as text
    assert A.loads(f" \n{text}\t ") == A.loads(text) or text == "NaN"


@pytest.mark.parametrize("bad", ["", " ", "{", '{"a": 1} x', "[1,]", "{'a': 1}", '"\\x"', "nul", '{"a": 1}{}',
                                 '"tab\tinside"'])
def test_the_agents_json_refuses_what_json_refuses(bad):
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        A.loads(bad)


def test_the_agents_json_without_its_c_half_is_json(monkeypatch):
    monkeypatch.setattr(A, "_json", None)
    assert A.dumps({"b": [1.5, None], "a": "é"}) == '{"a": "\\u00e9", "b": [1.5, null]}'
    assert A.loads('{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    with pytest.raises(ValueError):
        A.loads("{")


def test_the_agent_refuses_what_json_cannot_write():
    with pytest.raises(TypeError, match="not JSON serializable"):
        A.dumps({"a": object()})
    with pytest.raises(TypeError):
        A.dumps({1.5: "a float key"}) if False else A.dumps({(1, 2): "a tuple key"})


@pytest.mark.parametrize("link, number", [
    ("system-42-link", 42), ("/nix/var/nix/profiles/system-7-link", 7), ("system-1-2-link", 2), ("-3-link", 3),
    ("system-link", None), ("42-link", None), ("system-42", None), ("system-4a-link", None), ("system--link", None),
    ("system-42-link.tmp", None), ("", None)])
def test_a_generations_number_is_read_from_its_link_as_the_regex_read_it(link, number):
    import re

    m = re.search(r"-(\d+)-link$", link)
    assert A.generation_of(link) == number == (int(m.group(1)) if m else None)


@pytest.mark.parametrize("value, number", [("nixos-generation-12.conf", 12), ("nixos-generation-3", 3),
                                           ("nixos-generation-.conf", None), ("other-12.conf", None), ("", None)])
def test_the_boot_loaders_default_generation_is_read_without_re(value, number):
    assert A._leading_number(value, "nixos-generation-") == number


@pytest.mark.parametrize("intent_id, valid", [("r1-abc", True), ("a", True), ("A.b_c-9", True), ("a" * 81, True),
                                              ("a" * 82, False), ("", False), ("-a", False), (".a", False),
                                              ("a/b", False), ("a b", False), ("a\n", False), ("é", False),
                                              ("٣", False)])
def test_an_intent_id_is_checked_as_before(intent_id, valid):
    assert A.valid_id(intent_id) is valid


# -- the commands the agent runs ------------------------------------------------------------------


def test_a_command_run_by_the_agent_gives_its_exit_code_with_its_output_dropped(tmp_path, capfd):
    script = tmp_path / "prog"
    script.write_text("#!/bin/sh\necho out; echo err >&2; read x && echo \"stdin: $x\"; exit 3\n")
    script.chmod(0o755)
    assert A._run([str(script)]) == 3
    assert A._run(["sh", "-c", "exit 0"]) == 0  # a bare name, found on PATH
    assert capfd.readouterr() == ("", ""), "the agent prints one JSON object: a command's output is dropped"


def test_a_command_that_is_missing_or_runs_too_long_is_127_and_killed(tmp_path):
    assert A._run(["ipex-fleet-no-such-program"]) == 127
    assert A._run([str(tmp_path / "missing")]) == 127
    started = time.monotonic()
    pidfile = tmp_path / "pid"
    assert A._run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], timeout=0.3) == 127
    assert time.monotonic() - started < 5
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists(), "the command ran past its timeout and was killed and reaped"


def test_which_finds_what_shutil_finds(tmp_path, monkeypatch):
    import shutil

    (tmp_path / "notexec").write_text("")
    (tmp_path / "adir").mkdir()
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    for name in ("sh", "systemd-run", "notexec", "adir", "ipex-fleet-no-such-program"):
        assert A._which(name) == shutil.which(name), name


def test_the_intents_watchdog_starts_without_subprocess_or_shutil(tmp_path):
    """The intent's opening runs `systemd-run` at every deploy: the agent starts it without importing
    subprocess or shutil (10 ms of CPU, as much as the call's whole start-up)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import agent as A; "
            "assert A._run(['sh', '-c', 'exit 5']) == 5; A._systemd(); "
            "print(sorted(m for m in ('subprocess', 'shutil', 're') if m in sys.modules))")
    folder = Path(A.__file__).parent
    out = subprocess.run([sys.executable, "-S", "-c", code, str(folder)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("answer,running", [
    ("exit 0", []),
    ("echo 'ipex-fleet-switch-abc.service loaded deactivating stop-sigterm x'", ["ipex-fleet-switch-abc.service"]),
    ("exit 1", ["(systemctl list-units exited 1)"]),
])
def test_the_revert_counts_a_listing_that_fails_as_an_activation_running(tmp_path, monkeypatch, answer, running):
    """The real System's listing of activation units (systemctl is a script here): deactivating units
    count, and a listing that fails counts as one running, so a revert waits rather than restore beside
    an activation it could not see."""
    (tmp_path / "systemctl").write_text(
        '#!/bin/sh\n[ "$1 $4" = "list-units --state=active,activating,deactivating" ] || exit 9\n' + answer + "\n")
    (tmp_path / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(A, "_systemd", lambda: True)
    assert A.System().activations_running() == running
    monkeypatch.setattr(A, "_systemd", lambda: False)  # no systemd: activations ran in sessions of their own
    assert A.System().activations_running() == []
