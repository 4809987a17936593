"""The lab at scale: `lab up` raises the kernel limits its hosts need and says so, and a host that
does not boot fails `lab up` with one line that quotes why (its host.log's line, not its last).

The 40- and 100-host figures are in benchmarks/lab_scale.py, not here: on 2 cores they take minutes.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ipex_fleet.common.errors import UserError
from ipex_fleet.lab import Lab, bootlog, container, limits

from .conftest import BIN, destroy_checked, lab_available, skip_or_fail

# Real host.log excerpts (nspawn --console=read-only), ANSI escapes and the pty's \r kept.
# host10 of a lab started with fs.inotify.max_user_instances a few above what was in use: its
# systemd could not allocate its manager, and exited at once.
HOST10 = """\
Spawning container lab-127-0-61-host10 on /srv/ipex-fleet-scale-b/hosts/host10/rootfs.
Press ^] three times within 1s to kill container.
Some capabilities will not be set because they are not in the current bounding set.
systemd 252.39-1~deb12u2 running in system mode (+PAM +AUDIT +SELINUX +APPARMOR +IMA +SMACK +SECCOMP +GCRYPT -GNUTLS +OPENSSL +ACL +BLKID +CURL +ELFUTILS +FIDO2 +IDN2 -IDN +IPTC +KMOD +LIBCRYPTSETUP +LIBFDISK +PCRE2 -PWQUALITY +P11KIT +QRENCODE +TPM2 +BZIP2 +LZ4 +XZ +ZLIB +ZSTD -BPF_FRAMEWORK -XKBCOMMON +UTMP +SYSVINIT default-hierarchy=unified)\r\r
Detected virtualization systemd-nspawn.\r\r
Detected architecture x86-64.\r\r
\x1b[0;1;31mFailed to create symlink /sys/fs/cgroup/cpuacct: File exists\x1b[0m\r\r
\x1b[0;1;31mFailed to create symlink /sys/fs/cgroup/cpu: File exists\x1b[0m\r\r
\x1b[0;1;31mFailed to create symlink /sys/fs/cgroup/net_cls: Read-only file system\x1b[0m\r\r
\x1b[0;1;31mFailed to create symlink /sys/fs/cgroup/net_prio: Read-only file system\x1b[0m\r\r
\x1b[0;1;31mFailed to create control group inotify object: Too many open files\x1b[0m\r\r
\x1b[0;1;31mFailed to allocate manager object: Too many open files\x1b[0m\r\r
[\x1b[0;1;31m!!!!!!\x1b[0m] Failed to allocate manager object.\r\r
\x1b[0;1;31mExiting PID 1...\x1b[0m\r\r
Container lab-127-0-61-host10 failed with error code 255.
Attempted to remove disk file system under "/run/systemd/nspawn/propagate/lab-127-0-61-host10", and we can't allow that.
supervisor: nspawn exited 255
"""

# host9 of the same `lab up`, a moment earlier: its systemd got its manager, then ran out on the way
# (units failed with result 'resources'); it reached the end of its startup, degraded. Its first 30
# lines and 3 of the journal's lines forwarded to the console.
HOST9 = """\
Spawning container lab-127-0-61-host9 on /srv/ipex-fleet-scale-b/hosts/host9/rootfs.
Press ^] three times within 1s to kill container.
Some capabilities will not be set because they are not in the current bounding set.
systemd 252.39-1~deb12u2 running in system mode (+PAM +AUDIT +SELINUX +APPARMOR +IMA +SMACK +SECCOMP +GCRYPT -GNUTLS +OPENSSL +ACL +BLKID +CURL +ELFUTILS +FIDO2 +IDN2 -IDN +IPTC +KMOD +LIBCRYPTSETUP +LIBFDISK +PCRE2 -PWQUALITY +P11KIT +QRENCODE +TPM2 +BZIP2 +LZ4 +XZ +ZLIB +ZSTD -BPF_FRAMEWORK -XKBCOMMON +UTMP +SYSVINIT default-hierarchy=unified)\r\r
Detected virtualization systemd-nspawn.\r\r
Detected architecture x86-64.\r\r
\x1b[0;1;31mFailed to create symlink /sys/fs/cgroup/net_cls: Read-only file system\x1b[0m\r\r
\x1b[0;1;31mFailed to create symlink /sys/fs/cgroup/net_prio: Read-only file system\x1b[0m\r\r
\x1b[0;1;31mFailed to create symlink /sys/fs/cgroup/cpuacct: File exists\x1b[0m\r\r
\x1b[0;1;31mFailed to create symlink /sys/fs/cgroup/cpu: File exists\x1b[0m\r\r
\x1b[0;1;31mFailed to set priority of timezone change event sources: Too many open files\x1b[0m\r\r
Queued start job for default target graphical.target.\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
\x1b[0;1;31mFailed to allocate inotify fd: Too many open files\x1b[0m\r\r
\x1b[0;1;38;5;185msystemd-ask-password-console.path: Failed to enter waiting state: Too many open files\x1b[0m\r\r
\x1b[0;1;38;5;185msystemd-ask-password-console.path: Failed with result 'resources'.\x1b[0m\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
[\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39msystemd-as…quests to Console Directory Watch.\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
\x1b[0;1;31mFailed to allocate inotify fd: Too many open files\x1b[0m\r\r
\x1b[0;1;38;5;185msystemd-ask-password-wall.path: Failed to enter waiting state: Too many open files\x1b[0m\r\r
\x1b[0;1;38;5;185msystemd-ask-password-wall.path: Failed with result 'resources'.\x1b[0m\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
[\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39msystemd-as… Requests to Wall Directory Watch.\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
\x1b[0;1;31mFailed to create inotify object: Too many open files\x1b[0m\r\r
[ 2442.909683] systemd[1]: Failed to create inotify object: Too many open files\r
[ 2443.100186] systemd[1]: Failed to create inotify object: Too many open files\r
[ 2443.127664] systemd[1]: Failed to create inotify object: Too many open files\r
"""

# host2 of a lab whose overlay hides /usr/lib/systemd/systemd: nspawn finds no init.
EXECV = """\
Spawning container lab-127-0-61-host2 on /srv/ipex-fleet-scale-b/hosts/host2/rootfs.
Press ^] three times within 1s to kill container.
Some capabilities will not be set because they are not in the current bounding set.
Container lab-127-0-61-host2 failed with error code 1.
execv(/usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init) failed: No such file or directory\r\r
Attempted to remove disk file system under "/run/systemd/nspawn/propagate/lab-127-0-61-host2", and we can't allow that.
supervisor: nspawn exited 1
"""


def test_reason_is_pid_1s_fatal_line_not_the_last_line():
    assert bootlog.reason(HOST10) == "Failed to allocate manager object: Too many open files"
    assert HOST10.strip().splitlines()[-1] == "supervisor: nspawn exited 255"
    assert bootlog.fatal(HOST10) is not None


def test_reason_of_a_host_that_ran_short_on_the_way():
    why = bootlog.reason(HOST9)
    assert why is not None and why.endswith("Too many open files") and "\x1b" not in why
    assert bootlog.fatal(HOST9) is not None


def test_reason_of_a_host_with_no_init():
    assert bootlog.reason(EXECV) == ("execv(/usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init) failed: "
                                     "No such file or directory")
    assert bootlog.fatal(EXECV) is None  # not an exhausted resource: no early verdict while it boots


def test_reason_skips_what_every_boot_prints():
    # What the issue's `lab up` quoted (--console=passive then): nothing here says why.
    passive = ("Spawning container lab-127-0-10-host21 on /srv/ipex-fleet-lab/hosts/host21/rootfs.\n"
               "Press ^] three times within 1s to kill container.\n"
               "Some capabilities will not be set because they are not in the current bounding set.\n")
    assert bootlog.reason(passive) is None
    assert bootlog.reason(passive + "Container lab-127-0-10-host21 failed with error code 1.\n") == \
        "Container lab-127-0-10-host21 failed with error code 1."
    # A unit's failure, forwarded by journald, is an error; the cgroup symlinks are not.
    forwarded = HOST10.split("\n")[6] + "\n[   12.5] systemd[1]: Failed to start ssh.service - OpenBSD Secure Shell server.\n"
    assert bootlog.reason(forwarded) == "[   12.5] systemd[1]: Failed to start ssh.service - OpenBSD Secure Shell server."


def test_limits_scale_with_hosts_and_name_their_change():
    inotify = next(l for l in limits.LIMITS if l.key == "fs.inotify.max_user_instances")
    # Debian's default, 128, holds about 20 hosts (LAB.md); 40 and 100 need far more.
    assert inotify.needed(40) > 128 * 2 and inotify.needed(100) > inotify.needed(40)
    line = limits.describe(40, [limits.Change("fs.inotify.max_user_instances", 128, inotify.needed(40))])
    assert line == f"kernel limits raised for 40 lab host(s): fs.inotify.max_user_instances 128 -> {inotify.needed(40)}"
    assert "\n" not in line


def test_limits_are_raised_never_lowered(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "PROC_SYS", tmp_path)
    fake = (limits.Limit("fs.inotify.max_user_instances", 128, 64, ""), limits.Limit("kernel.pid_max", 4096, 256, ""))
    (tmp_path / "fs" / "inotify").mkdir(parents=True)
    (tmp_path / "kernel").mkdir()
    (tmp_path / "fs" / "inotify" / "max_user_instances").write_text("128\n")
    (tmp_path / "kernel" / "pid_max").write_text("4194304\n")
    changed = limits.ensure(10, fake)
    assert [str(c) for c in changed] == ["fs.inotify.max_user_instances 128 -> 768"]
    assert (tmp_path / "fs" / "inotify" / "max_user_instances").read_text() == "768\n"
    assert (tmp_path / "kernel" / "pid_max").read_text() == "4194304\n"  # above what 10 hosts need: kept
    assert limits.ensure(5, fake) == []  # fewer hosts: nothing lowered
    assert (tmp_path / "fs" / "inotify" / "max_user_instances").read_text() == "768\n"
    monkeypatch.setenv(limits.ENV, "keep")
    assert limits.ensure(100, fake) == []
    assert (tmp_path / "fs" / "inotify" / "max_user_instances").read_text() == "768\n"


def test_a_limit_that_cannot_be_raised_fails_in_one_line_before_any_host():
    # /proc/sys/fs/inode-nr is read-only, root included: it stands for a container's read-only /proc/sys.
    unwritable = (limits.Limit("fs.inode-nr", 10**12, 0, ""),)
    with pytest.raises(UserError) as err:
        limits.ensure(3, unwritable)
    message = str(err.value)
    assert "\n" not in message and "fs.inode-nr >= 1000000000000" in message
    assert "sysctl -w fs.inode-nr=1000000000000" in message and limits.ENV in message


# -- on real labs ----------------------------------------------------------------------------------
# Nets of their own (127.0.77-78), away from conftest's, which count up from 127.0.20.

@pytest.fixture
def scale_lab(request):
    reason = lab_available()
    if reason:
        skip_or_fail(reason)
    net = request.param
    lab = Lab(f"/srv/ipex-fleet-scale-test-{os.getpid()}-{net.rsplit('.', 1)[1]}")
    lab.destroy()
    yield lab, net
    destroy_checked(lab)


@pytest.mark.parametrize("scale_lab", ["127.0.77"], indirect=True)
def test_up_raises_a_limit_below_what_its_hosts_need_and_says_so(scale_lab):
    """fs.inotify.max_user_instances lowered to 32 (about 5 hosts' worth with Debian's default
    128, fewer than the machine uses already): `lab up 3` raises it before any host starts, in one
    line, and every host boots clean. The low value lives only until `up` raises it (milliseconds);
    the test puts back the value it found, or leaves a higher one."""
    lab, net = scale_lab
    key = "fs.inotify.max_user_instances"
    path = limits.PROC_SYS / key.replace(".", "/")
    found = int(path.read_text())
    said: list[str] = []
    path.write_text("32\n")
    try:
        started = lab.up(3, net, say=said.append)
    finally:
        now = int(path.read_text())
        path.write_text(f"{max(found, now)}\n")
    needed = next(l for l in limits.LIMITS if l.key == key).needed(3)
    assert started == ["host1", "host2", "host3"]
    assert len(said) == 1 and said[0].startswith("kernel limits raised for "), said
    assert f"{key} 32 -> " in said[0]
    assert now >= needed  # (more when other labs on the machine run hosts: the limit is the machine's)
    for host in ("host1", "host2", "host3"):
        state = lab.ssh(host, "systemctl is-system-running --wait", timeout=60, check=False).stdout.strip()
        assert state == "running", f"{host}: {state}"
        log = (lab.layout.host_dir(host) / "host.log").read_text(errors="replace")
        assert bootlog.fatal(log) is None, f"{host}: {bootlog.fatal(log)}"


@pytest.mark.parametrize("scale_lab", ["127.0.78"], indirect=True)
def test_a_host_that_does_not_boot_fails_up_with_its_logs_line(scale_lab):
    """host2's overlay hides systemd (an overlayfs whiteout over /usr/lib/systemd/systemd): nspawn
    finds no init. `lab up 3` exits 2 with one line for host2 quoting its log's reason; host2 is
    stopped, host1 and host3 stay up with their first generation; once the cause is gone, the same
    `lab up 3` starts host2 alone."""
    lab, net = scale_lab
    hidden = lab.layout.host_dir("host2") / "upper" / "usr" / "lib" / "systemd" / "systemd"
    hidden.parent.mkdir(parents=True)
    os.mknod(hidden, 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    argv = [str(BIN / "ipex-fleet"), "lab", "up", "3", "--root", str(lab.layout.root), "--net", net]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "1 of 3 host(s) failed" in lines[0] and "Traceback" not in proc.stderr
    host_lines = [l for l in lines if l.startswith("host")]
    assert host_lines == [f"host2: did not boot: execv(/usr/lib/systemd/systemd, /lib/systemd/systemd, /sbin/init) "
                          f"failed: No such file or directory (see {lab.layout.host_dir('host2') / 'host.log'})"], lines
    states = {s.name: (s.state, s.generation) for s in lab.status()}
    assert states == {"host1": ("running", 1), "host2": ("stopped", 1), "host3": ("running", 1)}
    assert container.supervisor_pid(lab.layout, lab.spec.host("host2")) is None
    hidden.unlink()
    assert lab.up(3, say=lambda line: None) == ["host2"]
    assert lab.ssh("host2", "systemctl is-system-running --wait", timeout=60, check=False).stdout.strip() == "running"
