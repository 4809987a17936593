#!/usr/bin/python3 -u
"""switch-to-configuration for ipex-fleet lab generations: NixOS activation, emulated.

What it does, as NixOS's does: stop the old generation's services, run the activation
(link the generation's /etc files), point /run/current-system at the generation, start
the new generation's services. Exit codes follow NixOS: 1 usage, 2 activation script
failed, 4 units failed, 100 reboot required.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

TOPLEVEL = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
ACTIONS = ("switch", "boot", "test", "dry-activate")
SERVICES_RUN = "/run/lab-services"
BOOT_ENTRY = "/var/lib/lab-boot/default"
SERVICE_PORTS = {"ollama": 11434, "comfyui": 8188}


def atomic_symlink(target, link):
    tmp = f"{link}.tmp-{os.getpid()}"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def load_settings():
    with open(os.path.join(TOPLEVEL, "settings.json")) as f:
        return json.load(f)


def service_argv(name, settings):
    script = os.path.join(TOPLEVEL, "share", "services", f"{name}.py")
    if name == "cpu-hog":
        return ["/usr/bin/python3", script, "--seconds", "300"]
    argv = ["/usr/bin/python3", script, "--host", settings["address"],
            "--port", str(SERVICE_PORTS[name]), "--state", f"/var/lib/{name}"]
    if settings.get("fail_service") == name:
        argv.append("--fail-start")
    return argv


def services_of(settings):
    return [*SERVICE_PORTS, *(["cpu-hog"] if settings.get("cpu_hog") else [])]


def generation_environment():
    env = dict(os.environ)
    try:
        with open(os.path.join(TOPLEVEL, "etc", "ipex-fleet", "environment")) as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep:
                    env[key] = value
    except FileNotFoundError:
        pass
    return env


def stop_services():
    if not os.path.isdir(SERVICES_RUN):
        return
    for entry in sorted(os.listdir(SERVICES_RUN)):
        if not entry.endswith(".pid"):
            continue
        path = os.path.join(SERVICES_RUN, entry)
        with open(path) as f:
            pid = int(f.read().strip() or 0)
        if pid:
            stop_pid(pid)
        os.unlink(path)
        print(f"stopping the following units: {entry[:-4]}.service")


def stop_pid(pid):
    """Stop a service's whole process group (each service leads its own session)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_services(settings):
    """Start every service, then wait for each to listen; return the names that failed."""
    os.makedirs(SERVICES_RUN, exist_ok=True)
    started = {}
    env = generation_environment()
    for name in services_of(settings):
        os.makedirs(f"/var/lib/{name}", exist_ok=True)
        log = open(f"/var/lib/{name}/service.log", "ab")
        proc = subprocess.Popen(service_argv(name, settings), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, env=env)
        with open(os.path.join(SERVICES_RUN, f"{name}.pid"), "w") as f:
            f.write(str(proc.pid))
        started[name] = proc
        print(f"starting the following units: {name}.service")
    failed = []
    for name, proc in started.items():
        if name in SERVICE_PORTS and not wait_listening(proc, settings["address"], SERVICE_PORTS[name], timeout=10):
            failed.append(f"{name}.service")
    return failed


def wait_listening(proc, address, port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def set_ssh_lock(address, locked):
    """Lab fault lock_ssh: this generation's "network config" drops SSH to the host, as a broken
    firewall or sshd configuration would. Any other generation's activation lifts it."""
    table = "ipexfleet_lock_" + address.replace(".", "_")
    subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
    if locked:
        rules = (f"table inet {table} {{\n  chain input {{\n    type filter hook input priority -1; policy accept;\n"
                 f"    ip daddr {address} tcp dport 22 drop\n  }}\n}}\n")
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        print("applying the firewall configuration")


def install_etc():
    """Link the generation's etc/ tree into /etc through /etc/static, as NixOS does."""
    etc_src = os.path.join(TOPLEVEL, "etc")
    atomic_symlink(etc_src, "/etc/static")
    for dirpath, _dirs, files in os.walk(etc_src):
        rel_dir = os.path.relpath(dirpath, etc_src)
        for name in files:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            target = os.path.join("/etc", rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            atomic_symlink(os.path.join("/etc/static", rel), target)


def main(argv):
    if len(argv) != 2 or argv[1] not in ACTIONS:
        print(f"Usage: {argv[0]} [{'|'.join(ACTIONS)}]", file=sys.stderr)
        return 1
    action = argv[1]
    settings = load_settings()
    if action == "dry-activate":
        print(f"would activate the configuration {TOPLEVEL}")
        print("would restart the following units: " + ", ".join(f"{n}.service" for n in SERVICE_PORTS))
        return 0
    if action in ("switch", "boot"):
        os.makedirs(os.path.dirname(BOOT_ENTRY), exist_ok=True)
        atomic_symlink(TOPLEVEL, BOOT_ENTRY)
        print("updating the boot loader entry")
    if action == "boot":
        return 0
    stop_services()
    print("activating the configuration...")
    if settings.get("fail_activation"):
        print("Activation script snippet 'lab-fail-activation' failed (1)", file=sys.stderr)
        return 2
    install_etc()
    atomic_symlink(TOPLEVEL, "/run/current-system")
    failed = start_services(settings)
    set_ssh_lock(settings["address"], bool(settings.get("lock_ssh")))
    if failed:
        print("warning: the following units failed: " + ", ".join(failed), file=sys.stderr)
        return 4
    if settings.get("reboot_required"):
        print("a reboot is required to activate the new kernel")
        return 100
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
