"""The real transaction code against a scripted host, in seconds: for every step from the switch to
the commit and every way it can end, the host ends committed, or on its recorded generation
(verified), or with an open intent that the watchdog or recovery resolves. Never anywhere else.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ipex_fleet.ledger import results
from ipex_fleet.transaction import core, flow, runstate
from ipex_fleet.domain import Status

from ipex_fleet.remote import StepTimeout

from .scripted_host import LOST_HOWS, _call_id, ControllerDied, Fault, ScriptedHost, scripted_controller

STEPS = flow.DEPLOY
# Every command from the lock to the record, in the order the transaction sends them (the two
# `renew` are the agent's `activated`, in the activation's round trip, and the confirmation over a new
# login; the heartbeat's renewals do not wait for step boundaries).
# The commit is one command: the claim, the host's record and the lock's release (the agent's `commit`).
POINTS = [("lock", 1), ("open_intent", 1), ("set_profile", 1), ("activate", 1), ("renew", 1), ("renew", 2),
          ("models", 1), ("probe", 1), ("bench", 1), ("commit", 1)]
HOWS = ("fail", "timeout", "drop", "die", "die_after")
MODEL = {"kind": "checkpoints", "name": "a.safetensors", "url": "https://mirror.example/a.safetensors",
         "sha256": "a" * 64}


@pytest.fixture
def controller(tmp_path, monkeypatch):
    """A controller whose remote commands reach the scripted host (privileges and new connections too)."""
    flake, _clock = scripted_controller(tmp_path, monkeypatch)
    runs = itertools.count()

    def deploy(host: ScriptedHost) -> tuple[str, bool]:
        """Run every step as pyinfra would; returns (run id, whether the controller survived)."""
        run_id = f"run-{next(runs)}"
        monkeypatch.setenv("IPEX_FLEET_RUN_ID", run_id)
        host.state = SimpleNamespace()  # a new pyinfra run: a new State
        try:
            for step in STEPS:
                if not flow.run_step(None, host, step):
                    break
        except ControllerDied:
            return run_id, False
        return run_id, True

    def host(**data) -> ScriptedHost:
        return ScriptedHost("h1", {"flake": str(flake), "models": [MODEL], "command_timeout": 5,
                                   "health_levels": [2], **data})

    return deploy, host


def check_invariant(host: ScriptedHost, run_id: str, previous: str) -> str:
    """The host is committed on the target, or back on `previous` (profile and running system)."""
    assert host.intent is None, f"an open intent was left: {host.intent}"
    decided = [k for k in host.resolved if k.startswith(run_id + ".")]
    if not decided:  # no intent was ever journaled: then nothing may have changed either
        assert host.running == previous and host.profile_path == previous and len(host.generations) == 1
        return "untouched"
    assert len(decided) == 1, decided
    if decided[0].endswith(".committed"):
        assert host.running == host.profile_path == host.target_build
        return "committed"
    assert host.running == previous and host.profile_path == previous, (host.running, host.profile_path)
    outcome = host.resolved[decided[0]]
    assert outcome == "" or outcome.startswith("reverted"), outcome
    assert host.lock is None or host.lock["run_id"] != run_id, "the dead run's lock is released"
    return "reverted"


def test_a_healthy_deploy_commits(controller):
    deploy, make = controller
    host = make()
    run_id, alive = deploy(host)
    assert alive and check_invariant(host, run_id, "-") == "committed"
    result = results.read_host_result(run_id, "h1")
    assert result.status is Status.OK and result.final.path == host.target_build and host.lock is None
    assert host.watchdogs == {run_id} and not host.dropped and host.agent_installed


def test_a_change_deploy_takes_one_round_trip_a_part_from_the_lock_to_the_commit(controller):
    """Each round trip that is not work was folded into one that is: the push's check and tidy into the
    lock's, the running system into the build's, the profile's switch into the intent's opening (once
    it is open), the `activated` mark into the activation's, the record,
    the lock's release and the metrics into the commit's; and with no gate after the activation, the
    confirmation over a new login is the commit. The flake's unpacking runs in the build's."""
    deploy, make = controller
    host = make(models=[], health_levels=[], bench=False)
    run_id, alive = deploy(host)
    assert alive and check_invariant(host, run_id, "-") == "committed"
    assert host.trips[host.trips.index("lock"):] == [
        "lock", "build", "open_intent", "activate", "commit"], host.trips
    assert host.kinds[host.kinds.index("open_intent") + 1] == "set_profile"  # in the open's round trip
    assert host.fresh_trips == ["commit"]  # over a new login
    result = results.read_host_result(run_id, "h1")
    assert result.status is Status.OK and "switch" in result.timings
    assert host.records[-1]["timings"]["switch"] == result.timings["switch"]


def test_with_a_gate_after_the_activation_the_confirmation_comes_first_and_the_commit_after_it(controller):
    deploy, make = controller
    host = make(models=[], bench=False)  # health checks follow
    run_id, alive = deploy(host)
    assert alive and check_invariant(host, run_id, "-") == "committed"
    after = host.trips[host.trips.index("activate") + 1:]
    assert after[0] == "renew" and after[-1] == "commit" and "probe" in after, host.trips
    assert host.fresh_trips == ["renew"]  # the confirmation over a new login; the commit over the run's own


def test_the_activations_round_trip_marks_the_intent_activated_and_an_unmarked_one_is_marked_after(controller):
    """The intent is marked `activated` (its short lease) in the activation's own round trip, where the
    target runs then; where that mark failed, the controller marks it in a round trip of its own before
    the confirmation, and the deploy commits."""
    deploy, make = controller
    host = make()
    run_id, alive = deploy(host)
    assert alive and check_invariant(host, run_id, "-") == "committed"
    after = host.trips[host.trips.index("activate") + 1:]
    assert after[0] == "renew" and after.count("renew") == 1, host.trips  # the confirmation only
    assert host.kinds[host.kinds.index("activate") + 1] == "renew"  # the mark, inside that round trip

    host = make()
    host.fault = Fault("renew", 1, "fail")  # the mark in the activation's round trip fails
    run_id, alive = deploy(host)
    assert alive and results.read_host_result(run_id, "h1").status is Status.OK
    after = host.trips[host.trips.index("activate") + 1:]
    assert after[:2] == ["renew", "renew"] and after.count("renew") == 2, host.trips  # the mark, then the confirmation

    host = make()
    host.fault = Fault("activate", 1, "fail")  # exit 2: the intent stays armed (renewed), the controller reverts
    run_id, alive = deploy(host)
    assert alive and results.read_host_result(run_id, "h1").status is Status.ROLLED_BACK
    assert host.kinds[host.kinds.index("activate") + 1] == "revert", host.kinds  # never marked `activated`
    assert list(host.resolved) == [f"{run_id}.reverting-controller"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind,nth", POINTS)
def test_every_step_and_every_ending_leaves_the_host_safe(controller, kind, nth, how):
    every_ending(controller, kind, nth, how)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind,nth", [("lock", 1), ("open_intent", 1), ("set_profile", 1), ("activate", 1),
                                      ("renew", 1), ("commit", 1), ("commit", 2)])
def test_with_no_gate_every_step_and_every_ending_of_the_commit_over_a_new_login_leaves_the_host_safe(
        controller, kind, nth, how):
    """No models, health checks or benchmark: the commit is the confirmation, over a new login (a
    second commit is the same asked again after a lost answer)."""
    every_ending(controller, kind, nth, how, models=[], health_levels=[], bench=False)


@pytest.mark.parametrize("gates", (True, False))
@pytest.mark.parametrize("how", LOST_HOWS)
def test_every_way_an_activations_session_is_lost_leaves_the_host_safe(controller, how, gates):
    """The activation's SSH session ends before its exit code: the command never reached the host, it
    ran to its end, the host crashed and booted again mid-activation, or its unit ran on for a while."""
    every_ending(controller, "activate", 1, how, **({} if gates else {"models": [], "health_levels": [], "bench": False}))


@pytest.mark.parametrize("how,status,why", [
    ("lost_after", Status.OK, None),
    ("lost_running", Status.OK, None),
    ("lost_before", Status.ROLLED_BACK, "the activation never started on the host"),
    ("lost_crash", Status.ROLLED_BACK, "the activation was interrupted before it recorded its exit code")])
def test_a_lost_activation_is_decided_on_its_units_evidence_not_after_activation_timeout(controller, how, status, why):
    """Re-attached over a new connection, the controller takes the unit's recorded exit code, waits
    while the unit runs, and where the unit ended without one (a crash and boot) or never started,
    rolls back at once: not after activation_timeout (600 s), which it waited out before."""
    deploy, make = controller
    host = make(models=[], health_levels=[], bench=False)
    previous = host.profile_path
    host.fault = Fault("activate", 1, how)
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is status, (result, host.kinds)
    assert result.timings["switch"] < 10, result.timings  # on the transaction's clock (activation_timeout: 600 s)
    if status is Status.OK:
        assert check_invariant(host, run_id, previous) == "committed"
        assert host.kinds.count("activation_outcome") == (1 if how == "lost_after" else 4), host.kinds
    else:
        assert why in result.error and check_invariant(host, run_id, previous) == "reverted", result.error
        assert host.kinds.count("activation_outcome") == 2, host.kinds  # seen gone twice in a row


@pytest.mark.parametrize("rc", (75, 76))
def test_an_activation_that_itself_exits_75_or_76_is_judged_on_that_exit_code(controller, rc):
    """The outcome command answers "still running" with 75 and "gone" with 76; switch-to-configuration
    may exit with either itself. Its recorded exit code is marked as such: the controller fails the
    activation on it at once (one look), rather than wait out activation_timeout (75) or call it
    interrupted (76)."""
    from ipex_fleet.nix import commands as nixcmd

    assert (nixcmd.ACTIVATION_RUNNING, nixcmd.ACTIVATION_GONE) == (75, 76)
    deploy, make = controller
    host = make(models=[], health_levels=[], bench=False)
    previous = host.profile_path
    host.fault = Fault("activate", 1, "lost_after")
    real_lose = host.lose_activation

    def exits_rc(how, command):
        try:
            real_lose(how, command)
        finally:
            _, _, out = host.units[_call_id(command)]
            host.units[_call_id(command)] = ("done", rc, out)

    host.lose_activation = exits_rc
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.ROLLED_BACK, (result, host.kinds)
    assert f"switch-to-configuration switch exited {rc}" in result.error, result.error
    assert "interrupted" not in result.error and "never started" not in result.error
    assert host.kinds.count("activation_outcome") == 1, host.kinds
    assert result.timings["switch"] < 10, result.timings
    assert check_invariant(host, run_id, previous) == "reverted"


def test_an_activation_seen_gone_once_then_running_is_waited_for(controller):
    """The command delivered late: the first look finds no unit, the next finds it running. Gone must be
    seen twice in a row; the activation's own exit code then decides."""
    deploy, make = controller
    host = make(models=[], health_levels=[], bench=False)
    host.fault = Fault("activate", 1, "lost_before")
    real = host.do_activation_outcome

    def delivered_late(command):
        if host.seen["activation_outcome"] == 2:  # the command arrives now and its unit starts
            rc, out = host.do_activate(host.lost_command)
            host.units[_call_id(command)] = ("running", 1, (rc, out))
        return real(command)

    original_lose = host.lose_activation

    def remember(how, command):
        host.lost_command = command
        original_lose(how, command)

    host.lose_activation, host.do_activation_outcome = remember, delivered_late
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.OK, (result, host.kinds)
    assert check_invariant(host, run_id, "-") == "committed"


