#!/usr/bin/env python3
"""The overhead budget (issue 23): what ipex-fleet costs around the work it does.

On a lab of its own (10 hosts), a change deploy to every host three ways, alternating, median of
RUNS each, the same pushed flake bytes for all three:

  (a) ipex-fleet: `pyinfra inventories/lab.py deploys/prod.py -y --data health_levels=[] --data bench=false`
      (magic rollback, the intent journal, the lock and the records all on: the defaults);
  (b) a bare script: per host, one `ssh` that receives the flake's tarball on stdin, unpacks it, runs
      `nix build` of the host's toplevel, `nix-env -p /nix/var/nix/profiles/system --set` and
      `switch-to-configuration switch`, every host at once;
  (c) Ansible (ansible-core, its ssh connection with ControlPersist and pipelining, forks=10): the
      same steps as tasks (copy the tarball, unpack, nix build, set the profile, switch).

The flake alternates between two versions A and B (every run is a change, every build already in
the hosts' stores after the warm-up, so each run evaluates and switches). ipex-fleet pushes by
content hash and skips a flake the host has: before its runs that copy is removed, so all three
push the same bytes every run. All three reach the hosts with the lab's own SSH material (its
ssh_config: key, known_hosts, StrictHostKeyChecking yes), as inventories/lab.py does.

Then: no-change deploys of 10 hosts and, the lab grown, of 40 hosts; and `ipex-fleet maintain` with
nothing to do (one wave, health and benchmark off) on 10 and 40 hosts. Each figure is printed with
the load average (1 min) before it; the ratios come from this one run.

    .venv/bin/python benchmarks/overhead.py [--runs 3] [--root DIR] [--net 127.0.77] [--big 40]
        [--no-ansible] [--profile DIR] [--host-pace]

--host-pace adds a fourth way to the rotation: ipex-fleet with `--data pace=host` (the whole
transaction one operation per host, each host at its own pace instead of pyinfra's lockstep).

--activation SECONDS makes every host's activation that much longer (the lab's slow_activation, a
sleep in the stand-in's switch-to-configuration) for all three ways: the same change with more work
in it, to show what ipex-fleet adds is a fixed cost, not a share of the work.

--profile DIR runs one more change deploy and one more no-change deploy of the 10 hosts under
cProfile (pyinfra's controller, not timed) and writes DIR/change.prof and DIR/nochange.prof.
Ansible is taken from this virtual environment (`pip install ansible-core` if it is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ipex_fleet.nix.flakepush import flake_hash, flake_tarball  # noqa: E402
from ipex_fleet.lab import Lab, container  # noqa: E402
from ipex_fleet.nix import commands as nixcmd  # noqa: E402

BIN = Path(sys.executable).parent
PROFILE = "/nix/var/nix/profiles/system"
DEPLOY_DATA = ["--data", "health_levels=[]", "--data", "bench=false"]


def load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


class CPU:
    """CPU-seconds a run took: on the controller (this process's waited children: pyinfra, ssh,
    ansible-playbook and what they started) and on the lab's hosts (their cgroups' cpu.stat). On a
    busy machine the wall time moves with the load; what each way costs in CPU moves much less."""

    def __init__(self, lab: Lab) -> None:
        first = lab.spec.hosts[0]
        self.stat = container.unified_cgroup(lab.spec, first).parent / "cpu.stat"
        self.start = self._now()

    def _now(self) -> tuple[float, float]:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        usec = next(int(l.split()[1]) for l in self.stat.read_text().splitlines() if l.startswith("usage_usec"))
        return kids.ru_utime + kids.ru_stime, usec / 1e6

    def took(self) -> tuple[float, float]:
        end = self._now()
        return end[0] - self.start[0], end[1] - self.start[1]


def env_for(lab: Lab, state: Path) -> dict[str, str]:
    return {**os.environ, "IPEX_FLEET_LAB_ROOT": str(lab.layout.root), "IPEX_FLEET_STATE": str(state),
            "PYINFRA_PROGRESS": "off"}


def checked(proc: subprocess.CompletedProcess, what: str, outcomes: tuple[str, ...] = (), hosts: int = 0) -> None:
    """Exit 0, and (for a deploy) every host's result line one of `outcomes`."""
    output = (proc.stdout or "") + (proc.stderr or "")
    seen = sum(output.count(f" {o}: generation") for o in outcomes)
    if proc.returncode != 0 or (outcomes and seen != hosts):
        raise SystemExit(f"{what}: exit {proc.returncode}"
                         + (f", {seen} of {hosts} hosts {' or '.join(outcomes)}" if outcomes else "")
                         + f"\n{output[-4000:]}")


