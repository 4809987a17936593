"""Commands of a maintenance run (deploys/maintenance.py), built here and run by ipex_fleet.remote.

Each prints what it did as `key=value` lines, so the controller reports figures, not guesses."""

from __future__ import annotations

from shlex import quote

from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.transaction import hostagent

ENTRIES = "/boot/loader/entries"
INPUT_ROOTS = "/nix/var/nix/gcroots/ipex-fleet"
JOURNAL_DIRS = "/var/log/journal /run/log/journal"
TMP_DIRS = "/tmp /var/tmp"
# When maintenance last cleaned the temporary files. Their ages are days (tmpfiles.d), and systemd's
# own timer cleans them daily: a maintenance run with nothing else to do cleans them again only when
# this is older than TMP_CLEAN_EVERY_MIN (systemd-tmpfiles --clean: 7 ms of a host's CPU each time).
TMP_STAMP = f"{nixcmd.STATE_DIR}/tmp-cleaned"
TMP_CLEAN_EVERY_MIN = 60


def facts(profile: str) -> str:
    """What retention needs, in one round trip: every generation, the running and booted systems,
    counted boot entries, the open intent, the last deploy records, and the store's free space."""
    return (
        f"{nixcmd.profile_state(profile)}; "
        'printf "running=%s\\nbooted=%s\\n" "$(readlink -f /run/current-system 2>/dev/null)" '
        '"$(readlink -f /run/booted-system 2>/dev/null)"; '
        f"for e in {ENTRIES}/*+*.conf; do [ -e \"$e\" ] && printf 'counted=%s\\n' \"${{e##*/}}\"; done; "
        f"{hostagent.read_intent()}; "
        f"{{ {nixcmd.last_deploy_records(200)}; }} | sed 's/^/record=/'; "
        + nixcmd.free_kb("/nix")
    )


def delete_generations(profile: str, numbers: tuple[int, ...]) -> str:
    """Delete the generations, then rewrite the boot entries from those left (switch-to-configuration
    boot of the current generation only installs the boot loader; it activates nothing)."""
    if not numbers:
        return "true"
    p = quote(profile)
    return (f"nix-env -p {p} --delete-generations {' '.join(str(int(n)) for n in numbers)} && "
            f"{p}/bin/switch-to-configuration boot")


def collect_garbage(max_freed_mb: int | None, optimise: bool) -> str:
    """GC (bounded by --max-freed), optionally optimise; free KiB before and after, and Nix's own count."""
    bound = f" --max-freed {int(max_freed_mb) * 1024 * 1024}" if max_freed_mb else ""
    return (
        f'{nixcmd.free_kb("/nix", "free_before_kb")}; '
        f"nix-store --gc{bound} 2>&1 | tail -n 1 | sed 's/^/gc=/'; "
        + ("nix-store --optimise 2>&1 | tail -n 1 | sed 's/^/optimise=/'; " if optimise else "")
        + nixcmd.free_kb("/nix", "free_after_kb")
    )


def prune_pushed(keep_days: float, current_hash: str | None) -> str:
    """Pushed flakes and their input roots older than keep_days (never the current flake's), and
    resolved intents and activation records as old; prints what went."""
    minutes = max(int(keep_days * 1440), 1)
    keep = f" ! -name {quote(current_hash)}" if current_hash else ""
    return (
        f"for d in {nixcmd.FLAKE_ROOT} {INPUT_ROOTS} {hostagent.RESOLVED} {nixcmd.ACTIVATION_DIR}; do "
        f'[ -d "$d" ] || continue; '
        f'find "$d" -mindepth 1 -maxdepth 1{keep} -mmin +{minutes} -print -exec rm -rf {{}} + '
        "| sed 's/^/removed=/'; done"
    )


def trim_records(keep_records: int) -> str:
    """Keep the newest records of deploys.jsonl (written aside, then renamed: never half a file)."""
    log = quote(nixcmd.DEPLOY_LOG)
    return (f"[ -f {log} ] || exit 0; n=$(wc -l < {log}); "
            f"if [ \"$n\" -gt {int(keep_records)} ]; then tail -n {int(keep_records)} {log} > {log}.tmp && "
            f"mv {log}.tmp {log}; echo trimmed=$((n - {int(keep_records)})); else echo trimmed=0; fi")