@pytest.mark.parametrize("when", ("after_the_claim", "before_the_claim"))
def test_a_copy_of_a_lost_activation_delivered_late_never_leaves_the_host_on_the_target(controller, when):
    """The activation's command was lost with its session and judged never started; its copy reaches
    the host late. After the revert's claim its fence refuses it; before the claim (between the second
    look and the claim) it passes the fence, and the revert that follows restores the recorded
    generation over it. Either way the host ends on the recorded generation, verified."""
    from ipex_fleet.nix import commands as nixcmd

    deploy, make = controller
    host = make(models=[], health_levels=[], bench=False)
    previous = host.profile_path
    host.fault = Fault("activate", 1, "lost_before")
    lost: list[str] = []
    real_lose, real_revert = host.lose_activation, host.do_revert

    def remember(how, command):
        lost.append(command)
        real_lose(how, command)

    def delivered_before_the_claim(command):
        assert host.do_activate(lost[0])[0] == 0 and host.running == host.target_build  # it switched
        return real_revert(command)

    host.lose_activation = remember
    if when == "before_the_claim":
        host.do_revert = delivered_before_the_claim
    run_id, alive = deploy(host)
    assert alive and results.read_host_result(run_id, "h1").status is Status.ROLLED_BACK
    if when == "after_the_claim":
        assert host.do_activate(lost[0])[0] == nixcmd.ACTIVATION_FENCED and host.fenced == 1
    else:
        assert host.fenced == 0
    assert check_invariant(host, run_id, previous) == "reverted"
    assert [k for k in host.resolved if k.startswith(run_id)] == [f"{run_id}.reverting-controller"]