def ipex_fleet_deploy(lab: Lab, state: Path, hosts: int, *outcomes: str, profile: Path | None = None,
                      pace: str = "lockstep") -> float:
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else []
    argv = [*prefix, str(BIN / "pyinfra"), "inventories/lab.py", "deploys/prod.py", "-y", *DEPLOY_DATA,
            "--data", f"pace={pace}"]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=env_for(lab, state), capture_output=True, text=True, timeout=900)
    took = time.monotonic() - started
    checked(proc, "ipex-fleet deploy", outcomes, hosts)
    return took


def step_timings(state: Path) -> dict[str, float]:
    """The newest deploy run's per-step timings, the median over its hosts (each host's result JSON)."""
    runs = [d for d in (state / "runs").iterdir() if not d.name.startswith(("maintain-", "rollout-"))]
    newest = max(runs, key=lambda d: d.stat().st_mtime)
    per_host = [json.loads(f.read_text())["timings"] for f in (newest / "hosts").glob("*.json")]
    keys = sorted({k for t in per_host for k in t}, key=lambda k: (k == "total", k))
    return {k: statistics.median(t.get(k, 0.0) for t in per_host) for k in keys}


def maintain(lab: Lab, state: Path, hosts: int) -> float:
    argv = [str(BIN / "ipex-fleet"), "maintain", "inventories/lab.py", "--waves", "100%", *DEPLOY_DATA]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=env_for(lab, state), capture_output=True, text=True, timeout=900)
    took = time.monotonic() - started
    checked(proc, "ipex-fleet maintain")
    return took


def bare_script(config: str) -> str:
    """What one host runs: unpack the tarball from stdin, build the toplevel, set the profile, switch."""
    build = ("nix --extra-experimental-features 'nix-command flakes' build --json --no-link --no-write-lock-file "
             f'"path:$d#{nixcmd.toplevel_attr(config)}"')
    return ("set -e; d=$(mktemp -d /var/tmp/bare-flake.XXXXXX); tar -xzf - -C \"$d\"; "
            f"out=$({build}); "
            "p=$(printf '%s' \"$out\" | sed -n 's/.*\"out\":\"\\([^\"]*\\)\".*/\\1/p'); "
            f"nix-env -p {PROFILE} --set \"$p\"; \"$p/bin/switch-to-configuration\" switch; rm -rf \"$d\"")


def bare_deploy(lab: Lab, names: list[str], tarball: bytes) -> float:
    """Every host at once: one ssh each, the tarball on its stdin."""
    errors: list[str] = []

    def one(name: str) -> None:
        proc = subprocess.run(lab.ssh_argv(name, bare_script(name)), input=tarball, capture_output=True,
                              timeout=600)
        if proc.returncode != 0:
            errors.append(f"{name}: exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-800:]}")

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    if errors:
        raise SystemExit("bare script failed:\n" + "\n".join(errors))
    return took


PLAYBOOK = """\
- hosts: lab
  gather_facts: false
  tasks:
    - name: Push the flake
      ansible.builtin.copy:
        src: "{tarball}"
        dest: /var/tmp/ansible-flake.tar.gz
        mode: "0600"
    - name: Unpack it
      ansible.builtin.shell: rm -rf /var/tmp/ansible-flake && mkdir -p /var/tmp/ansible-flake && tar -xzf /var/tmp/ansible-flake.tar.gz -C /var/tmp/ansible-flake
    - name: Build the toplevel
      ansible.builtin.command: >-
        nix --extra-experimental-features 'nix-command flakes' build --json --no-link --no-write-lock-file
        path:/var/tmp/ansible-flake#nixosConfigurations.{{{{ inventory_hostname }}}}.config.system.build.toplevel
      register: built
    - name: Set the profile
      ansible.builtin.command: nix-env -p {profile} --set {{{{ (built.stdout | from_json)[0].outputs.out }}}}
    - name: Switch
      ansible.builtin.command: "{{{{ (built.stdout | from_json)[0].outputs.out }}}}/bin/switch-to-configuration switch"
"""