def vacuum_journal(max_mb: int | None, max_days: int | None) -> str:
    """Vacuum the archived files by size and age; the journal's usage before and after. The active
    files are rotated first, but only when there is something to vacuum (over the size, or an age
    bound): a rotation starts new, preallocated files, so a run with nothing to do changes nothing."""
    bounds = (f" --vacuum-size={int(max_mb)}M" if max_mb else "") + (f" --vacuum-time={int(max_days)}d" if max_days else "")
    due = "true" if max_days else (f'[ "$before" -gt {int(max_mb) * 1024} ]' if max_mb else "false")
    return (
        f'{nixcmd.summed_kb(JOURNAL_DIRS, "journal_before_kb", "before")}; '
        + (f"if {due}; then journalctl --rotate >/dev/null 2>&1; "
           f"journalctl{bounds} >/dev/null 2>&1 || echo journal_error=$?; fi; " if bounds else "")
        + f'{nixcmd.summed_kb(JOURNAL_DIRS, "journal_after_kb")}; '
        "journalctl --disk-usage 2>/dev/null | sed 's/^/disk_usage=/'"
    )


def clean_tmp() -> str:
    """systemd-tmpfiles' own cleaning (the ages of tmpfiles.d): /tmp, /var/tmp and the rest; then the
    stamp (by `true`: a failed redirection on `:`, a special builtin, would end the whole shell)."""
    return (f'{nixcmd.summed_kb(TMP_DIRS, "tmp_before_kb")}; if systemd-tmpfiles --clean >/dev/null 2>&1; '
            f"then {{ true > {TMP_STAMP}; }} 2>/dev/null; else echo tmp_error=$?; fi; "
            f'{nixcmd.summed_kb(TMP_DIRS, "tmp_after_kb")}')


def root_inputs(flake_hash: str, paths: tuple[str, ...]) -> str:
    """GC roots for a pushed flake's locked inputs: kept while the flake is, collected after (the
    roots of flakes pruned since go too)."""
    d = quote(f"{INPUT_ROOTS}/{flake_hash}")
    links = "".join(f"ln -sfn {quote(p)} {d}/{i}; " for i, p in enumerate(paths))
    return (f"mkdir -p {d}; {links}for r in {INPUT_ROOTS}/*; do "
            f'[ -d "{nixcmd.FLAKE_ROOT}/${{r##*/}}" ] || rm -rf "$r"; done')


def restart_units(units: tuple[str, ...]) -> str:
    """Restart the units the host has (others are named as absent), each on its own."""
    return "; ".join(
        f"if systemctl cat {quote(u)} >/dev/null 2>&1; then systemctl restart {quote(u)} && echo restarted={quote(u)} "
        f"|| echo restart_failed={quote(u)}; else echo absent={quote(u)}; fi" for u in units) or "true"


def maintenance_probe(profile: str, keep_days: float) -> str:
    """Maintenance's fast path, in one round trip and under no lock: the agent's status (or quiet, as
    for the deploy's: hostagent.status_unless_quiet), retention's
    facts, what has aged past keep_days among the pushed flakes, their input roots, resolved intents and
    activation records (listed as due=, nothing removed), the records' count, the journal's usage; and
    the temporary files cleaned by systemd-tmpfiles' own ages (what its daily timer does, under no lock)
    unless maintenance cleaned them less than TMP_CLEAN_EVERY_MIN ago (then `tmp_recent=1`)."""
    minutes = max(int(keep_days * 1440), 1)
    folders = (nixcmd.FLAKE_ROOT, INPUT_ROOTS, hostagent.RESOLVED, nixcmd.ACTIVATION_DIR)
    inside = " -o ".join(f"-path {quote(d + '/*')}" for d in folders)
    return (
        "echo maintenance_probe=1; "
        f"{hostagent.status_unless_quiet()}; {facts(profile)}; "
        # One find for the four folders and the stamp (a missing one is only an error on stderr):
        # each folder had a find and a sed before, 8 ms of the host's CPU here.
        f"found=$(find {' '.join(folders)} {TMP_STAMP} -maxdepth 1 \\( {inside} \\) -mmin +{minutes} "
        f"-printf 'due=%p\\n' -o -path {TMP_STAMP} -mmin -{TMP_CLEAN_EVERY_MIN} -printf 'tmp_recent=1\\n' 2>/dev/null); "
        '[ -z "$found" ] || printf "%s\\n" "$found"; '
        f'printf "records=%s\\n" "$(wc -l 2>/dev/null < {quote(nixcmd.DEPLOY_LOG)})"; '
        f'{nixcmd.summed_kb(JOURNAL_DIRS, "journal_kb")}; '
        f'case "$found" in *tmp_recent=1*) ;; *) {clean_tmp()};; esac'
    )

