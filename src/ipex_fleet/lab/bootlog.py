"""Why a lab host did not boot: the line of its host.log that says so.

host.log has what the host's console shows (nspawn --console=read-only): nspawn's own lines,
PID 1's (its status lines for failed units only, `SYSTEM_CONSOLE`), and every message of priority
err or worse once journald runs (it forwards them to the console, `JOURNALD_CONSOLE`). Every boot
prints a few lines that never explain a failure ("Some capabilities will not be set...", cgroup
symlinks PID 1 cannot make); the last line is often one of those.
So: a line naming an exhausted resource first (the usual cause, a kernel limit), PID 1's own fatal
line before other lines with the same cause; then the last line that reads as an error; then the
last line that is not noise.
"""

from __future__ import annotations

import re

# In the host's overlay: journald forwards err and worse to the console, which is host.log, and
# systemd shows the status of failed units only there (not a line per unit started at each boot).
JOURNALD_CONSOLE = "[Journal]\nForwardToConsole=yes\nMaxLevelConsole=err\n"
SYSTEM_CONSOLE = "[Manager]\nShowStatus=error\n"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|[\x00-\x08\x0b-\x1f\x7f]")
# errno texts of exhausted limits: inotify instances or fds (EMFILE), inotify watches (ENOSPC),
# memory, processes or threads (EAGAIN), keys (EDQUOT).
RESOURCE = re.compile(r"Too many open files|No space left on device|Cannot allocate memory|Out of memory"
                      r"|Resource temporarily unavailable|Disk quota exceeded|Too many (?:users|processes)"
                      r"|Argument list too long", re.I)
# PID 1 giving up: its line names the cause ("Failed to allocate manager object: Too many open files").
_FATAL = re.compile(r"Failed to allocate manager object:|Freezing execution|Failed to (?:start|mount|set up)"
                    r".*: ", re.I)
_ERROR = re.compile(r"\b(?:fail(?:ed|ure|s)?|error|cannot|can't|unable|denied|refus(?:ed|es)|not found|"
                    r"timed out|abort(?:ed|ing)?)\b", re.I)
# Lines every boot (or every failed boot) prints, that never say why.
_NOISE = re.compile(
    r"^(?:Spawning container |Press \^\] three times|Some capabilities will not be set"
    r"|Failed to create symlink /sys/fs/cgroup/|Attempted to remove disk file system"
    r"|Welcome to |systemd \d+\S* running in |Detected (?:virtualization|architecture)"
    r"|supervisor: nspawn exited|Exiting PID 1|Container \S+ (?:failed with error code|exited)"
    r"|\[!!!!!!\] |Failed to allocate manager object\.$|Set hostname to |Hostname set to "
    r"|Initializing machine ID|Queued start job|lab-boot: |\[  OK  \] |Sending SIG\w+ to remaining"
    r"|All filesystems, swaps|Halting system|Rebooting|Powering off)")


_EXIT = re.compile(r"^Container \S+ failed with error code|^supervisor: ")


def clean(line: str) -> str:
    return _ANSI.sub("", line).strip()


def reason(text: str) -> str | None:
    """The line of a host's log (what it printed since it was started) that says why it did not boot."""
    lines = [l for l in (clean(l) for l in text.splitlines()) if l]
    resource = [l for l in lines if RESOURCE.search(l)]
    if resource:
        fatal = [l for l in resource if _FATAL.search(l)]
        return (fatal or resource)[0]
    meaningful = [l for l in lines if not _NOISE.search(l)]
    errors = [l for l in meaningful if _ERROR.search(l)]
    if errors:
        return errors[-1]
    if meaningful:
        return meaningful[-1]
    exits = [l for l in lines if _EXIT.search(l)]  # nspawn's own word, when nothing says more
    return exits[-1] if exits else None


def fatal(text: str) -> str | None:
    """A line that means the host will not come up by waiting longer (an exhausted resource)."""
    for line in text.splitlines():
        if RESOURCE.search(line):
            return clean(line)
    return None
