"""`ipex-fleet lab ...`: bring a lab fleet up and down, inject faults, run commands on hosts."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..domain import SYSTEM_PROFILE, Action
from ..errors import CommandFailed, UserError
from ..nix import commands as nixcmd
from ..runner import Completed, run, run_attached
from . import faults, knobs, namespaces, sshmaterial
from .layout import DEFAULT_NET, LabHost, LabLayout, LabSpec, check_net, read_spec, write_spec

FLAKE_SOURCE = Path(__file__).parent / "flake"
NIX_CONF = (
    "experimental-features = nix-command flakes\n"
    "sandbox = false\n"
    "substituters =\n"
    "build-users-group =\n"
)
# tool -> Debian package that provides it
REQUIRED_TOOLS = {
    "nix": "nix-bin",
    "nix-env": "nix-bin",
    "/usr/sbin/sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nft": "nftables",
    "unshare": "util-linux",
    "setsid": "util-linux",
}


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    state: str  # running | stopped | frozen
    cut: str | None
    generation: int | None
    settings: dict


def _missing_tools() -> dict[str, str]:
    return {t: p for t, p in REQUIRED_TOOLS.items() if not (os.path.exists(t) if t.startswith("/") else shutil.which(t))}


def ensure_requirements() -> None:
    """Install nix-bin, openssh-server and nftables when missing, or say in one line what to do."""
    if os.geteuid() != 0:
        raise UserError("the lab needs root (namespaces, mounts, nftables); run it as root")
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

    def up(self, count: int, net: str | None = None) -> list[str]:
        """Start hosts 1..count (those already running are left alone) and bootstrap them."""
        if not 1 <= count <= 253:
            raise UserError(f"lab up {count}: the lab holds 1 to 253 hosts (.254 serves its binary cache)")
        existing = read_spec(self.layout)
        net = check_net(net or (existing.net if existing else DEFAULT_NET))
        if existing and existing.net != net:
            raise UserError(f"the lab at {self.layout.root} uses {existing.net}; "
                            f"run `ipex-fleet lab destroy` first to change --net")
        ensure_requirements()
        spec = LabSpec(net=net, count=max(count, existing.count if existing else 0))
        write_spec(self.layout, spec)
        self._install_flake(spec)
        self.layout.nix_conf_dir.mkdir(parents=True, exist_ok=True)
        (self.layout.nix_conf_dir / "nix.conf").write_text(NIX_CONF)
        wanted = spec.hosts[:count]
        for host in wanted:
            self._prepare_host_dirs(host)
        sshmaterial.write_client_side(self.layout, spec)
        started = []
        for host in wanted:
            if namespaces.unshare_pid(self.layout, host) is None:
                namespaces.start(self.layout, host)
                started.append(host)
        for host in wanted:
            self._wait_listening(host, timeout=15)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self._bootstrap, wanted))
        self._start_cache(spec)
        return [h.name for h in started]

    def down(self) -> None:
        """Stop every host; their disks (stores, profiles) stay for the next `up`."""
        spec = read_spec(self.layout)
        if spec is None:
            return
        pids = [p for h in spec.hosts if (p := namespaces.signal_stop(self.layout, h)) is not None]
        cache = self._cache_pid()
        if cache is not None:
            os.kill(cache, signal.SIGTERM)
            pids.append(cache)
        namespaces.wait_gone(pids, timeout=10)
        faults.delete_table(spec)

    def destroy(self) -> None:
        """Stop every host and remove the lab: processes, nftables table, directories."""
        spec = read_spec(self.layout)
        if spec is not None:
            self.down()
        if self.layout.root.exists():
            shutil.rmtree(self.layout.root)

    def status(self) -> list[HostStatus]:
        spec = self.spec
        cut = faults.cut_addresses(spec)
        out = []
        for host in spec.hosts:
            init = namespaces.init_pid(self.layout, host)
            state = "stopped" if init is None else ("frozen" if _is_stopped(init) else "running")
            out.append(HostStatus(host.name, host.address, state, cut.get(host.address),
                                  self._generation_number(host),
                                  knobs.read_settings(self.layout.host_settings(host.name))))
        return out

    # -- faults ----------------------------------------------------------------------------

    def cut(self, name: str, how: str = "drop") -> None:
        spec = self.spec
        faults.cut(spec, spec.host(name).address, how)

    def heal(self, name: str) -> None:
        spec = self.spec
        faults.heal(spec, spec.host(name).address)

    def freeze(self, name: str) -> None:
        self._signal_all(name, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        self._signal_all(name, signal.SIGCONT)

    def _signal_all(self, name: str, sig: int) -> None:
        host = self.spec.host(name)
        pids = namespaces.namespace_pids(self.layout, host)
        if not pids:
            raise UserError(f"{name} is not running; start it with: ipex-fleet lab up")
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

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
        settings = knobs.apply(knobs.read_settings(path), parsed)
        knobs.write_settings(path, settings)
        return settings

    # -- internals -------------------------------------------------------------------------

    def _install_flake(self, spec: LabSpec) -> None:
        dest = self.layout.flake_dir
        (dest / "hosts").mkdir(parents=True, exist_ok=True)
        for src in FLAKE_SOURCE.rglob("*"):
            if "__pycache__" in src.parts or src.is_dir():
                continue
            target = dest / src.relative_to(FLAKE_SOURCE)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.read_bytes() != src.read_bytes():
                shutil.copyfile(src, target)
        for host in spec.hosts:
            path = self.layout.host_settings(host.name)
            settings = knobs.read_settings(path) or dict(knobs.DEFAULTS)
            if settings.get("address") != host.address:
                settings["address"] = host.address
                knobs.write_settings(path, settings)

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
        from ..cache import generate_key

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
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((address, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise UserError(f"the lab's cache server did not start on {address}:{port}; see {self.layout.root}/cache.log")

    def _prepare_host_dirs(self, host: LabHost) -> None:
        h = self.layout.host_dir(host.name)
        for sub in namespaces.HOST_DIRS:
            (h / sub).mkdir(parents=True, exist_ok=True)
        upper = h / "etc-upper"
        if namespaces.unshare_pid(self.layout, host) is None:
            # Only while the host is stopped: a running host's /etc is written through the host.
            (upper / "nix").mkdir(exist_ok=True)
            (upper / "nix" / "nix.conf").write_text(NIX_CONF)
            (upper / "hostname").write_text(host.name + "\n")
            if not (upper / "os-release").exists():
                (upper / "os-release").write_text('NAME=NixOS\nID=nixos\nPRETTY_NAME="NixOS (ipex-fleet lab)"\n')
            (upper / "ipex-fleet").mkdir(exist_ok=True)
        sshmaterial.write_host_side(self.layout, host)

    def _wait_listening(self, host: LabHost, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host.address, 22), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        log = self.layout.host_dir(host.name) / "host.log"
        tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        raise UserError(f"{host.name}: sshd did not start on {host.address}:22 "
                        f"({tail[0] if tail else 'no log'}); see {log}")

    def _generation_number(self, host: LabHost) -> int | None:
        link = self.layout.host_dir(host.name) / "nix" / SYSTEM_PROFILE.removeprefix("/nix/")
        try:
            target = os.readlink(link)
        except OSError:
            return None
        parsed = nixcmd.parse_profile_state([f"current {target}"])
        return parsed.current

    def _bootstrap(self, host: LabHost) -> None:
        """Give a new host its first generation, as an installed NixOS has one."""
        if self._generation_number(host) is not None:
            return
        flake = f"path:{self.layout.flake_dir}"
        built = self.ssh(host.name, nixcmd.build_toplevel(flake, host.name), timeout=300)
        path = nixcmd.parse_build_output(built.stdout)
        self.ssh(host.name, f"{nixcmd.set_profile(SYSTEM_PROFILE, path)} && "
                            f"{nixcmd.activate(path, Action.SWITCH)}", timeout=120)


def _is_stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except (FileNotFoundError, IndexError):
        return False
