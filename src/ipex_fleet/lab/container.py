"""One lab host = one systemd-nspawn container with systemd as PID 1, in a cgroup of its own (LAB.md).

The controller starts a supervisor per host (ipex_fleet.lab.supervise) and reaches the host's
processes through its cgroup: to freeze it, crash it, find its PID 1, or prove it is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ipex_fleet.common.waiting import wait_until
from ipex_fleet.lab.layout import LabHost, LabLayout, LabSpec

CGROUP_BASE = Path("/sys/fs/cgroup")
CGROUP_TOP = "ipex-fleet-lab"


def _hierarchies() -> tuple[Path | None, Path]:
    """(the named systemd v1 hierarchy or None, the cgroup2 hierarchy): hybrid or unified machines."""
    if (CGROUP_BASE / "unified" / "cgroup.procs").exists():
        return CGROUP_BASE / "systemd", CGROUP_BASE / "unified"
    return None, CGROUP_BASE


def lab_cgroup_rel(spec: LabSpec) -> str:
    return f"{CGROUP_TOP}/{spec.net.replace('.', '_')}"


def nft_cgroup_path(spec: LabSpec) -> str:
    """The lab's cgroup as nftables names it: relative to /sys/fs/cgroup, which nft looks under."""
    _v1, v2 = _hierarchies()
    return str((v2 / lab_cgroup_rel(spec)).relative_to(CGROUP_BASE))


def nft_host_cgroup_path(spec: LabSpec, host: LabHost) -> tuple[str, int]:
    """The host's cgroup as nftables names it, and its depth in the cgroup2 hierarchy."""
    return f"{nft_cgroup_path(spec)}/{host.name}", lab_cgroup_rel(spec).count("/") + 2


def ensure_lab_cgroup(spec: LabSpec) -> None:
    """The lab's cgroup must exist before the nftables guard names it."""
    v1, v2 = _hierarchies()
    for base in (p for p in (v1, v2) if p is not None):
        (base / lab_cgroup_rel(spec)).mkdir(parents=True, exist_ok=True)


def running_hosts_elsewhere(spec: LabSpec) -> int:
    """Hosts with processes in every other lab on this machine (they share its kernel limits)."""
    _v1, v2 = _hierarchies()
    mine = v2 / lab_cgroup_rel(spec)
    count = 0
    for host in (v2 / CGROUP_TOP).glob("*/host*"):
        if host.parent == mine:
            continue
        try:
            if "populated 1" in (host / "cgroup.events").read_text():
                count += 1
        except OSError:
            continue
    return count


def host_cgroups(spec: LabSpec, host: LabHost) -> list[Path]:
    v1, v2 = _hierarchies()
    rel = f"{lab_cgroup_rel(spec)}/{host.name}"
    return [p / rel for p in (v1, v2) if p is not None]


def unified_cgroup(spec: LabSpec, host: LabHost) -> Path:
    return host_cgroups(spec, host)[-1]


def machine_name(spec: LabSpec, host: LabHost) -> str:
    return f"lab-{spec.net.replace('.', '-')}-{host.name}"


def supervisor_pid_file(layout: LabLayout, host: LabHost) -> Path:
    return layout.host_dir(host.name) / "supervisor.pid"


def supervisor_pid(layout: LabLayout, host: LabHost) -> int | None:
    try:
        pid = int(supervisor_pid_file(layout, host).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if b"ipex_fleet.lab.supervise" not in cmdline or not _alive(pid):
        return None
    return pid


def start(layout: LabLayout, spec: LabSpec, host: LabHost, template: Path, binds_ro: list[str],
          binds: list[str]) -> int:
    h = layout.host_dir(host.name)
    (h / "want").write_text("up\n")
    (h / "crash").unlink(missing_ok=True)
    (h / "ready").unlink(missing_ok=True)
    # -S: the supervisor needs the standard library only (one runs per host: start-up time counts).
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-S", "-m", "ipex_fleet.lab.supervise",
            "--host-dir", str(h), "--template", str(template), "--machine", machine_name(spec, host),
            "--hostname", host.name, *(f"--cgroup={c}" for c in host_cgroups(spec, host)),
            *(f"--bind-ro={b}" for b in binds_ro), *(f"--bind={b}" for b in binds)]
    with open(h / "host.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": _package_parent()})
    supervisor_pid_file(layout, host).write_text(f"{proc.pid}\n")
    return proc.pid


