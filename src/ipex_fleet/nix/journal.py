"""The host's journal of one deploy: an intent written before anything changes, a lease the
controller renews while it works, and one decision (commit or revert) claimed by a rename.

Layout under /var/lib/ipex-fleet/ (DESIGN.md, "Contracts"):
    intent/              the open intent (one at a time): intent.json, run_id, lease (unix time),
                         steps (one line per transition), revert.sh (how to go back, self-contained)
    resolved/RUN.WHO/    the same directory once decided: WHO is `committed`, `reverting-controller`,
                         `watchdog` or `recovery`; a revert by the last two adds `outcome`

The decision is `mv -T intent resolved/RUN.WHO`: rename(2) succeeds for exactly one claimant, and
every other one sees that it lost. The watchdog (a systemd unit, armed before the switch) claims a
revert once the lease runs out, so a controller that dies at any point leaves a host that returns
to the recorded generation by itself within the lease.
"""

from __future__ import annotations

import json
from shlex import quote
from typing import Any

from ..domain import STATE_DIR, Action, Generation
from . import commands as nixcmd

INTENT = f"{STATE_DIR}/intent"
RESOLVED = f"{STATE_DIR}/resolved"
COMMITTED = "committed"
LOST = 3  # exit code: the intent is no longer this run's (another claimant decided)


def open_intent(run_id: str, intent: dict[str, Any], revert_script: str, lease_until: int) -> str:
    """Write the intent atomically (a directory renamed into place); fails if one is open already."""
    tmp = quote(f"{INTENT}.tmp-{run_id}")
    return (
        f"mkdir -p {quote(RESOLVED)} && rm -rf {tmp} && mkdir {tmp} && "
        f"printf '%s\\n' {quote(json.dumps(intent, sort_keys=True))} > {tmp}/intent.json && "
        f"printf '%s\\n' {quote(run_id)} > {tmp}/run_id && printf '%s\\n' {int(lease_until)} > {tmp}/lease && "
        f"printf '%s\\n' {quote(revert_script)} > {tmp}/revert.sh && : > {tmp}/steps && "
        f"mv -T {tmp} {quote(INTENT)}"
    )


def renew(run_id: str, lease_until: int, step: str) -> str:
    """Extend the lease and journal the step, only while the intent is still this run's (else exit 3)."""
    return (
        f'[ "$(cat {quote(INTENT)}/run_id 2>/dev/null)" = {quote(run_id)} ] || exit {LOST}; '
        f"printf '%s %s\\n' \"$(date +%s)\" {quote(step)} >> {quote(INTENT)}/steps; "
        f"printf '%s\\n' {int(lease_until)} > {quote(INTENT)}/lease.new && "
        f"mv {quote(INTENT)}/lease.new {quote(INTENT)}/lease || exit {LOST}"
    )


def claim(run_id: str, who: str) -> str:
    """Claim the decision; print `won`, or `lost` with the winner's directory name (exit 3)."""
    dest = quote(f"{RESOLVED}/{run_id}.{who}")
    return (
        f'if [ "$(cat {quote(INTENT)}/run_id 2>/dev/null)" = {quote(run_id)} ] && '
        f"mv -T {quote(INTENT)} {dest} 2>/dev/null; then echo won; "
        f"else echo lost; ls -1 {quote(RESOLVED)} 2>/dev/null | grep -F -e {quote(run_id + '.')} || true; "
        f"exit {LOST}; fi"
    )


def outcome(run_id: str, who: str) -> str:
    """A revert's outcome line once written (`reverted ...` or `revert-failed ...`); exit 75 before."""
    path = quote(f"{RESOLVED}/{run_id}.{who}/outcome")
    return f"if [ -s {path} ]; then cat {path}; else exit 75; fi"


def read_open() -> str:
    """The open intent, if any: `run_id`, `lease`, `now`, then intent.json, as key=value lines."""
    i = quote(INTENT)
    return (
        f"[ -d {i} ] || exit 0; "
        f'printf "run_id=%s\\nlease=%s\\nnow=%s\\nintent=%s\\n" "$(cat {i}/run_id)" "$(cat {i}/lease)" '
        f'"$(date +%s)" "$(cat {i}/intent.json)"'
    )


def revert_script(run_id: str, profile: str, mode: Action, previous: Generation, record: dict[str, Any]) -> str:
    """How to go back, self-contained (sh, no braces: it also runs as a systemd unit's command):
    claim the revert as $1 (watchdog or recovery) unless already claimed, restore `previous`,
    check it there, journal the outcome and release this run's lock."""
    assert previous.path is not None and previous.number is not None
    prev = quote(previous.path)
    stc = quote(f"{previous.path}/bin/switch-to-configuration")
    # Activate the old generation wherever the new one runs (test, switch, or boot after a reboot);
    # a boot-mode deploy that never rebooted only needs its boot entry back.
    same = Action.TEST.value if mode == Action.TEST else (Action.BOOT.value if mode == Action.BOOT else "switch")
    other = Action.TEST.value if mode == Action.TEST else "switch"
    verify = (f'[ "$(readlink -f /run/current-system)" = {prev} ]'
              + (f' && [ "$(readlink -f {quote(profile)})" = {prev} ]' if mode.sets_profile else ""))
    move_profile = (f"{nixcmd.switch_generation(profile, previous.number)} || "
                    f"{nixcmd.set_profile(profile, previous.path)}; ") if mode.sets_profile else ""
    rec = quote(json.dumps(record, sort_keys=True))
    return (
        f'who="$1"; d={quote(RESOLVED)}/{quote(run_id)}."$who"; '
        f'if [ -d {quote(INTENT)} ]; then mv -T {quote(INTENT)} "$d" 2>/dev/null || exit 0; fi; '
        '[ -d "$d" ] || exit 0; '
        f"{move_profile}"
        f'if [ "$(readlink -f /run/current-system)" = {prev} ]; then a={same}; else a={other}; fi; '
        f'{stc} "$a" >>"$d/revert.log" 2>&1; '
        f'if {verify}; then o=reverted; else o=revert-failed; fi; '
        'printf "%s %s %s\\n" "$o" "$(date +%s)" "$who" > "$d/outcome"; '
        f"printf '%s\\n' {rec} | sed \"s/__OUTCOME__/$o by $who/\" >> {quote(nixcmd.DEPLOY_LOG)}; "
        f"{nixcmd.release_lock(run_id)}"
    )


def arm_watchdog(run_id: str) -> str:
    """Start the watchdog, detached from this session: it waits while the lease is renewed, then
    claims the revert and runs the intent's revert.sh. It ends quietly once another claimant decided."""
    i = quote(INTENT)
    loop = (
        f'while [ "$(cat {i}/run_id 2>/dev/null)" = {quote(run_id)} ]; do '
        f'if [ "$(date +%s)" -gt "$(cat {i}/lease 2>/dev/null || echo 0)" ]; then '
        f"exec sh {i}/revert.sh watchdog; fi; sleep 1; done"
    )
    unit = quote(f"ipex-fleet-watchdog-{run_id}")
    log = quote(f"{STATE_DIR}/watchdog-{run_id}.log")
    return (
        'if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && command -v systemd-run >/dev/null; then '
        f"systemd-run --collect --quiet --unit={unit} /bin/sh -c {quote(loop)}; "
        f"else setsid sh -c {quote(loop)} </dev/null >>{log} 2>&1 & fi"
    )
