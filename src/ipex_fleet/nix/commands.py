"""One function per remote command, each returning a quoted shell string.

Used by the transaction at execution time, by the plan, and by the lab's bootstrap, so that
every part runs the same commands.
"""

from __future__ import annotations

import json
import uuid
from shlex import quote

from ipex_fleet.domain import STATE_DIR, Action
from ipex_fleet.host.nixprofile import BOOT_LINKS, parse_profile_state

LOCK_FILE = f"{STATE_DIR}/lock"  # the host agent owns it (ipex_fleet.host.agent)
DEPLOY_LOG = f"{STATE_DIR}/deploys.jsonl"
FLAKE_ROOT = f"{STATE_DIR}/flake"
ACTIVATION_DIR = f"{STATE_DIR}/activation"


def toplevel_attr(config_name: str) -> str:
    return f"nixosConfigurations.{config_name}.config.system.build.toplevel"


PROFILE_LINKS = "-*-link"  # the generations' links beside the profile: <profile>-<n>-link


def profile_state(profile: str) -> str:
    """Print `<link-name> <mtime> <store-path>` per generation, then `current <link-name>`. One stat,
    one readlink and one awk for all the generations, in the links' order (a stat and a readlink for
    each took two processes a generation: 21 ms for six of them here, 5 ms now). `readlink -m` prints
    a line for every link, even one whose target is gone, so the two lists stay aligned."""
    p = quote(profile)
    return (
        f'( set -- {p}{PROFILE_LINKS}; [ -L "$1" ] && {{ stat -c "%n %Y" -- "$@"; echo @@; readlink -m -- "$@"; }} | '
        "awk '$0 == \"@@\" { paths = 1; next } !paths { sub(\".*/\", \"\", $1); link[++n] = $1 \" \" $2; next } "
        "{ print link[++i] \" \" $0 }' ); "
        f'printf "current %s\\n" "$(readlink {p} 2>/dev/null)"'
    )


def free_kb(path: str, key: str = "free_kb") -> str:
    """`key=<KiB free on path's filesystem>`, as df's Available column: one stat -f, where df and awk
    took two processes (about 1 ms a host on every round trip that carries it)."""
    return (f"set -- $(stat -f -c '%a %S' -- {quote(path)} 2>/dev/null); "
            f'printf "{key}=%s\\n" "$(( ${{1:-0}} * ${{2:-0}} / 1024 ))"')


def summed_kb(paths: str, key: str, var: str = "kb") -> str:
    """`key=<KiB used under paths>` (du -sk's lines summed by the shell, no awk), also left in $var;
    a missing path counts 0."""
    words = " + ".join(f"${{{2 * i + 1}:-0}}" for i in range(len(paths.split())))
    return f'set -- $(du -sk {paths} 2>/dev/null); {var}=$(( {words} )); printf "{key}=%s\\n" "${var}"'


def running_system() -> str:
    return "readlink -f /run/current-system 2>/dev/null || true"


def then_if_ok(command: str, after: str) -> str:
    """`command`, then `after` in the same round trip where it exited 0; its exit code either way."""
    return f"( {command}\n); r=$?; if [ $r = 0 ]; then {after}; fi; exit $r"


RUNNING_MARK = "ipex_fleet_running="
THEN_MARK = "ipex_fleet_then_rc="


def then_running(command: str, then_if: tuple[str, str] | None = None, codes: tuple[int, ...] = (0,)) -> str:
    """`command`, then the running system on a line of its own (RUNNING_MARK), in the same round trip;
    `command`'s exit code. `then_if` = (path, other): where `command` exited with one of `codes` and the
    running system is then `path`, `other` runs too, in the same round trip, its exit code on the last
    line (THEN_MARK; its output dropped)."""
    then = ""
    if then_if is not None:
        path, other = then_if
        exited = " || ".join(f"[ $r = {int(code)} ]" for code in codes)
        then = (f'if {{ {exited}; }} && [ "$c" = {quote(path)} ]; then ( {other}\n) >/dev/null 2>&1; '
                f'printf "{THEN_MARK}%d\\n" "$?"; fi; ')
    return (f"( {command}\n); r=$?; c=$(readlink -f /run/current-system 2>/dev/null); "
            f'printf "\\n{RUNNING_MARK}%s\\n" "$c"; {then}exit $r')