def ansible_deploy(lab: Lab, names: list[str], tarball: bytes, work: Path, run: int) -> float:
    """ansible-playbook with its ssh connection (the lab's ssh_config), forks 10; a control directory
    of its own per run, so no run reuses an earlier run's connections."""
    d = work / f"ansible-{run}"
    d.mkdir(parents=True)
    (d / "flake.tar.gz").write_bytes(tarball)
    (d / "inventory.ini").write_text("[lab]\n" + "".join(f"{n} ansible_user=root\n" for n in names))
    (d / "site.yml").write_text(PLAYBOOK.format(tarball=d / "flake.tar.gz", profile=PROFILE))
    (d / "ansible.cfg").write_text(
        "[defaults]\nforks = 10\nhost_key_checking = True\ninterpreter_python = /usr/bin/python3\n"
        f"local_tmp = {d}/tmp\nretry_files_enabled = False\n"
        "[ssh_connection]\npipelining = True\n"
        f"ssh_args = -F {lab.layout.ssh_config} -o ControlMaster=auto -o ControlPersist=30s\n"
        f"control_path_dir = {d}/cp\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(d / "ansible.cfg"), "ANSIBLE_HOME": str(d / "home")}
    started = time.monotonic()
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(d / "inventory.ini"), str(d / "site.yml")],
                          cwd=d, env=env, capture_output=True, text=True, timeout=900)
    took = time.monotonic() - started
    checked(proc, "ansible-playbook")
    if "failed=0" not in proc.stdout or proc.stdout.count("unreachable=0") != len(names):
        raise SystemExit(f"ansible-playbook: a host failed\n{proc.stdout[-3000:]}")
    for cp in (d / "cp").glob("*"):  # close its persistent connections now (ours, by their sockets)
        subprocess.run(["ssh", "-F", str(lab.layout.ssh_config), "-o", f"ControlPath={cp}", "-O", "exit", "x"],
                       capture_output=True, timeout=10)
    return took


def running_systems(lab: Lab, names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}

    def one(name: str) -> None:
        got = lab.ssh(name, "readlink -f /run/current-system", timeout=60)
        out[name] = got.stdout.strip()

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def set_version(lab: Lab, names: list[str], version: str) -> None:
    for name in names:
        lab.config(name, [f"version={version}"])