@pytest.mark.parametrize("fixed", (True, False))
def test_a_host_left_to_decide_is_not_kept_from_deciding_by_the_heartbeat(controller, monkeypatch, fixed):
    """The activation's round trip times out while the host still answers: the controller waits for
    the host's own revert. Its heartbeat beats on meanwhile (every 5 s of the host's clock) and renews
    the lock alone, so the intent's lease runs out and the watchdog reverts: rolled_back, verified.
    The control (`fixed` False: the heartbeat renews the intent too, as before) never lets the watchdog
    act, and the wait ends `unreachable` after its bound, though the host answered all along."""
    from ipex_fleet.transaction import heartbeat as hb

    if not fixed:
        monkeypatch.setattr(hb.Heartbeat, "lock_only", lambda self, host, token, lease: None)
    deploy, make = controller
    host = make(models=[], health_levels=[], bench=False)
    previous = host.profile_path
    host.fault = Fault("activate", 1, "timeout")
    real = host.do_outcome

    def time_passes(command):  # each look at the outcome: 5 s on the host, a beat, the watchdog's look
        host.host_clock.t += 5
        runstate.of(host.state).heartbeat.beat()
        host.watchdog_tick()
        return real(command)

    host.do_outcome = time_passes
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    if not fixed:
        assert alive and result.status is Status.UNREACHABLE and "did not report intent" in result.error, result
        return
    assert alive and result.status is Status.ROLLED_BACK, (result, host.kinds)
    assert "restored generation 1 by itself" in result.error, result.error
    assert check_invariant(host, run_id, previous) == "reverted"
    assert [k for k in host.resolved if k.startswith(run_id)] == [f"{run_id}.watchdog"]


@pytest.mark.parametrize("gates,kind,nth,why", [
    (False, "commit", 1, "no new SSH connection after activation"),  # the commit is the confirmation
    (True, "renew", 2, "no new SSH connection after activation"),  # the confirmation before the gates
    (False, "renew", 1, "the host stopped answering during activation"),  # the activation's own command
    (True, "renew", 1, "the host stopped answering during activation")])