def take_running(lines: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    """The output without then_running's line (and the empty line before it), and the running system
    it gave (None where the line is missing: a session lost, an output reattached)."""
    if lines and lines[-1].startswith(RUNNING_MARK):
        rest = lines[:-1]
        return (rest[:-1] if rest and rest[-1] == "" else rest), lines[-1][len(RUNNING_MARK):]
    return lines, None


def take_then(lines: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
    """The output without then_running's THEN_MARK line, and the exit code of the command `then_if`
    ran (None where it did not run: another system running, a session lost, an output reattached)."""
    if lines and lines[-1].startswith(THEN_MARK):
        return lines[:-1], int(lines[-1][len(THEN_MARK):])
    return lines, None


def preflight(min_free_path: str = "/nix") -> str:
    """key=value lines: the OS id, where nix is on PATH (the shell's own lookup: starting `nix --version`
    cost each host 20 ms of every deploy, no-change ones included, and only its presence is used), free
    KiB on the store."""
    return (
        '. /etc/os-release 2>/dev/null; printf "os_id=%s\\n" "${ID:-unknown}"; '
        'printf "nix=%s\\n" "$(command -v nix 2>/dev/null)"; '
        + free_kb(min_free_path)
    )


def deployed_state(profile: str) -> str:
    """key=value lines: the profile's and the running system's store paths, and the last deploy record
    (what the no-change fast path compares with the pushed flake)."""
    return (
        f'printf "profile=%s\\nrunning=%s\\n" "$(readlink -f {quote(profile)})" "$(readlink -f /run/current-system)"; '
        f"tail -n 20 {quote(DEPLOY_LOG)} 2>/dev/null | grep -F '\"phase\": \"deploy\"' | tail -n 1 | sed 's/^/last_deploy=/'"
    )


def parse_key_values(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def flake_present(flake_hash: str) -> str:
    return f"test -f {quote(f'{FLAKE_ROOT}/{flake_hash}/.complete')}"


UNPACK_FAILED = "ipex-fleet: unpacking the flake failed"


def unpack_flake(tarball: str, flake_hash: str) -> str:
    """Unpack into a temporary directory, then rename: a half-pushed flake is never used. Chained by
    `&&`, not `set -e` (which a shell ignores inside the left side of `||`, as unpacked_then puts it);
    shell builtins where they do (each program started costs the host a process): four programs, not seven."""
    d = quote(f"{FLAKE_ROOT}/{flake_hash}")
    return (
        f"{{ [ ! -e {d}.tmp ] || rm -rf {d}.tmp; }} && mkdir -p {d}.tmp && tar -xzf {quote(tarball)} -C {d}.tmp && "
        f": > {d}.tmp/.complete && {{ [ ! -e {d} ] || rm -rf {d}; }} && mv {d}.tmp {d} && rm -f {quote(tarball)}"
    )


def unpacked_then(unpack: str, command: str) -> str:
    """`unpack` (unpack_flake's), then `command`, in one round trip; where the unpacking fails, its
    exit code, and UNPACK_FAILED on stderr after its own error."""
    return f"( {unpack}\n) || {{ r=$?; echo {quote(UNPACK_FAILED)} >&2; exit $r; }}; {command}"


def prune_flakes(keep: int, current_hash: str) -> str:
    """Keep the newest `keep` pushed flakes (the current one always)."""
    root = quote(FLAKE_ROOT)
    return (
        f"cd {root} 2>/dev/null || exit 0; "
        f"ls -1t | grep -v -x -e {quote(current_hash)} | tail -n +{int(keep)} | xargs -r rm -rf --"
    )


def build_toplevel(flake_ref: str, config_name: str) -> str:
    return (
        "nix --extra-experimental-features 'nix-command flakes' build --json --no-link "
        f"--no-write-lock-file {quote(f'{flake_ref}#{toplevel_attr(config_name)}')}"
    )


def parse_build_output(stdout: str) -> str:
    """The toplevel's store path from `nix build --json` (Nix 2.8 has no --print-out-paths)."""
    data = json.loads(stdout)
    return data[0]["outputs"]["out"]


def set_profile(profile: str, path: str) -> str:
    return f"nix-env -p {quote(profile)} --set {quote(path)}"


def switch_generation(profile: str, number: int) -> str:
    return f"nix-env -p {quote(profile)} --switch-generation {int(number)}"


# The activation unit's own shell keeps the exit code, so it survives a dropped SSH session.
# No braces and no "$$" in it: systemd expands those in a unit's command line.
_ACTIVATION_WRAPPER = '"$0" "$1"; r=$?; echo $r > "$2"; exit $r'
# Where the activation runs in a transient unit (systemd is PID 1); elsewhere in a new session.
IN_A_UNIT = '[ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && command -v systemd-run >/dev/null'
# Exit code of an activation its fence refused: switch-to-configuration never ran.
ACTIVATION_FENCED = 98


def _fenced_wrapper(fence: str) -> str:
    """The wrapper behind `fence` (the agent's: the intent still open), run inside the unit."""
    return (f"if {fence} >/dev/null; then \"$0\" \"$1\"; r=$?; else echo 'ipex-fleet: activation refused: its "
            f"intent was decided before it began, nothing switched' >&2; r={ACTIVATION_FENCED}; fi; "
            'echo $r > "$2"; exit $r')


def activation_unit(action: Action, call_id: str) -> str:
    return f"ipex-fleet-{action.value}-{call_id}"


def activate(path: str, action: Action, call_id: str | None = None, fence: str | None = None) -> str:
    """Run switch-to-configuration detached from the SSH session, wait for it, then report its output.

    Where systemd is PID 1, a transient unit with a name of its own per call (a fixed name collides
    with an activation still running) and no --pipe (it panicked nixos-rebuild-ng when an SSH drop
    closed stderr: REFERENCE.md). Elsewhere a new session. Either way a dropped connection neither
    kills the activation nor loses its exit code. With `fence` (a command), the unit runs the
    activation only where that command succeeds first (exit ACTIVATION_FENCED otherwise).
    """
    unit = activation_unit(action, call_id or uuid.uuid4().hex[:12])
    stc = quote(f"{path}/bin/switch-to-configuration")
    act = quote(action.value)
    log, rc = quote(f"{ACTIVATION_DIR}/{unit}.log"), quote(f"{ACTIVATION_DIR}/{unit}.rc")
    args = f"{quote(_fenced_wrapper(fence) if fence else _ACTIVATION_WRAPPER)} {stc} {act} {rc}"
    return (
        f"test -f {quote(path + '/nixos-version')} || "
        f"{{ echo {quote(path + ' is not a NixOS system: it has no nixos-version')} >&2; exit 97; }}; "
        f"mkdir -p {quote(ACTIVATION_DIR)}; "
        f"if {IN_A_UNIT}; then "
        f"systemd-run --unit={quote(unit)} --collect --no-ask-password --quiet --wait --service-type=exec "
        f"--property=StandardOutput=append:{log} --property=StandardError=append:{log} /bin/sh -c {args}; "
        f"else setsid -w sh -c {args} </dev/null >>{log} 2>&1; fi; "
        f"r=$?; cat {log} 2>/dev/null; if [ -s {rc} ]; then r=$(cat {rc}); fi; exit $r"
    )


# activation_outcome's answers besides the activation's own exit code.
ACTIVATION_RUNNING = 75
ACTIVATION_GONE = 76
ACTIVATION_NEVER_STARTED = "ipex-fleet: the activation never started on the host (its command was lost with the session)"
ACTIVATION_INTERRUPTED = ("ipex-fleet: the activation was interrupted before it recorded its exit code (the host "
                          "crashed or rebooted, or its unit was killed)")


ACTIVATION_RECORDED = "ipex_fleet_activation=recorded"  # the outcome's first line where the exit code is the unit's own


def activation_outcome(action: Action, call_id: str) -> str:
    """An activation's output and exit code once its unit has finished, after the line
    ACTIVATION_RECORDED (so that an activation that itself exits 75 or 76 is not taken for the two
    answers below: take_recorded); ACTIVATION_RUNNING while its
    unit runs (or where systemd cannot say); ACTIVATION_GONE where its unit is not running and left no
    exit code: the host rebooted or the unit was killed (its log exists: ACTIVATION_INTERRUPTED), or
    the command never reached systemd-run (no log: ACTIVATION_NEVER_STARTED). A unit whose start job
    waits in systemd's queue is `inactive` with a Job: running, for this. The unit's state is read
    before its exit code: the unit's shell writes the code before the unit ends, so a unit seen ended
    with no code never wrote one. A copy of the command delivered later is refused by its fence."""
    unit = activation_unit(action, call_id)
    log, rc = quote(f"{ACTIVATION_DIR}/{unit}.log"), quote(f"{ACTIVATION_DIR}/{unit}.rc")
    done = f"if [ -s {rc} ]; then echo {ACTIVATION_RECORDED}; cat {log} 2>/dev/null; exit $(cat {rc}); fi"
    return (f"{done}; {{ {IN_A_UNIT}; }} || exit {ACTIVATION_RUNNING}; "
            f"s=$(systemctl show --property=ActiveState --property=Job {quote(unit + '.service')} 2>/dev/null) "
            f"&& [ -n \"$s\" ] || exit {ACTIVATION_RUNNING}; "
            f"case \"$s\" in *ActiveState=inactive*|*ActiveState=failed*) ;; *) exit {ACTIVATION_RUNNING};; esac; "
            f"case \"$s\" in *Job=[0-9]*) exit {ACTIVATION_RUNNING};; esac; {done}; "
            f"if [ -e {log} ]; then cat {log}; echo {quote(ACTIVATION_INTERRUPTED)} >&2; "
            f"else echo {quote(ACTIVATION_NEVER_STARTED)} >&2; fi; exit {ACTIVATION_GONE}")


def take_recorded(lines: tuple[str, ...] | list[str]) -> tuple[bool, tuple[str, ...]]:
    """Whether an activation_outcome answer is the unit's recorded exit code, and its output without
    that line."""
    lines = tuple(lines)
    if lines[:1] == (ACTIVATION_RECORDED,):
        return True, lines[1:]
    return False, lines


def activation_error(lines: tuple[str, ...] | list[str]) -> str | None:
    """The line that says why an activation failed: NixOS prints "... snippet 'X' failed (1)" and
    "warning: the following units failed: ...", and carries on activating after either."""
    for line in reversed(lines):
        if "failed" in line.lower():
            return line.strip()
    return None


def append_deploy_record(record: dict[str, object]) -> str:
    return (
        f"mkdir -p {quote(STATE_DIR)} && "
        f"printf '%s\\n' {quote(json.dumps(record, sort_keys=True))} >> {quote(DEPLOY_LOG)}"
    )


def last_deploy_records(count: int) -> str:
    return f"tail -n {int(count)} {quote(DEPLOY_LOG)} 2>/dev/null || true"


def boot_id() -> str:
    return "cat /proc/sys/kernel/random/boot_id"


def boot_state() -> str:
    """key=value lines: the boot id, systemd's state, and the booted generation."""
    return ('printf "boot_id=%s\\nstate=%s\\nbooted=%s\\n" "$(cat /proc/sys/kernel/random/boot_id)" '
            '"$(systemctl is-system-running 2>/dev/null)" "$(readlink -f /run/booted-system 2>/dev/null)"')


def schedule_reboot(run_id: str) -> str:
    """Reboot a second from now, from a unit of its own: this session can return before it ends."""
    return (f"systemd-run --quiet --collect --on-active=1 --unit={quote('ipex-fleet-reboot-' + run_id)} "
            "systemctl reboot")


def change_report(current: str, target: str) -> str:
    """One round trip for a plan: the closure difference, both closures' paths with sizes, and the
    boot-critical links of the booted system and of the target. Sections start with `== `."""
    cur, new = quote(current), quote(target)
    links = " ".join(BOOT_LINKS)
    return (
        "echo '== diff'; "
        f"nix --extra-experimental-features nix-command store diff-closures {cur} {new} 2>&1; "
        f"echo '== current'; nix-store --query --requisites {cur}; "
        f"echo '== target'; nix --extra-experimental-features nix-command path-info --json --recursive {new}; "
        f"echo; echo '== boot'; for l in {links}; do "
        f'printf "%s %s %s\\n" "$l" "$(readlink -e /run/booted-system/$l 2>/dev/null || echo -)" '
        f'"$(readlink -e {new}/$l 2>/dev/null || echo -)"; done'
    )


def split_sections(lines: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith("== "):
            current = sections.setdefault(line[3:].strip(), [])
        elif current is not None:
            current.append(line)
    return sections
