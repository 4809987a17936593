#!/usr/bin/env python3
"""What the safety net costs a host, item by item (issue 23): the host CPU of each thing a change
deploy runs that the bare script does not, measured alone on an idle lab host.

On a lab of its own (one host), each item runs REPS times in a row and the host's CPU is read from
its cgroup (cpu.stat usage_usec) before and after; an item's cost is that difference per run, less
the same for the baseline (`true` over the same open SSH connection), so what is left is the item's
own work. Items:

- login: a new SSH connection running `true` (the confirmation over a new login; deploy-rs's too);
- agent call: the host agent's `status` (a deploy makes five agent calls a host: the lock with the
  push's state, the intent's opening with the profile, the `activated` mark, the commit; `status` is
  the lightest, so this is a floor);
- watchdog: `systemd-run` starting the agent detached in a transient unit, as the intent's opening
  does (the watchdog then lives until the commit, polling once a second: its polls are not counted);
- activation unit: `switch-to-configuration` run in a transient unit with `systemd-run --wait`, as
  nixos-rebuild-ng does (a dropped SSH connection neither kills it nor loses its exit code), less the
  same program started directly.

    .venv/bin/python benchmarks/safety_bill.py [--reps 40] [--root DIR] [--net 127.0.74]

It prints each item's cost in milliseconds of host CPU, how many of it a change deploy makes, and
the sum, the bill of one host's safety net.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ipex_fleet.lab import Lab, container  # noqa: E402
from ipex_fleet.transaction import hostagent  # noqa: E402


def usage_usec(stat: Path) -> int:
    return next(int(line.split()[1]) for line in stat.read_text().splitlines() if line.startswith("usage_usec"))


class Host:
    """One lab host, reached over one open SSH connection (a control master) or a new one per command."""

    def __init__(self, lab: Lab, name: str, control: Path) -> None:
        self.lab, self.name, self.control = lab, name, control
        self.stat = container.unified_cgroup(lab.spec, lab.spec.host(name)) / "cpu.stat"
        self.shared = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}", "-o", "ControlPersist=120"]

    def run(self, command: str, new_login: bool = False) -> None:
        options = [] if new_login else self.shared
        argv = ["ssh", "-F", str(self.lab.layout.ssh_config), *options, self.name, command]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise SystemExit(f"{command!r} on {self.name}: exit {proc.returncode}: {proc.stderr.strip()[-400:]}")

    def cost_ms(self, command: str, reps: int, new_login: bool = False, settle: float = 0.0) -> float:
        """The host's CPU per run of `command`, in milliseconds."""
        self.run(command, new_login)  # warm: caches, the interpreter's compiled files
        time.sleep(settle)
        before = usage_usec(self.stat)
        for _ in range(reps):
            self.run(command, new_login)
        time.sleep(settle)  # a detached unit finishes after its starter returns
        return (usage_usec(self.stat) - before) / reps / 1000

    def close(self) -> None:
        subprocess.run(["ssh", "-F", str(self.lab.layout.ssh_config), "-o", f"ControlPath={self.control}",
                        "-O", "exit", self.name], capture_output=True, timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--root", default="/srv/ipex-fleet-bill")
    parser.add_argument("--net", default="127.0.74")
    args = parser.parse_args()
    lab = Lab(args.root)
    lab.destroy()
    work = Path(tempfile.mkdtemp(prefix="ipex-fleet-bill-"))
    print(f"machine: {os.cpu_count()} cores, kernel {os.uname().release}; load {os.getloadavg()[0]:.2f}", flush=True)
    try:
        lab.up(1, args.net)
        host = Host(lab, lab.spec.hosts[0].name, work / "cm")
        # The agent, installed as a deploy installs it.
        upload = "/var/tmp/ipex-fleet-bill-agent.py"
        subprocess.run(lab.ssh_argv(host.name, f"cat > {upload}"), input=hostagent.SOURCE, check=True,
                       capture_output=True, timeout=60)
        lab.ssh(host.name, hostagent.install(upload), timeout=60)
        agent = hostagent.command("status")
        host.run(agent)
        stc = "/run/current-system/bin/switch-to-configuration"
        base = host.cost_ms("true", args.reps)
        items = [
            ("login", 1, host.cost_ms("true", args.reps, new_login=True) - base),
            ("agent call", 5, host.cost_ms(agent, args.reps) - base),
        ]
        detached = ("systemd-run --quiet --collect --unit=ipex-fleet-bill-$$-$RANDOM "
                    f"{shlex.quote(hostagent.LAUNCHER)} {shlex.quote(hostagent.SCRIPT)} --root /var/lib/ipex-fleet status")
        items.append(("watchdog start", 1, host.cost_ms(detached, args.reps, settle=2.0) - host.cost_ms(agent, args.reps)))
        direct = f"{stc} test >/dev/null 2>&1"
        unit = (f"systemd-run --quiet --collect --wait --no-ask-password --service-type=exec "
                f"--unit=ipex-fleet-bill-switch-$$-$RANDOM /bin/sh -c {shlex.quote(direct)}")
        items.append(("activation unit", 1, host.cost_ms(unit, args.reps) - host.cost_ms(direct, args.reps)))
        host.close()
    finally:
        lab.destroy()
    print(f"\nhost CPU per item, {args.reps} runs each, less the baseline (`true` over the open connection, "
          f"{base:.1f} ms):")
    total = 0.0
    for name, count, ms in items:
        total += count * ms
        print(f"  {name:16} {ms:6.1f} ms  x{count}  = {count * ms:6.1f} ms")
    print(f"  the safety net's bill, one host's change deploy: {total:.0f} ms of host CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