def test_a_host_that_reboots_unconfirmed_is_reverted_by_the_controller_once_it_answers(controller, gates, kind, nth, why):
    """The host stops answering at the activation or at the new login that confirms it: it reboots,
    and boots with the intent re-armed for a boot's lease (reboot_grace: 630 s by default). The
    controller, which confirmed nothing, claims the revert as soon as the host answers again: rolled
    back, verified. Before, it waited for the host's watchdog to act at the end of that lease (here the
    host's clock stands still: past the wait's own bound of 690 s, ending `unreachable`)."""
    from .scripted_host import classify

    deploy, make = controller
    host = make(**({} if gates else {"models": [], "health_levels": [], "bench": False}))
    previous = host.profile_path
    host.fault = Fault(kind, nth, "drop")  # the activation's command carries its `activated` mark: a renew
    real_answer, looks = host.answer, []

    def rebooting(command):
        if host.dropped and classify(command) == "outcome":
            looks.append(command)
            if len(looks) == 3:  # back from its boot
                host.dropped = False
                host.reboot()
        return real_answer(command)

    host.answer = rebooting
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.ROLLED_BACK, (result, host.kinds)
    assert why in result.error, result.error
    assert "the controller, once the host answered again, restored generation 1" in result.error, result.error
    assert check_invariant(host, run_id, previous) == "reverted"
    assert [k for k in host.resolved if k.startswith(run_id)] == [f"{run_id}.reverting-controller"]
    assert result.timings["switch"] < 30, result.timings  # on the transaction's clock


def test_a_generation_that_refuses_new_logins_is_left_to_its_watchdog_while_the_host_answers(controller):
    """The confirmation's new login is refused (a generation that breaks sshd), while the run's own
    session still answers, the intent open: the controller does not claim the revert there (it only
    does for a host that answers again after going dark); the watchdog reverts at the end of the short
    lease, as magic rollback does."""
    from ipex_fleet.remote import HostUnreachable

    from .scripted_host import classify

    deploy, make = controller
    host = make()  # with gates: the confirmation is a mark over a new login
    previous = host.profile_path
    real_fresh, real_outcome = host.fresh, host.do_outcome

    def refused(command):
        if classify(command) == "renew":
            raise HostUnreachable("no new SSH connection to h1 (Authentication failed)")
        return real_fresh(command)

    def time_passes(command):  # each look: 5 s on the host, the watchdog's look
        host.host_clock.t += 5
        host.watchdog_tick()
        return real_outcome(command)

    host.fresh, host.do_outcome = refused, time_passes
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.ROLLED_BACK, (result, host.kinds)
    assert "the host's watchdog restored generation 1 by itself" in result.error, result.error
    assert "revert" not in host.kinds
    assert [k for k in host.resolved if k.startswith(run_id)] == [f"{run_id}.watchdog"]
    assert check_invariant(host, run_id, previous) == "reverted"


def test_a_commit_that_won_before_the_host_went_dark_is_ok_when_the_controller_would_revert(controller):
    """The commit over a new login ran on the host, then the host dropped before its answer (and its
    second try): the controller, which would revert a host that answers with the intent open, hears
    that the commit won and claims nothing: committed, reported `ok`."""
    from ipex_fleet.remote import HostUnreachable

    from .scripted_host import classify

    deploy, make = controller
    host = make(models=[], health_levels=[], bench=False)
    real_commit, real_answer, looks = host.do_commit, host.answer, []

    def commits_then_drops(command):
        real_commit(command)
        host.dropped = True
        raise HostUnreachable("no answer from h1 (dropped after the commit ran)")

    def back_later(command):
        if host.dropped and classify(command) == "outcome":
            looks.append(command)
            host.dropped = len(looks) < 3
        return real_answer(command)

    host.do_commit, host.answer = commits_then_drops, back_later
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.OK, (result, host.kinds)
    assert check_invariant(host, run_id, "-") == "committed"
    assert "revert" not in host.kinds and "outcome" in host.kinds
    assert [k for k in host.resolved if k.startswith(run_id)] == [f"{run_id}.committed"]


def test_a_late_commit_that_beats_the_controllers_revert_is_ok(controller):
    """The commit over a new login is lost on the way and reaches the host late, just before the revert
    the controller claims once the host answers again: the commit's claim wins, the revert's loses, and
    the host ends committed, reported `ok` (never reverted beside a committed record)."""
    from .scripted_host import classify

    deploy, make = controller
    host = make(models=[], health_levels=[], bench=False)
    host.fault = Fault("commit", 1, "drop")
    real_answer, late, looks = host.answer, [], []

    def delivered_late(command):
        kind = classify(command)
        if kind == "commit" and not late:
            late.append(command)
        if host.dropped and kind == "outcome":
            looks.append(command)
            host.dropped = len(looks) < 3
        if kind == "revert":  # the lost commit arrives first
            host.seen["commit"] = 1  # the fault is spent
            assert real_answer(late[0])[0] == 0
        return real_answer(command)

    host.answer = delivered_late
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.OK, (result, host.kinds)
    assert "revert" in host.kinds  # asked, and lost to the commit
    assert check_invariant(host, run_id, "-") == "committed"
    assert [k for k in host.resolved if k.startswith(run_id)] == [f"{run_id}.committed"]