def _package_parent() -> str:
    import ipex_fleet

    return str(Path(ipex_fleet.__file__).resolve().parent.parent)


def host_pids(spec: LabSpec, host: LabHost) -> list[int]:
    """Every process in the host's cgroup (supervisor, nspawn, and everything in the container)."""
    root = unified_cgroup(spec, host)
    pids: list[int] = []
    if not root.exists():
        return pids
    for dirpath, _dirs, files in os.walk(root):
        if "cgroup.procs" in files:
            try:
                pids += [int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()]
            except OSError:
                continue
    return pids


def init_pid(spec: LabSpec, host: LabHost) -> int | None:
    """The container's PID 1 (systemd), seen from the controller."""
    payload = unified_cgroup(spec, host) / "payload"
    if not payload.exists():
        return None
    for dirpath, _dirs, files in os.walk(payload):
        if "cgroup.procs" not in files:
            continue
        try:
            pids = Path(dirpath, "cgroup.procs").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next((l.split()[1:] for l in status.splitlines() if l.startswith("NSpid:")), [])
            if nspid and nspid[-1] == "1":
                return int(pid)
    return None


def is_frozen(spec: LabSpec, host: LabHost) -> bool:
    try:
        return "frozen 1" in (unified_cgroup(spec, host) / "cgroup.events").read_text()
    except OSError:
        return False


def set_frozen(spec: LabSpec, host: LabHost, frozen: bool) -> None:
    (unified_cgroup(spec, host) / "cgroup.freeze").write_text("1\n" if frozen else "0\n")


def reboot(spec: LabSpec, host: LabHost) -> bool:
    """SIGINT to the container's systemd is ctrl-alt-del: a clean reboot, whatever state sshd is in."""
    pid = init_pid(spec, host)
    if pid is None:
        return False
    os.kill(pid, signal.SIGINT)
    return True


def crash(layout: LabLayout, spec: LabSpec, host: LabHost) -> bool:
    """A hard kill of everything in the container; the supervisor boots it again (LAB.md)."""
    payload = unified_cgroup(spec, host) / "payload"
    if not payload.exists():
        return False
    (layout.host_dir(host.name) / "crash").write_text("1\n")
    set_frozen(spec, host, False)
    (payload / "cgroup.kill").write_text("1\n")
    return True


def stop(layout: LabLayout, spec: LabSpec, host: LabHost) -> int | None:
    """Ask for a clean poweroff; returns the supervisor's pid to wait for."""
    h = layout.host_dir(host.name)
    if h.exists():
        (h / "want").write_text("down\n")
    pid = supervisor_pid(layout, host)
    if unified_cgroup(spec, host).exists():
        set_frozen(spec, host, False)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    return pid


def kill_all(spec: LabSpec, host: LabHost) -> None:
    cg = unified_cgroup(spec, host)
    if cg.exists():
        set_frozen(spec, host, False)
        (cg / "cgroup.kill").write_text("1\n")


def remove_cgroups(spec: LabSpec, hosts: tuple[LabHost, ...]) -> None:
    """rmdir the hosts' cgroups, deepest first, then the lab's and the top one when empty."""
    v1, v2 = _hierarchies()
    for base in (p for p in (v1, v2) if p is not None):
        lab_dir = base / lab_cgroup_rel(spec)
        if lab_dir.exists():
            for dirpath, _dirs, _files in sorted(os.walk(lab_dir), key=lambda e: -len(e[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        try:
            os.rmdir(base / CGROUP_TOP)
        except OSError:
            pass


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every pid has exited; return those still alive at the deadline."""
    remaining = [p for p in pids if _alive(p)]

    def gone() -> bool:
        remaining[:] = [p for p in remaining if _alive(p)]
        return not remaining

    wait_until(gone, timeout, "the processes to exit", interval=0.05)
    return remaining


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    if state == "Z":
        try:  # our own child: reap it
            reaped, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False  # another's: its parent reaps it
        # 0: a thread group leader whose other threads are still exiting shows as Z, not yet reapable.
        return reaped == 0
    return True