def forget_pushed(lab: Lab, names: list[str], digest: str) -> None:
    """ipex-fleet skips a flake the host already has (by content hash): remove it, so it pushes too."""
    command = f"rm -rf {shlex.quote(f'{nixcmd.FLAKE_ROOT}/{digest}')}"
    for name in names:
        lab.ssh(name, command, timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--big", type=int, default=40, help="hosts for the larger no-change deploy (0: skip)")
    parser.add_argument("--root", default="/srv/ipex-fleet-overhead")
    parser.add_argument("--net", default="127.0.77")
    parser.add_argument("--no-ansible", action="store_true")
    parser.add_argument("--only", choices=("change", "nochange"), help="measure only this part")
    parser.add_argument("--host-pace", action="store_true",
                        help="also a change deploy with --data pace=host (each host at its own pace)")
    parser.add_argument("--profile", type=Path, help="also profile one change and one no-change deploy here")
    parser.add_argument("--activation", type=int, default=0, metavar="SECONDS",
                        help="every host's activation takes this long (the lab's slow_activation, a sleep), as a "
                             "real switch restarting services does: what ipex-fleet adds is then measured against "
                             "a longer piece of work")
    args = parser.parse_args()
    if not 0 <= args.activation <= 600:  # the lab's slow_activation takes 0 to 600 s
        raise SystemExit(f"--activation {args.activation}: give whole seconds from 0 to 600")
    ansible = not args.no_ansible and args.only != "nochange"
    if ansible and not (BIN / "ansible-playbook").exists():
        raise SystemExit(f"no {BIN / 'ansible-playbook'}: `{BIN / 'pip'} install ansible-core`, or --no-ansible")
    # As a user's runs are: with Python's bytecode caches (a shell or image that sets
    # PYTHONDONTWRITEBYTECODE would have every run compile the controller's modules again, a tenth
    # of a second of CPU; ipex-fleet, the bare script and Ansible run under the same environment).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    work = Path(tempfile.mkdtemp(prefix="ipex-fleet-overhead-"))
    lab = Lab(args.root)
    lab.destroy()
    state = Path(args.root) / "controller-state"
    shutil.rmtree(state, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores, kernel {os.uname().release}; {load()} at the start", flush=True)
    figures: dict[str, float] = {}
    try:
        started = time.monotonic()
        lab.up(args.hosts, args.net)
        names = [h.name for h in lab.spec.hosts[:args.hosts]]
        print(f"lab up {args.hosts}: {time.monotonic() - started:.1f} s", flush=True)
        if args.activation:  # in both flakes A and B, so every way runs the same activation
            for name in names:
                lab.config(name, [f"slow_activation={args.activation}"])
            print(f"every host's activation sleeps {args.activation} s (slow_activation)", flush=True)
        flakes: dict[str, tuple[bytes, str]] = {}
        stamp = time.strftime("%H%M%S")
        for label in ("A", "B"):
            set_version(lab, names, f"overhead-{stamp}-{label}")
            flakes[label] = (flake_tarball(str(lab.layout.flake_dir)), flake_hash(str(lab.layout.flake_dir)))
        print(f"the pushed flake: {len(flakes['A'][0])} bytes (A), {len(flakes['B'][0])} bytes (B)", flush=True)
        # Warm-up, not timed: ipex-fleet carries the locked inputs and builds A and B on every host.
        toplevel: dict[str, dict[str, str]] = {}
        on = None
        for label in ("A", "B"):
            set_version(lab, names, f"overhead-{stamp}-{label}")
            ipex_fleet_deploy(lab, state, len(names), "ok")
            toplevel[label] = running_systems(lab, names)
            on = label
        methods = ["ipex-fleet"] + (["host-pace"] if args.host_pace else []) + ["bare"] + (["ansible"] if ansible else [])
        times: dict[str, list[float]] = {m: [] for m in methods}
        cpus: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
        steps: list[dict[str, float]] = []  # each ipex-fleet change run's per-step medians over its hosts
        if args.only != "nochange":
            for run in range(args.runs + 1):  # run 0 warms each method up (Ansible's first start, say)
                order = methods[run % len(methods):] + methods[:run % len(methods)]
                for method in order:
                    to = "A" if on == "B" else "B"
                    tarball, digest = flakes[to]
                    before = load()
                    if method in ("ipex-fleet", "host-pace"):  # the run's preparation, outside its CPU (its logins)
                        set_version(lab, names, f"overhead-{stamp}-{to}")
                        forget_pushed(lab, names, digest)
                    cpu = CPU(lab)
                    if method == "ipex-fleet":
                        took = ipex_fleet_deploy(lab, state, len(names), "ok")
                        if run:
                            steps.append(step_timings(state))
                    elif method == "host-pace":
                        took = ipex_fleet_deploy(lab, state, len(names), "ok", pace="host")
                    elif method == "bare":
                        took = bare_deploy(lab, names, tarball)
                    else:
                        took = ansible_deploy(lab, names, tarball, work, run * 10 + len(times["ansible"]))
                    used = cpu.took()
                    now = running_systems(lab, names)
                    if now != toplevel[to]:
                        wrong = [n for n in names if now[n] != toplevel[to][n]]
                        raise SystemExit(f"{method}: {', '.join(wrong)} do not run flake {to}'s toplevel")
                    on = to
                    usage = f"CPU-s: controller {used[0]:5.2f}, hosts {used[1]:5.2f}"
                    if run == 0:
                        print(f"  warm-up {method:10} {took:6.2f} s  ({usage}; {before})", flush=True)
                        continue
                    times[method].append(took)
                    cpus[method].append(used)
                    print(f"  run {run} {method:10} change deploy, {len(names)} hosts: {took:6.2f} s  ({usage}; {before})",
                          flush=True)
            steps_median = {k: statistics.median(r.get(k, 0.0) for r in steps) for k in steps[-1]}
            for method in methods:
                figures[method] = statistics.median(times[method])
                figures[f"{method} cpu controller"] = statistics.median(c[0] for c in cpus[method])
                figures[f"{method} cpu hosts"] = statistics.median(c[1] for c in cpus[method])
            set_version(lab, names, f"overhead-{stamp}-{on}")  # the flake the hosts run, for what follows
        if args.only != "change":
            ipex_fleet_deploy(lab, state, len(names), "unchanged")  # not timed: its records follow the hosts again
            nochange = []
            for run in range(args.runs):
                before, cpu = load(), CPU(lab)
                nochange.append(ipex_fleet_deploy(lab, state, len(names), "unchanged"))
                print(f"  no-change deploy, {len(names)} hosts: {nochange[-1]:6.2f} s  ({spent(cpu)}; {before})",
                      flush=True)
            figures["nochange"] = statistics.median(nochange)
            maint(lab, state, names, args.runs, figures, "maintain")
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            to = "A" if on == "B" else "B"
            set_version(lab, names, f"overhead-{stamp}-{to}")
            forget_pushed(lab, names, flakes[to][1])
            took = ipex_fleet_deploy(lab, state, len(names), "ok", profile=args.profile / "change.prof")
            print(f"  profiled change deploy: {took:.2f} s -> {args.profile / 'change.prof'}", flush=True)
            took = ipex_fleet_deploy(lab, state, len(names), "unchanged", profile=args.profile / "nochange.prof")
            print(f"  profiled no-change deploy: {took:.2f} s -> {args.profile / 'nochange.prof'}", flush=True)
        if args.big and args.only != "change":
            started = time.monotonic()
            lab.up(args.big, args.net)
            big = [h.name for h in lab.spec.hosts[:args.big]]
            print(f"lab grown to {args.big}: {time.monotonic() - started:.1f} s", flush=True)
            set_version(lab, big[len(names):], f"overhead-{stamp}-{on}")
            ipex_fleet_deploy(lab, state, len(big), "ok", "unchanged")  # not timed: every host deployed
            bigs = []
            for run in range(args.runs):
                before, cpu = load(), CPU(lab)
                bigs.append(ipex_fleet_deploy(lab, state, len(big), "unchanged"))
                print(f"  no-change deploy, {len(big)} hosts: {bigs[-1]:6.2f} s  ({spent(cpu)}; {before})", flush=True)
            figures["nochange_big"] = statistics.median(bigs)
            maint(lab, state, big, args.runs, figures, "maintain_big")
    finally:
        lab.destroy()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedians of {args.runs} ({load()} at the end):")
    if "ipex-fleet" in figures:
        line = (f"  change deploy, {args.hosts} hosts: ipex-fleet {figures['ipex-fleet']:.2f} s, "
                f"bare script {figures['bare']:.2f} s")
        if "ansible" in figures:
            line += f", Ansible {figures['ansible']:.2f} s"
        print(line)
        print(f"  ipex-fleet less the bare script: {figures['ipex-fleet'] - figures['bare']:+.2f} s"
              + (f" (every activation {args.activation} s)" if args.activation else ""))
        print(f"  ratios: ipex-fleet/bare {figures['ipex-fleet'] / figures['bare']:.2f}x"
              + (f", ipex-fleet/Ansible {figures['ipex-fleet'] / figures['ansible']:.2f}x" if "ansible" in figures
                 else ""))
        if "host-pace" in figures:
            print(f"  with pace=host: {figures['host-pace']:.2f} s; host-pace/bare "
                  f"{figures['host-pace'] / figures['bare']:.2f}x"
                  + (f", host-pace/Ansible {figures['host-pace'] / figures['ansible']:.2f}x" if "ansible" in figures
                     else "") + f", host-pace/lockstep {figures['host-pace'] / figures['ipex-fleet']:.2f}x")
        print("  ipex-fleet's steps as each host recorded them (median over hosts, then runs): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in steps_median.items()))
        for method in ("ipex-fleet", "host-pace", "bare", "ansible"):
            if method in figures:
                print(f"  CPU-seconds of a change deploy, {method}: controller {figures[method + ' cpu controller']:.2f},"
                      f" hosts {figures[method + ' cpu hosts']:.2f}")
    for key, what in (("nochange", f"no-change deploy, {args.hosts} hosts"),
                      ("maintain", f"maintain with nothing to do, {args.hosts} hosts"),
                      ("nochange_big", f"no-change deploy, {args.big} hosts"),
                      ("maintain_big", f"maintain with nothing to do, {args.big} hosts")):
        if key in figures:
            print(f"  {what}: {figures[key]:.2f} s")
    return 0


def spent(cpu: CPU) -> str:
    used = cpu.took()
    return f"CPU-s: controller {used[0]:5.2f}, hosts {used[1]:5.2f}"


def maint(lab: Lab, state: Path, names: list[str], runs: int, figures: dict[str, float], key: str) -> None:
    maintain(lab, state, len(names))  # not timed: the first one does what there is to do
    took = []
    for _ in range(runs):
        before, cpu = load(), CPU(lab)
        took.append(maintain(lab, state, len(names)))
        print(f"  maintain with nothing to do, {len(names)} hosts: {took[-1]:6.2f} s  ({spent(cpu)}; {before})",
              flush=True)
    figures[key] = statistics.median(took)


if __name__ == "__main__":
    raise SystemExit(main())
