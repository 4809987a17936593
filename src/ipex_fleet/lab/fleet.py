"""`ipex-fleet lab ...`: bring a lab fleet up and down, inject faults, run commands on hosts."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ipex_fleet.domain import SYSTEM_PROFILE
from ipex_fleet.common.errors import CommandFailed, UserError
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.runner import Completed, run, run_attached
from ipex_fleet.common.waiting import wait_until
from ipex_fleet.nix.flakepush import flake_hash, flake_tarball
from ipex_fleet.lab import bootlog, container, faults, hardware, install, knobs, limits, sshmaterial, template
from ipex_fleet.lab.layout import DEFAULT_NET, LabHost, LabLayout, LabSpec, check_net, read_spec, write_spec

FLAKE_SOURCE = Path(__file__).parent / "flake"
# The lab flake's locked input (standing in for nixpkgs), served by the lab on loopback.
LABPKGS_SOURCE = Path(__file__).parent / "labpkgs"
LABPKGS_URL_MARK = "@LABPKGS_URL@"
# Debian's prometheus-node-exporter on the controller; hosts run it read-only from there.
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
GUEST_SOURCE = Path(__file__).parent / "guest"
NIX_CONF = template.NIX_CONF
# `lab up`: hosts prepared and installed at once (threads; the work is in subprocesses and files),
# hosts booting at once (all of them: the boots share the CPU either way, and waiting on each
# boot's own READY=1 costs nothing), and how long a boot and the first login may take.
PARALLEL = 8
MAX_BOOTING = 253
BOOT_TIMEOUT = 60.0
BOOT_TIMEOUT_PER_HOST = 0.5  # the boots share the machine's cores
FATAL_GRACE = 5.0  # a host whose log names an exhausted resource this long after its start is failed
LOGIN_TIMEOUT = 30.0
# systemd's generators find nothing to do in a lab host (no fstab, crypttab, GPT root, kernel command
# line, or SysV script without a native unit); each runs at every boot and every daemon-reload, which
# was about a fifth of a host's boot CPU. Masked in each host's /etc, as a system administrator would.
IDLE_GENERATORS = ("systemd-cryptsetup-generator", "systemd-debug-generator", "systemd-fstab-generator",
                   "systemd-getty-generator", "systemd-gpt-auto-generator", "systemd-hibernate-resume-generator",
                   "systemd-integritysetup-generator", "systemd-rc-local-generator", "systemd-run-generator",
                   "systemd-system-update-generator", "systemd-sysv-generator", "systemd-veritysetup-generator")
# A lab host has its own /tmp, /root, /var/lib, /run, /etc and /nix: a controller path under one of
# them is hidden from it, whatever is bound there (scripts/bootstrap puts such a checkout's
# environment under /srv).
HOST_PRIVATE = ("/tmp", "/root", "/var/lib", "/run", "/etc", "/nix", "/proc", "/sys", "/dev")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
# tool -> Debian package that provides it
REQUIRED_TOOLS = {
    "nix": "nix-bin",
    "nix-env": "nix-bin",
    "/usr/sbin/sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nft": "nftables",
    "unshare": "util-linux",
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
}


def host_python() -> str:
    """This environment's interpreter by its real path: the one a lab host sees (through the bind of
    the environment's real prefix). `sys.executable` is the path as invoked, maybe through a
    symlinked `.venv` or checkout that hosts cannot see."""
    return os.path.join(os.path.realpath(sys.prefix), "bin", os.path.basename(sys.executable))


def _host_binds_ro() -> list[str]:
    import ipex_fleet

    prefix = os.path.realpath(sys.prefix)
    ro = {prefix}
    source = str(Path(ipex_fleet.__file__).resolve().parent.parent)
    if not (source + "/").startswith(prefix + "/"):
        ro.add(source)
    if os.path.exists(NODE_EXPORTER):
        ro.add(NODE_EXPORTER)
    return sorted(ro)


def _check_host_visible(paths: list[str]) -> None:
    """Refuse, before any host starts, a controller path the hosts could not see at its own name."""
    for path in paths:
        hidden = next((p for p in HOST_PRIVATE if path == p or path.startswith(p + "/")), None)
        if hidden is not None:
            raise UserError(f"the lab hosts cannot see {path} (each host has its own {hidden}): "
                            f"run ./scripts/bootstrap from the checkout, which puts its environment under /srv, "
                            f"or use an environment outside {', '.join(HOST_PRIVATE)}")
        if ":" in path or "\n" in path:
            raise UserError(f"the lab cannot bind {path!r} into its hosts (systemd-nspawn reads ':' as a "
                            f"separator): move the checkout or its environment to a path without ':'")


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    state: str  # running | stopped | frozen
    cut: str | None
    generation: int | None
    settings: dict
    booted: str | None = None  # /run/booted-system's generation store path, read on the host


def _missing_tools() -> dict[str, str]:
    return {t: p for t, p in REQUIRED_TOOLS.items() if not (os.path.exists(t) if t.startswith("/") else shutil.which(t))}


def ensure_requirements() -> None:
    """Install nix-bin, openssh-server and nftables when missing, or say in one line what to do."""
    if os.geteuid() != 0:
        raise UserError("the lab needs root (systemd-nspawn, mounts, cgroups, nftables); run it as root")
    missing = _missing_tools()
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        try:
            run(["apt-get", "update", "-qq"], timeout=300, env=env)
            run(["apt-get", "install", "-y", "-qq", *packages], timeout=600, env=env)
        except CommandFailed:
            pass
    missing = _missing_tools()
    if missing:
        raise UserError(f"the lab needs {', '.join(sorted(missing))}: install them with "
                        f"apt-get install -y {' '.join(sorted(set(missing.values())))}")


class Lab:
    def __init__(self, root: str | None = None) -> None:
        self.layout = LabLayout.at(root)

    @property
    def spec(self) -> LabSpec:
        spec = read_spec(self.layout)
        if spec is None:
            raise UserError(f"no lab at {self.layout.root}; start one with: ipex-fleet lab up N")
        return spec

    # -- lifecycle -------------------------------------------------------------------------

    def up(self, count: int, net: str | None = None, deploy_user: str | None = None,
           say: Callable[[str], None] | None = None) -> list[str]:
        """Boot hosts 1..count (those already running are left alone), each into its first generation.

        Raises the kernel limits the hosts need first (`say` gets one line naming what changed; by
        default it goes to stderr). A host that does not boot fails `up` with one line per such host,
        quoting the line of its host.log that says why; those hosts are stopped, the others left up."""
        say = say or _say
        if not 1 <= count <= 253:
            raise UserError(f"lab up {count}: the lab holds 1 to 253 hosts (.254 serves its binary cache)")
        if deploy_user is not None and (not _USER_RE.match(deploy_user) or deploy_user == "root"):
            raise UserError(f"--deploy-user {deploy_user!r} is not a plain user name (like deploy); root is the default")
        existing = read_spec(self.layout)
        net = check_net(net or (existing.net if existing else DEFAULT_NET))
        if existing and existing.net != net:
            raise UserError(f"the lab at {self.layout.root} uses {existing.net}; "
                            f"run `ipex-fleet lab destroy` first to change --net")
        ensure_requirements()
        _check_host_visible(_host_binds_ro())
        rootfs = template.ensure_template()
        spec = LabSpec(net=net, count=max(count, existing.count if existing else 0),
                       deploy_user=deploy_user or (existing.deploy_user if existing else None))
        machine_hosts = count + container.running_hosts_elsewhere(spec)
        changed = limits.ensure(machine_hosts)
        if changed:
            say(limits.describe(machine_hosts, changed))
        write_spec(self.layout, spec)
        released = self._install_flake(spec)
        self.layout.nix_conf_dir.mkdir(parents=True, exist_ok=True)
        # tarball-ttl 0: `nix flake update` asks the lab's channel again, as a real one is asked.
        (self.layout.nix_conf_dir / "nix.conf").write_text(NIX_CONF + "tarball-ttl = 0\n")
        self.layout.shared_dir.mkdir(parents=True, exist_ok=True)
        container.ensure_lab_cgroup(spec)
        faults.ensure_table(spec, container.nft_cgroup_path(spec))
        sshmaterial.write_client_side(self.layout, spec)
        self._start_cache(spec)
        self._lock_flake(update=released)
        wanted = spec.hosts[:count]
        running = {h for h in wanted if container.supervisor_pid(self.layout, h) is not None}
        # A running host without a generation (its install never finished) is installed afresh.
        self._power_off([h for h in wanted if h in running and self._generation_number(h) is None])
        running = {h for h in running if container.supervisor_pid(self.layout, h) is not None}
        to_start = [h for h in wanted if h not in running]
        fresh = [h for h in to_start if self._generation_number(h) is None]
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            list(pool.map(lambda h: self._prepare_host(spec, h), to_start))
            toplevels, inputs = install.build(self.layout, fresh)
            list(pool.map(lambda h: install.install(self.layout, h, toplevels[h.name], inputs), fresh))
        sshmaterial.write_client_side(self.layout, spec)
        failed = self._boot(spec, rootfs, wanted, to_start, {h.name for h in fresh})
        if failed:
            self._power_off([h for h in failed if failed[h][0] == "boot"], kill=True)
            booted = len(wanted) - len(failed)
            lines = [f"{h.name}: {why}" for h, (_kind, why) in sorted(failed.items(), key=lambda kv: int(
                kv[0].name[4:]))]
            raise UserError(f"lab up {count}: {len(failed)} of {len(wanted)} host(s) failed; those that did not "
                            f"boot are stopped, the {booted} other(s) are left up (`lab up {count}` again starts "
                            f"the rest):\n" + "\n".join(lines))
        return [h.name for h in to_start]

    def _boot(self, spec: LabSpec, rootfs: Path, wanted: tuple[LabHost, ...], to_start: list[LabHost],
              fresh: set[str]) -> dict[LabHost, tuple[str, str]]:
        """Start `to_start`, wait for each boot's end (the supervisor's `ready`, from the host's own
        READY=1), then log in to every wanted host once. Returns the hosts that failed: host -> (kind,
        line), kind "boot" (did not boot; its log's reason quoted) or "login"."""
        failed: dict[LabHost, tuple[str, str]] = {}
        logins = []
        binds = self._binds()
        started_at: dict[LabHost, float] = {}
        offsets: dict[LabHost, int] = {}
        waiting = list(to_start)
        booting: list[LabHost] = []
        timeout = BOOT_TIMEOUT + BOOT_TIMEOUT_PER_HOST * len(to_start)
        login_timeout = LOGIN_TIMEOUT + BOOT_TIMEOUT_PER_HOST * len(wanted)  # the logins share the cores too
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            for host in wanted:
                if host not in to_start:
                    logins.append((host, pool.submit(self._login, host, False, login_timeout)))
            while waiting or booting:
                while waiting and len(booting) < MAX_BOOTING:
                    host = waiting.pop(0)
                    log = self.layout.host_dir(host.name) / "host.log"
                    offsets[host] = log.stat().st_size if log.exists() else 0
                    container.start(self.layout, spec, host, rootfs, *binds)
                    started_at[host] = time.monotonic()
                    booting.append(host)
                time.sleep(0.05)
                for host in list(booting):
                    state = self._boot_state(host, offsets[host], started_at[host], timeout)
                    if state is None:
                        continue
                    booting.remove(host)
                    if state == "ready":
                        logins.append((host, pool.submit(self._login, host, host.name in fresh, login_timeout)))
                    else:
                        failed[host] = ("boot", state)
            for host, future in logins:
                why = future.result()
                if why is not None:
                    failed[host] = ("login", why)
        return failed

    def _boot_state(self, host: LabHost, offset: int, started: float, timeout: float) -> str | None:
        """None while the host boots; "ready" once its startup finished; else why it will not boot."""
        h = self.layout.host_dir(host.name)
        log = h / "host.log"
        if (h / "ready").exists():
            # Its startup finished; one that ran out of a kernel resource on the way is not a sound host.
            exhausted = bootlog.fatal(_read_from(log, offset))
            return "ready" if exhausted is None else f"booted, but ran short: {exhausted} (see {log})"
        text = ""
        gone = container.supervisor_pid(self.layout, host) is None
        waited = time.monotonic() - started
        if gone or waited > timeout or waited > FATAL_GRACE:
            text = _read_from(log, offset)
        if gone:
            why = bootlog.reason(text) or "its supervisor exited and left no log line"
            return f"did not boot: {why} (see {log})"
        if waited > timeout:
            why = bootlog.reason(text) or "no log line"
            return f"did not boot within {timeout:.0f} s: {why} (see {log})"
        if waited > FATAL_GRACE and bootlog.fatal(text):
            return f"did not boot: {bootlog.reason(text)} (see {log})"
        return None

    def _login(self, host: LabHost, fresh: bool, timeout: float) -> str | None:
        """One login with the lab's key, checked against the host's own key; on a host just installed,
        until its first generation's services are active. None when it works, else why not."""
        command = "systemctl is-active --quiet ollama.service comfyui.service" if fresh else "true"
        deadline = time.monotonic() + timeout
        last, services = "no answer", False
        while time.monotonic() < deadline:
            try:
                got = self.ssh(host.name, command, timeout=max(5.0, min(60.0, deadline - time.monotonic())),
                               check=False)
            except CommandFailed as exc:  # this attempt timed out: a loaded machine, try again
                last = str(exc)
                continue
            if got.ok:
                return None
            services = got.returncode != 255  # logged in, the units are not active (yet)
            last = (got.stderr.strip().splitlines() or [f"exit {got.returncode}"])[-1]
            time.sleep(0.2)
        if services:
            return (f"booted, but ollama.service, comfyui.service did not start; "
                    f"see `ipex-fleet lab exec {host.name} -- journalctl -b`")
        return f"booted, but SSH to {host.address}:22 did not work: {last}"

    def _power_off(self, hosts: list[LabHost], kill: bool = False) -> None:
        """Stop these hosts (cleanly, or at once with kill) and wait until they are gone."""
        if not hosts:
            return
        spec = self.spec
        pids = [p for h in hosts if (p := container.stop(self.layout, spec, h)) is not None]
        if kill:
            for host in hosts:
                container.kill_all(spec, host)
        if container.wait_gone(pids, timeout=5 if kill else 20):
            for host in hosts:
                container.kill_all(spec, host)
            container.wait_gone(pids, timeout=10)

    def down(self) -> None:
        """Power every host off cleanly; their disks (stores, profiles, journals) stay for the next `up`."""
        spec = read_spec(self.layout)
        if spec is None:
            return
        pids = [p for h in spec.hosts if (p := container.stop(self.layout, spec, h)) is not None]
        cache = self._cache_pid()
        if cache is not None:
            os.kill(cache, signal.SIGTERM)
            pids.append(cache)
        if container.wait_gone(pids, timeout=20):
            for host in spec.hosts:  # a host that would not power off is killed
                container.kill_all(spec, host)
            container.wait_gone(pids, timeout=10)
        container.remove_cgroups(spec, spec.hosts)
        for host in spec.hosts:  # nspawn leaves these behind (LAB.md)
            propagate = Path("/run/systemd/nspawn/propagate") / container.machine_name(spec, host)
            try:
                propagate.rmdir()
            except OSError:
                pass
        faults.delete_table(spec)

    def destroy(self) -> None:
        """Stop every host and remove the lab: processes, mounts, cgroups, nftables table, directories.

        The cached root filesystem (shared by every lab on the machine) stays."""
        spec = read_spec(self.layout)
        if spec is not None:
            self.down()
        if self.layout.root.exists():
            remove_tree(self.layout.root)

    def status(self) -> list[HostStatus]:
        spec = self.spec
        cut = faults.cut_addresses(spec)
        isolated = faults.isolated_cgroups(spec)
        out = []
        for host in spec.hosts:
            init = container.init_pid(spec, host)
            state = "stopped" if init is None else ("frozen" if container.is_frozen(spec, host) else "running")
            fault = cut.get(host.address) or (
                "isolated" if container.nft_host_cgroup_path(spec, host)[0] in isolated else None)
            out.append(HostStatus(host.name, host.address, state, fault,
                                  self._generation_number(host),
                                  knobs.read_settings(self.layout.host_settings(host.name))))
        return out

    def leaks(self) -> dict[str, int]:
        """Packets from the lab's hosts to any address off loopback, dropped and counted (must stay 0)."""
        return faults.leak_counter(self.spec)

    # -- faults ----------------------------------------------------------------------------

    def cut(self, name: str, how: str = "drop") -> None:
        spec = self.spec
        faults.cut(spec, spec.host(name).address, how)

    def heal(self, name: str) -> None:
        """Undo `cut` and `isolate`."""
        spec = self.spec
        host = spec.host(name)
        faults.heal(spec, host.address)
        faults.unisolate(spec, container.nft_host_cgroup_path(spec, host)[0])

    def isolate(self, name: str) -> None:
        """The host reaches no address but its own (nftables on its cgroup); SSH to it still works."""
        self._running(name)
        spec = self.spec
        host = spec.host(name)
        cgroup, level = container.nft_host_cgroup_path(spec, host)
        faults.isolate(spec, cgroup, level, host.address)

    def freeze(self, name: str) -> None:
        self._running(name)
        container.set_frozen(self.spec, self.spec.host(name), True)

    def thaw(self, name: str) -> None:
        self._running(name)
        container.set_frozen(self.spec, self.spec.host(name), False)

    def reboot(self, name: str, wait: bool = True, timeout: float = 60) -> None:
        """A clean reboot (systemd's reboot.target); with `wait`, until sshd answers with a new boot id."""
        spec, host = self.spec, self._running(name)
        before = self.boot_id(name)
        container.reboot(spec, host)
        if wait:
            self._wait_new_boot(name, before, timeout)

    def crash(self, name: str, wait: bool = True, timeout: float = 60) -> None:
        """A hard kill of everything in the host, then a fresh boot (a machine's reset button)."""
        spec, host = self.spec, self._running(name)
        before = self.boot_id(name)
        container.crash(self.layout, spec, host)
        if wait:
            self._wait_new_boot(name, before, timeout)

    def boot_id(self, name: str) -> str | None:
        got = self.ssh(name, "cat /proc/sys/kernel/random/boot_id", timeout=10, check=False)
        return got.stdout.strip() if got.ok else None

    def _wait_new_boot(self, name: str, before: str | None, timeout: float) -> None:
        def booted_anew() -> bool:
            now = self.boot_id(name)
            return bool(now) and now != before

        if wait_until(booted_anew, timeout, f"{name}'s new boot", interval=0.1):
            return
        raise UserError(f"{name} did not come back with a new boot within {timeout:g}s; "
                        f"see {self.layout.host_dir(name) / 'host.log'}")

    def _running(self, name: str) -> LabHost:
        host = self.spec.host(name)
        if container.init_pid(self.spec, host) is None:
            raise UserError(f"{name} is not running; start it with: ipex-fleet lab up")
        return host

    # -- commands on hosts -----------------------------------------------------------------

    def ssh_argv(self, name: str, command: str) -> list[str]:
        self.spec.host(name)
        return ["ssh", "-F", str(self.layout.ssh_config), name, command]

    def ssh(self, name: str, command: str, *, timeout: float = 120, check: bool = True) -> Completed:
        return run(self.ssh_argv(name, command), timeout=timeout, check=check)

    def exec(self, name: str, argv: list[str], timeout: float = 600) -> int:
        if not argv:
            raise UserError("lab exec HOST -- CMD: give a command after --")
        return run_attached(self.ssh_argv(name, shlex.join(argv)), timeout=timeout)

    def config(self, name: str, assignments: list[str]) -> dict:
        host = self.spec.host(name)
        parsed = [knobs.parse_assignment(a) for a in assignments]
        path = self.layout.host_settings(host.name)
        before = knobs.read_settings(path)
        settings = knobs.apply(before, parsed)
        knobs.write_settings(path, settings)
        if settings.get("gpu") != before.get("gpu"):  # a host copies its devices at boot: seen from the next one
            hardware.write(self.layout.shared_dir, host.name, settings.get("gpu"))
        return settings

    # -- internals -------------------------------------------------------------------------

    def _binds(self) -> tuple[list[str], list[str]]:
        """What hosts see of the controller: this package's environment, read-only, where the
        generation names it (as a NixOS host sees its store); and the lab's shared directory."""
        return _host_binds_ro(), [str(self.layout.shared_dir)]

    def _install_flake(self, spec: LabSpec) -> bool:
        """The lab's flake: its input served by the lab (URL written in), the package source and the
        controller's Python it builds with, and each host's settings. True when the input was released
        anew (its source changed): the lock must then follow it."""
        import ipex_fleet

        dest = self.layout.flake_dir
        (dest / "hosts").mkdir(parents=True, exist_ok=True)
        url, released = self._serve_labpkgs(spec)
        for src in FLAKE_SOURCE.rglob("*"):
            if "__pycache__" in src.parts or src.is_dir():
                continue
            data = src.read_bytes().replace(LABPKGS_URL_MARK.encode(), url.encode())
            _write_if_changed(dest / src.relative_to(FLAKE_SOURCE), data)
        _write_if_changed(dest / "controller.json", json.dumps({
            "python": host_python(),
            "node_exporter": NODE_EXPORTER if os.path.exists(NODE_EXPORTER) else None}, indent=1).encode() + b"\n")
        package = Path(ipex_fleet.__file__).resolve().parent
        _write_if_changed(dest / "push.json", json.dumps({
            "comment": "Pushed inside the flake, so that it is self-contained: the package's source.",
            "include": {"_source/src/ipex_fleet": str(package)}}, indent=1).encode() + b"\n")
        for host in spec.hosts:
            path = self.layout.host_settings(host.name)
            settings = knobs.read_settings(path) or dict(knobs.DEFAULTS)
            if settings.get("address") != host.address:
                settings["address"] = host.address
                knobs.write_settings(path, settings)
        return released

    def _serve_labpkgs(self, spec: LabSpec) -> tuple[str, bool]:
        """The lab's input, served as a channel: one URL whose content moves with each release (as
        nixpkgs' channels do). `lab up` releases the source when it changed; `lab release` bumps it.
        Returns the URL, and whether `up` released it."""
        changed = self._release_state().get("source") != flake_hash(str(LABPKGS_SOURCE))
        if changed or not self._channel().exists():
            self.release()
        address, port = spec.cache_address
        return f"http://{address}:{port}/inputs/{self._channel().name}", changed

    def _channel(self) -> Path:
        return self.layout.cache_dir / "inputs" / "labpkgs.tar.gz"

    def _release_state(self) -> dict:
        try:
            return json.loads((self.layout.cache_dir / "inputs" / "release.json").read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> int:
        """A new release of the lab's input on its channel (what `ipex-fleet update` then locks)."""
        number = int(self._release_state().get("release", 0)) + 1
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "labpkgs"
            shutil.copytree(LABPKGS_SOURCE, tree, ignore=shutil.ignore_patterns("__pycache__"))
            (tree / "RELEASE").write_text(f"{number}\n")
            data = flake_tarball(str(tree), prefix="labpkgs")
        channel = self._channel()
        channel.parent.mkdir(parents=True, exist_ok=True)
        tmp_file = channel.with_suffix(".tmp")
        tmp_file.write_bytes(data)
        os.replace(tmp_file, channel)  # the server never serves half a release
        (channel.parent / "release.json").write_text(json.dumps(
            {"release": number, "source": flake_hash(str(LABPKGS_SOURCE))}) + "\n")
        return number

    def _lock_flake(self, update: bool = False) -> None:
        """Lock the lab flake on the controller, which fetches its input from the lab and holds it
        (updating the input when `lab up` released a changed source)."""
        env = {"NIX_CONF_DIR": str(self.layout.nix_conf_dir)}
        extra = ["--update-input", "labpkgs"] if update and (self.layout.flake_dir / "flake.lock").exists() else []
        try:
            run(["nix", "--extra-experimental-features", "nix-command flakes", "flake", "lock", *extra,
                 f"path:{self.layout.flake_dir}"], timeout=120, env=env)
        except CommandFailed as exc:
            raise UserError(f"locking the lab flake failed ({exc}); see {self.layout.root}/cache.log") from None

    def _cache_pid(self) -> int | None:
        pid_file = self.layout.root / "cache.pid"
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"http.server" in cmdline else None

    def _start_cache(self, spec: LabSpec) -> None:
        """A real HTTP server on loopback serving the lab's binary cache, and its signing key."""
        from ipex_fleet.nix.cache import generate_key

        secret, public = self.layout.cache_keys
        secret.parent.mkdir(parents=True, exist_ok=True)
        generate_key(f"ipex-fleet-lab-{spec.net}", str(secret), str(public))
        self.layout.cache_dir.mkdir(parents=True, exist_ok=True)
        if self._cache_pid() is not None:
            return
        address, port = spec.cache_address
        log = open(self.layout.root / "cache.log", "ab")
        proc = subprocess.Popen(["/usr/bin/python3", "-m", "http.server", "--bind", address, "--directory",
                                 str(self.layout.cache_dir), str(port)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
        (self.layout.root / "cache.pid").write_text(f"{proc.pid}\n")
        def listening() -> bool:
            try:
                socket.create_connection((address, port), timeout=0.5).close()
                return True
            except OSError:
                return False

        if wait_until(listening, 10, "the lab's cache server", interval=0.05):
            return
        raise UserError(f"the lab's cache server did not start on {address}:{port}; see {self.layout.root}/cache.log")

    def _prepare_host(self, spec: LabSpec, host: LabHost) -> None:
        """Write the host's own files into its overlay while it is stopped: identity, sshd, stage 2."""
        upper = self.layout.host_dir(host.name) / "upper"
        etc = upper / "etc"
        (etc / "ipex-fleet").mkdir(parents=True, exist_ok=True)
        (etc / "hostname").write_text(host.name + "\n")
        machine_id = etc / "machine-id"
        if not machine_id.exists() or not machine_id.read_text().strip():
            machine_id.write_text(uuid.uuid4().hex + "\n")
        if not (etc / "os-release").is_symlink() and not (etc / "os-release").exists():  # a generation links it
            (etc / "os-release").write_text('NAME=NixOS\nID=nixos\nPRETTY_NAME="NixOS (ipex-fleet lab)"\n')
        sshmaterial.write_host_side(self.layout, host)
        lib = upper / "usr" / "local" / "lib" / "ipex-fleet-lab"
        lib.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(GUEST_SOURCE / "lab-boot.py", lib / "lab-boot.py")
        # The hardware the host shows (knob gpu) and NixOS' nixos-generate-config, for enroll.
        shutil.copyfile(GUEST_SOURCE / "lab-hardware.py", lib / "lab-hardware.py")
        (etc / "ipex-fleet-lab").mkdir(parents=True, exist_ok=True)
        (etc / "ipex-fleet-lab" / "hardware-dir").write_text(f"{hardware.tree(self.layout.shared_dir, host.name)}\n")
        hardware.write(self.layout.shared_dir, host.name,
                       knobs.read_settings(self.layout.host_settings(host.name)).get("gpu"))
        sbin = upper / "usr" / "local" / "bin"
        sbin.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(GUEST_SOURCE / "nixos-generate-config", sbin / "nixos-generate-config")
        os.chmod(sbin / "nixos-generate-config", 0o755)
        units = etc / "systemd" / "system"
        for unit, wanted_by in (("lab-hardware.service", "sysinit.target.wants"),
                                ("lab-stage2.service", "multi-user.target.wants"),
                                ("lab-bless-boot.service", "multi-user.target.wants"),
                                ("lab-boot-check.service", "boot-complete.target.requires")):
            (units / wanted_by).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(GUEST_SOURCE / unit, units / unit)
            link = units / wanted_by / unit
            if not link.is_symlink():
                link.symlink_to(f"/etc/systemd/system/{unit}")
        # The console is host.log (nspawn --console=read-only): PID 1's own lines, its status lines of
        # failed units only, and every message of priority err or worse once journald runs (bootlog).
        for conf, text in (("journald.conf.d", bootlog.JOURNALD_CONSOLE), ("system.conf.d", bootlog.SYSTEM_CONSOLE)):
            (etc / "systemd" / conf).mkdir(parents=True, exist_ok=True)
            (etc / "systemd" / conf / "50-lab-console.conf").write_text(text)
        # pam_env reads it at every login, and logs an error when Debian's minbase has none.
        (etc / "default").mkdir(parents=True, exist_ok=True)
        if not (etc / "default" / "locale").exists():
            (etc / "default" / "locale").write_text("")
        generators = etc / "systemd" / "system-generators"
        generators.mkdir(parents=True, exist_ok=True)
        for name in IDLE_GENERATORS:
            if not (generators / name).is_symlink():
                (generators / name).symlink_to("/dev/null")
        if spec.deploy_user:
            self._add_deploy_user(upper, spec.deploy_user)

    def _add_deploy_user(self, upper: Path, user: str) -> None:
        """A non-root user that logs in with the lab's key and uses sudo, as many real fleets do.

        Written as the files useradd would write, into the stopped host's overlay."""
        etc = upper / "etc"
        lower = template.template_dir() / "etc"
        for name, line in (("passwd", f"{user}:x:1500:1500:ipex-fleet deploy user:/home/{user}:/bin/bash\n"),
                           ("group", f"{user}:x:1500:\n"), ("shadow", f"{user}:!:19000:0:99999:7:::\n")):
            path = etc / name
            text = path.read_text() if path.exists() else (lower / name).read_text()
            if not any(l.split(":")[0] == user for l in text.splitlines()):
                path.write_text(text + line)
                os.chmod(path, 0o640 if name == "shadow" else 0o644)
        (etc / "sudoers.d").mkdir(parents=True, exist_ok=True)
        sudoers = etc / "sudoers.d" / "ipex-fleet-deploy"
        sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD: ALL\n")
        os.chmod(sudoers, 0o440)
        ssh_dir = upper / "home" / user / ".ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(self.layout.authorized_keys.read_text())
        for path in (ssh_dir.parent, ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, 1500, 1500)
        os.chmod(ssh_dir, 0o700)

    def _generation_number(self, host: LabHost) -> int | None:
        link = self.layout.host_dir(host.name) / "upper" / SYSTEM_PROFILE.lstrip("/")
        try:
            target = os.readlink(link)
        except OSError:
            return None
        parsed = nixcmd.parse_profile_state([f"current {target}"])
        return parsed.current


def remove_tree(root: Path, workers: int = 16) -> None:
    """shutil.rmtree, with the unlinks and rmdirs of each level in threads. On this machine's ext4
    (mounted with `discard`) one unlink takes about 2 ms, in parallel far less: the 11,000 files of a
    40-host lab went in 1.5 s instead of 30."""
    files: list[str] = []
    levels: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        levels.setdefault(dirpath.count(os.sep), []).append(dirpath)
        files += [os.path.join(dirpath, f) for f in filenames]
        for name in list(dirnames):  # a symlink to a directory is removed as a file
            if os.path.islink(os.path.join(dirpath, name)):
                files.append(os.path.join(dirpath, name))
                dirnames.remove(name)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(os.unlink, files, chunksize=32))
        for depth in sorted(levels, reverse=True):
            list(pool.map(os.rmdir, levels[depth], chunksize=8))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _write_if_changed(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