def every_ending(controller, kind, nth, how, **data):
    deploy, make = controller
    host = make(**data)
    if (kind, nth) == ("commit", 2):  # the first commit's answer is lost: it ran, then the session ended
        real = host.do_commit

        def answer_lost(command):
            out = real(command)
            if host.seen["commit"] == 1:
                raise StepTimeout("commit: the session ended before its exit code")
            return out

        host.do_commit = answer_lost
    previous = host.profile_path
    host.fault = Fault(kind, nth, how)
    run_id, alive = deploy(host)
    assert host.seen.get(kind, 0) >= nth, f"the fault at {kind} #{nth} never fired: {host.kinds}"
    result = results.read_host_result(run_id, "h1")
    if alive and result is not None and result.status is Status.OK:
        assert check_invariant(host, run_id, previous) == "committed"
        return
    if alive and result is not None and result.status is Status.ROLLED_BACK:
        assert result.final.path == previous and host.running == previous
    # What the host does without its controller: the lease runs out and an armed watchdog reverts.
    host.lease_runs_out()
    if host.intent is not None:  # no watchdog ran (the controller died before arming it): recovery
        recovered, survived = deploy(host)
        assert survived
        assert any("a dead run left intent(s)" in line for line in host.logs), host.logs
        assert results.read_host_result(recovered, "h1").status is Status.OK
        host.running, host.current = previous, 1  # judge the dead run's outcome, not the new deploy's
        assert [k for k in host.resolved if k.startswith(run_id)] == [f"{run_id}.recovery"]
        return
    assert check_invariant(host, run_id, previous) in ("committed", "reverted", "untouched")
    if result is not None and result.status is not Status.OK:
        if result.status is Status.UNREACHABLE and how == "drop":  # cut off after the host decided: unknown here,
            return  # said as such (the host's own record says what it decided)
        assert not any(k.endswith(".committed") for k in host.resolved if k.startswith(run_id)), \
            "a failed result never sits beside a committed host"


def test_retrying_a_failed_step_keeps_the_host_failed(controller):
    deploy, make = controller
    host = make()
    host.fault = Fault("probe", 1, "fail")
    run_id, _ = deploy(host)
    tx = runstate.of(host.state).transactions["h1"]
    assert tx.final_status is Status.ROLLED_BACK
    # pyinfra's --retry calls the failed step again: it must not report success.
    assert flow.run_step(None, host, flow.HEALTH) is False


def test_the_scripted_layer_runs_in_seconds(controller):
    deploy, make = controller
    started = time.monotonic()
    for kind, nth in POINTS:
        host = make()
        host.fault = Fault(kind, nth, "fail")
        deploy(host)
    assert time.monotonic() - started < 10


def test_a_second_run_in_the_same_process_starts_from_nothing(monkeypatch):
    monkeypatch.delenv("IPEX_FLEET_RUN_ID", raising=False)
    first, second = SimpleNamespace(), SimpleNamespace()
    assert runstate.of(first) is runstate.of(first)
    assert runstate.of(first).run_id != runstate.of(second).run_id
    runstate.of(first).transactions["h1"] = object()
    assert runstate.of(second).transactions == {} and runstate.of(second).built == {}


@pytest.mark.parametrize("how", ("die", "die_after"))
# profile_state #1: the rollback's own read (step 2's rides on the lock's round trip, the switch's on
# setting the profile)
@pytest.mark.parametrize("kind,nth", [("revert", 1), ("outcome", 1), ("profile_state", 1), ("probe", 2), ("record", 1)])
def test_a_controller_that_dies_while_rolling_back_leaves_the_host_safe(controller, kind, nth, how):
    """A double fault: the health gate fails, then the controller dies during the rollback. The
    revert is claimed and run by the host agent itself (detached), or, before the claim, left to the
    host's watchdog: either way it finishes without the controller."""
    deploy, make = controller
    host = make()
    previous = host.profile_path
    host.fault = Fault("probe", 1, "fail")
    host.second = Fault(kind, nth, how)
    run_id, alive = deploy(host)
    assert not alive and host.seen.get(kind, 0) >= nth, host.kinds
    host.lease_runs_out()
    assert host.intent is None, "the watchdog finished the revert"
    assert host.running == previous and host.profile_path == previous
    decided = [k for k in host.resolved if k.startswith(run_id + ".")]
    assert len(decided) == 1 and not decided[0].endswith(".committed"), decided
    if host.lock and host.lock["run_id"] == run_id:  # died between the claim and the release:
        host.host_clock.t += 31  # a leased lock: once its lease runs out (host clock), the next run takes it
    again, survived = deploy(host)
    assert survived and results.read_host_result(again, "h1").status is Status.OK


