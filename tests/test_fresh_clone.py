"""A fresh clone works wherever a newcomer puts it: a checkout whose path has a space, reached through
a symlink under /tmp, bootstraps, brings a one-host lab up and deploys it with health checks; and a
Python environment the lab hosts could not see is refused in one line before any host starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from ipex_fleet.common.errors import UserError
from ipex_fleet.lab import fleet as labfleet

from .conftest import REPO, assert_ok, lab_available, skip_or_fail


def test_paths_hosts_cannot_see_are_refused_naming_them():
    for path in ("/tmp/x/.venv", "/root/src/venv", "/var/lib/ci/venv", "/nix/store/abc-env"):
        with pytest.raises(UserError) as err:
            labfleet._check_host_visible(["/srv/fine", path])
        assert path in str(err.value) and "scripts/bootstrap" in str(err.value)
    with pytest.raises(UserError, match="':'"):
        labfleet._check_host_visible(["/srv/a:b/venv"])
    labfleet._check_host_visible(["/srv/ipex-fleet-venv-0123", "/home/u/my src/.venv", "/usr/bin/x"])


def test_the_host_python_is_the_environments_real_path():
    python = labfleet.host_python()
    assert python.startswith(os.path.realpath(sys.prefix) + "/bin/")
    assert os.path.samefile(python, sys.executable)


def test_lab_up_from_an_environment_under_tmp_is_one_line_before_any_host(tmp_path):
    if lab_available():
        skip_or_fail(lab_available())
    venv = Path("/tmp") / f"ipex-fleet-hidden-{uuid.uuid4().hex[:8]}"
    root = f"/srv/ipex-fleet-hidden-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
        site = sysconfig.get_paths()["purelib"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, str(REPO / "src")])}
        proc = subprocess.run([str(venv / "bin/python"), "-m", "ipex_fleet", "lab", "--root", root, "up", "1",
                               "--net", "127.0.99"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and str(venv) in lines[0] and "cannot see" in lines[0], proc.stderr
        assert not Path(root, "hosts").exists(), "no host was prepared"
    finally:
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def test_a_clone_with_a_space_reached_through_tmp_bootstraps_and_deploys():
    if lab_available():
        skip_or_fail(lab_available())
    tag = uuid.uuid4().hex[:8]
    real = Path(f"/srv/ipex fleet clone {tag}") / "my checkout"
    link = Path(f"/tmp/ipex-fleet-clone-{tag}")
    lab_root = f"/srv/ipex-fleet-clone-lab-{tag}"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(IPEX_FLEET_LAB_ROOT=lab_root, IPEX_FLEET_STATE=str(real / ".state"))
    try:
        real.parent.mkdir(parents=True)
        assert_ok(subprocess.run(["git", "clone", "-q", str(REPO), str(real)], capture_output=True, text=True,
                                 timeout=120))
        link.symlink_to(real)
        # the working tree's uncommitted source too, so that the test tests this tree
        shutil.rmtree(real / "src")
        shutil.copytree(REPO / "src", real / "src", ignore=shutil.ignore_patterns("__pycache__"))
        assert_ok(subprocess.run([str(link / "scripts/bootstrap")], cwd=link, env=env, capture_output=True,
                                 text=True, timeout=900), "bootstrap")
        ipex = link / ".venv/bin/ipex-fleet"
        assert_ok(subprocess.run([str(ipex), "lab", "up", "1", "--net", "127.0.98"], cwd=link, env=env,
                                 capture_output=True, text=True, timeout=600), "lab up 1")
        assert_ok(subprocess.run([str(ipex), "lab", "config", "host1", f"version=clone-{tag}"], cwd=link, env=env,
                                 capture_output=True, text=True, timeout=60))
        proc = assert_ok(subprocess.run([str(link / ".venv/bin/pyinfra"), "inventories/lab.py", "deploys/prod.py",
                                         "-y", "--data", "bench=false", "--data", "health_level=2"], cwd=link,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        timeout=600), "deploy")
        assert "[host1] ok" in proc.stdout, proc.stdout[-3000:]
        # The generation's ipex-fleet runs the environment's real path, never the clone's symlinks.
        out = assert_ok(subprocess.run([str(ipex), "lab", "exec", "host1", "--", "cat",
                                        "/run/current-system/sw/bin/ipex-fleet"], cwd=link, env=env,
                                       capture_output=True, text=True, timeout=60)).stdout
        assert str(link) not in out and "/srv/" in out, out
    finally:
        ipex = link / ".venv/bin/ipex-fleet"
        if ipex.exists():
            subprocess.run([str(ipex), "lab", "destroy"], cwd=real, env=env, capture_output=True, timeout=300)
        venv = os.path.realpath(real / ".venv") if (real / ".venv").is_symlink() else None
        link.unlink(missing_ok=True)
        shutil.rmtree(real.parent, ignore_errors=True)
        shutil.rmtree(lab_root, ignore_errors=True)
        if venv and venv.startswith("/srv/ipex-fleet-venv-"):
            shutil.rmtree(venv, ignore_errors=True)