def test_a_revert_that_does_not_verify_is_revert_failed_and_loud(controller):
    deploy, make = controller
    host = make()
    host.fault = Fault("probe", 1, "fail")
    host.revert_fails = True  # the old generation's activation fails
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.REVERT_FAILED and not result.status.succeeded, result
    assert "rollback FAILED" in result.error
    assert [v for k, v in host.resolved.items() if k.startswith(run_id)] == ["revert-failed"]


def test_a_won_commit_stands_when_recording_it_fails(controller):
    """The claim is the decision: the host cannot write the record (its file refuses it), then the
    record written again times out once; the host stays committed, the result is ok, the record lands once."""
    deploy, make = controller
    host = make()
    (Path(host.agent_dir) / "deploys.jsonl").mkdir()  # the agent's append fails after its claim
    host.fault = Fault("record", 1, "timeout")
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.OK, result
    assert [k for k in host.resolved if k.startswith(run_id)] == [f"{run_id}.committed"]
    assert host.seen.get("record") == 2 and host.lock is None, host.kinds
    assert [r["status"] for r in host.records if r["run_id"] == run_id] == ["ok"]


@pytest.mark.parametrize("how", ("timeout", "drop_answer"))
def test_a_commit_asked_again_after_a_lost_answer_commits_and_records_once(controller, how):
    """The commit's connection is lost: before the host ran it (timeout), or after it claimed, recorded
    and released (the answer lost). Asked again over a new connection, the agent claims now, or answers
    for the commit it already won, and writes the record once."""
    deploy, make = controller
    host = make()
    if how == "timeout":
        host.fault = Fault("commit", 1, "timeout")
    else:
        real = host.do_commit

        def answer_lost(command):
            if host.seen["commit"] == 1:
                real(command)
                raise StepTimeout("commit: the session ended before its exit code")
            return real(command)

        host.do_commit = answer_lost
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.OK, (result, host.kinds)
    assert [k for k in host.resolved if k.startswith(run_id)] == [f"{run_id}.committed"]
    assert host.seen["commit"] == 2 and host.lock is None
    lines = (Path(host.agent_dir) / "deploys.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines if json.loads(line)["run_id"] == run_id] == ["ok"]


def test_a_commit_over_a_new_login_whose_answers_are_lost_is_ok_as_the_host_says(controller):
    """No gate: the commit is the confirmation over a new login. It runs on the host and its answer is
    lost; asked again, the host does not answer for a while (a cut). The controller then waits for the
    host's decision, and the host says it committed: the result is ok (the record written once, with
    the commit), never a failure or a revert-failed beside a committed host. (With gates the commit
    rides the run's session and such a host ends `unreachable`: unknown to the controller, said so.)"""
    from ipex_fleet.remote import HostUnreachable

    deploy, make = controller
    host = make(models=[], health_levels=[], bench=False)
    real = host.do_commit

    def lost_then_cut(command):
        if host.seen["commit"] == 1:
            real(command)
            raise StepTimeout("commit: the session ended before its exit code")
        raise HostUnreachable("no answer from h1 (cut)")

    host.do_commit = lost_then_cut
    run_id, alive = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert alive and result.status is Status.OK, (result, host.kinds)
    assert check_invariant(host, run_id, "-") == "committed"
    assert any("committed after all" in line for line in host.logs), host.logs
    lines = (Path(host.agent_dir) / "deploys.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines if json.loads(line)["run_id"] == run_id] == ["ok"]


def test_the_hosts_clock_alone_decides_a_skewed_or_stepped_wall_clock_changes_nothing(controller, monkeypatch):
    """The controller's clock an hour off, the host's wall clock stepped by NTP mid-deploy: no lease
    depends on either (the agent reads CLOCK_BOOTTIME only), so the deploy commits."""
    from ipex_fleet.host import agent as host_agent

    deploy, make = controller
    host = make()
    steps = iter([3600.0 * k for k in (1, -1, 2, -2, 5) * 100])
    monkeypatch.setattr(host_agent.time, "time", lambda: 1_700_000_000 + next(steps))
    monkeypatch.setattr(flow.time, "time", lambda: 1_700_000_000 - 3600)
    run_id, alive = deploy(host)
    assert alive and results.read_host_result(run_id, "h1").status is Status.OK


@pytest.mark.parametrize("beating", (True, False))
def test_hosts_in_lockstep_a_slow_peer_never_reverts_a_healthy_host(controller, beating):
    """pyinfra's lockstep: each step runs on every host before the next. host2's activation takes 300 s
    of everyone's time while the watchdogs look every 5 s; the heartbeat renews host1's lease meanwhile
    (as the real one does), so host1 is committed, never reverted. Without the heartbeat (the control)
    host1's own watchdog reverts it: the step-boundary lease the issue saw."""
    from ipex_fleet.transaction import heartbeat as hb

    deploy, make = controller
    hosts = [make(), make()]
    hosts[1].name = "h2"
    state = SimpleNamespace()
    for h in hosts:
        h.state = state
    slow = hosts[1]
    original = slow.do_activate

    def slow_activation(command):
        for _ in range(60):  # 300 s on every host's clock, with the heartbeat beating every 5 s
            for h in hosts:
                h.host_clock.t += 5
            if beating:
                runstate.of(state).heartbeat.beat()
            hosts[0].watchdog_tick()
        return original(command)

    slow.do_activate = slow_activation
    for step in STEPS:
        for h in hosts:
            flow.run_step(None, h, step)
    run_id = runstate.of(state).run_id
    if not beating:
        assert results.read_host_result(run_id, "h1").status is Status.ROLLED_BACK
        assert any(k.endswith(".watchdog") for k in hosts[0].resolved)
        return
    for h in hosts:
        assert results.read_host_result(run_id, h.name).status is Status.OK, h.name
        assert not any(k.endswith(".watchdog") for k in h.resolved), h.resolved
    assert isinstance(runstate.of(state).heartbeat, hb.Heartbeat)  # the scripted layer's stand-in


def test_nothing_to_do_is_unchanged_after_one_round_trip_and_any_doubt_takes_the_full_path(controller):
    deploy, make = controller
    host = make(models=[])
    first, _ = deploy(host)
    assert results.read_host_result(first, "h1").status is Status.OK
    host.kinds.clear()
    calls = host.agent_starts
    again, _ = deploy(host)
    result = results.read_host_result(again, "h1")
    assert result.status is Status.UNCHANGED and result.final.path == host.target_build
    assert host.kinds == ["preflight"], host.kinds  # no lock, no build, no record
    assert host.agent_starts == calls, "nothing open: the agent was not even started"
    # Doubt: the host runs something else than its last deploy committed: the full path.
    host.running = "/nix/store/zzz-hand-made"
    host.kinds.clear()
    third, _ = deploy(host)
    assert "lock" in host.kinds and "build" in host.kinds, host.kinds


def test_a_rollback_after_a_committed_deploy_moves_the_host_back_despite_the_fast_path(controller, monkeypatch):
    """The rollback deploy shares the deploy's preflight; with nothing left to deploy, the preflight's
    no-change fast path must still not stop a rollback (the lab caught exactly that)."""
    deploy, make = controller
    host = make(models=[])
    first, _ = deploy(host)
    assert results.read_host_result(first, "h1").status is Status.OK and host.current == 2
    monkeypatch.setenv("IPEX_FLEET_RUN_ID", "run-rollback")
    host.state = SimpleNamespace()
    core.transaction_for(host).phase = "rollback"  # what deploys/rollback.py declares at prepare
    for step in (flow.PREFLIGHT, flow.ROLLBACK, flow.RECORD):
        assert flow.run_step(None, host, step)
    result = results.read_host_result("run-rollback", "h1")
    assert result.status is Status.OK, result.error
    assert host.current == 1 and host.running == host.generations[1] == "/nix/store/aaa-nixos-system-1"
    assert host.records[-1]["phase"] == "rollback"


def _decide(host: ScriptedHost, run_id: str, decision: str, monkeypatch) -> results.HostResult:
    """deploys/decide.py under the paused run's id, as `rollout --resume RUN --approve|--abort` runs it."""
    monkeypatch.setenv("IPEX_FLEET_RUN_ID", run_id)
    host.state = SimpleNamespace()
    host.data["decision"] = decision
    flow.run_step(None, host, flow.DECIDE)
    return results.read_host_result(run_id, "h1")


@pytest.mark.parametrize("decision", ["approve", "abort", "nobody"])
def test_an_inconclusive_gate_holds_the_host_on_probation_until_a_person_or_the_timeout_decides(
        controller, monkeypatch, decision):
    deploy, make = controller
    host = make(models=[], bench=True, bench_inconclusive="pause", pause_timeout=600)
    host.bench_verdict = "inconclusive"
    run_id, alive = deploy(host)
    paused = results.read_host_result(run_id, "h1")
    assert alive and paused.status is Status.PAUSED, paused
    assert "benchmark gate inconclusive: matmul" in paused.error and f"--resume {run_id} --approve" in paused.error
    # Neither committed nor reverted: the intent stays open and the lock held, both leased for the
    # pause timeout on the host's clock; the heartbeat let go (it would shorten the lease again).
    agent = host.agent.status()
    assert agent["intent"]["left"] > 500 and agent["lock"]["left"] > 500, agent
    assert host.running == host.target_build and not host.resolved
    assert "h1" not in runstate.of(host.state).heartbeat.kept
    assert not [r for r in host.records if r.get("run_id") == run_id], "nothing final is recorded on the host"
    # Another deploy meanwhile is refused: the host is not free.
    other, _ = deploy(host)
    assert results.read_host_result(other, "h1").status is Status.SKIPPED

    if decision == "nobody":  # the pause runs out: the watchdog reverts; a late approval learns it
        assert host.lease_runs_out()
        decided = _decide(host, run_id, "approve", monkeypatch)
        assert decided.status is Status.ROLLED_BACK and "the pause (600s) ran out" in decided.error
        assert "watchdog restored generation 1" in decided.error
    else:
        decided = _decide(host, run_id, decision, monkeypatch)
    outcome = check_invariant(host, run_id, "/nix/store/aaa-nixos-system-1")
    if decision == "approve":
        assert decided.status is Status.OK and outcome == "committed" and decided.bench["result"] == "inconclusive"
    else:
        assert decided.status is Status.ROLLED_BACK and outcome == "reverted"
    assert host.lock is None, "the decision releases the lock"
    assert not (results.run_dir(run_id) / "probation" / "h1.json").exists(), "the token is not kept"


def test_a_controller_whose_lock_ran_out_during_a_slow_build_never_switches_after_a_newer_deploy(
        controller, monkeypatch):
    """Controller A builds while its heartbeat cannot reach the host (a partition): its lock's lease runs
    out by the host's clock; controller B takes the host and commits a newer generation. When A's build
    ends, opening its intent is fenced: nothing is switched, and nothing stale is recorded (A's
    `previous` is no longer the host's)."""
    deploy, make = controller
    host = make(models=[])
    monkeypatch.setenv("IPEX_FLEET_RUN_ID", "run-a")
    a_state = host.state = SimpleNamespace()
    for step in STEPS[:4]:  # preflight (the lock), record_previous, push_flake, build
        assert flow.run_step(None, host, step), step.name
    host.host_clock.t += 3600  # A's renewals never arrive: its lease runs out on the host
    host.target_build = "/nix/store/ccc-nixos-system-3"
    b_run, alive = deploy(host)
    assert alive and results.read_host_result(b_run, "h1").status is Status.OK
    assert host.running == host.profile_path == "/nix/store/ccc-nixos-system-3"
    records_before = list(host.records)

    monkeypatch.setenv("IPEX_FLEET_RUN_ID", "run-a")
    host.state = a_state
    for step in STEPS[4:]:
        if not flow.run_step(None, host, step):
            break
    a = results.read_host_result("run-a", "h1")
    assert a.status is Status.SKIPPED and "nothing was switched" in a.error, a
    assert a.final.number is None, "A does not claim to know where the host is"
    assert host.running == host.profile_path == "/nix/store/ccc-nixos-system-3", "B's deploy stands"
    assert host.records == records_before, "A wrote nothing on the host"
    assert host.lock is None and host.intent is None


@pytest.mark.parametrize("verdict,policy,status,says", [
    ("fail", "warn", Status.ROLLED_BACK, "health checks failed: ollama_generate: llama3.2:1b: 61.0 tokens/s, 76%"),
    ("inconclusive", "fail", Status.ROLLED_BACK,
     "Ollama tokens/s gate inconclusive (host data bench_inconclusive=fail): ollama_generate: llama3.2:1b"),
    ("inconclusive", "pause", Status.PAUSED, "Ollama tokens/s gate inconclusive: ollama_generate: llama3.2:1b"),
    ("inconclusive", "warn", Status.OK, None),
    ("pass", "fail", Status.OK, None),
])
def test_level_2s_tokens_gate_follows_the_benchmarks_policy(controller, verdict, policy, status, says):
    """Level 2's Ollama tokens/s gate: a fail rolls back with the check's line; an inconclusive one
    follows host data bench_inconclusive as the benchmark's does (and not health_warn)."""
    deploy, make = controller
    host = make(models=[], bench_inconclusive=policy)
    host.tokens_verdict = verdict
    run_id, _ = deploy(host)
    result = results.read_host_result(run_id, "h1")
    assert result.status is status, result
    assert result.health["tokens"]["result"] == verdict
    if says:
        assert says in result.error
    if verdict == "inconclusive" and policy == "warn":
        assert result.health["tokens"]["inconclusive_accepted"] is True
        assert any("Ollama tokens/s gate inconclusive, passed as bench_inconclusive=warn" in line for line in host.logs)


def test_a_probe_warn_pauses_only_where_host_data_says_so(controller):
    deploy, make = controller
    host = make(models=[], health_warn="pause")
    host.probe_result = "warn"
    run_id, _ = deploy(host)
    paused = results.read_host_result(run_id, "h1")
    assert paused.status is Status.PAUSED and "health checks warned: host_link: host-device copies are slow" \
        in paused.error
    plain = make(models=[])
    plain.probe_result = "warn"
    run_id, _ = deploy(plain)
    assert results.read_host_result(run_id, "h1").status is Status.OK, "a warn passes by default"


def test_the_builds_tidy_prunes_only_where_the_locks_round_trip_did_not():
    """The lock's round trip prunes the older flakes and roots the inputs where all are proven; the build's
    round trip roots them otherwise, and prunes too only where the lock's round trip failed or did not say."""
    from ipex_fleet.transaction.system import tidy_before_build

    inputs = ("/nix/store/aaa-nixpkgs",)
    unproven = tidy_before_build({"present": True, "rooted": False, "unproven": list(inputs)}, 2, "h1", inputs)
    assert "ln -sfn /nix/store/aaa-nixpkgs" in unproven and "ls -1t" not in unproven
    for known in (None, {"error": "Permission denied", "unproven": list(inputs), "rooted": False}):
        both = tidy_before_build(known, 2, "h1", inputs)
        assert "ls -1t" in both and "tail -n +2" in both and "ln -sfn /nix/store/aaa-nixpkgs" in both
