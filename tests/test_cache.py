"""Binary-cache mode: build once on the controller, sign, push (zstd), hosts substitute over HTTP."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from ipex_fleet.domain import Status

from .conftest import destroy_checked, make_fleet, assert_ok


@pytest.fixture(scope="module")
def fleet(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 3, tmp_path_factory)
    yield fleet
    destroy_checked(fleet.lab)


def bump_all(fleet) -> str:
    version = f"c{time.monotonic_ns()}"
    for h in ("host1", "host2", "host3"):
        fleet.configure(h, f"version={version}")
    return version


def test_one_build_for_hosts_of_one_configuration(fleet):
    bump_all(fleet)
    # All three hosts take host1's configuration; mode boot, so its services (host1's address) stay idle.
    proc, run_id = fleet.deploy("--data", "build=controller", "--data", "nixos_config=host1", "--data", "mode=boot",
                                "--data", "health_levels=[]", "--data", "bench=false")
    assert_ok(proc)
    assert "built 1 toplevel(s) on the controller for 3 host(s)" in proc.stdout
    paths = {fleet.result(run_id, h).final.path for h in ("host1", "host2", "host3")}
    assert len(paths) == 1
    path = paths.pop()
    for h in ("host1", "host2", "host3"):
        assert fleet.sh(h, "readlink -f /nix/var/nix/profiles/system") == path
        # It came from the cache, signed: the host's store records the signature.
        info = json.loads(fleet.sh(h, f"nix --extra-experimental-features nix-command path-info --json --sigs {path}"))
        assert any(sig.startswith("ipex-fleet-lab-") for sig in info[0]["signatures"])
    narinfo = (fleet.lab.layout.cache_dir / f"{path.split('/')[-1].split('-')[0]}.narinfo").read_text()
    assert "Compression: zstd" in narinfo and "Sig: ipex-fleet-lab-" in narinfo


def test_switch_through_the_cache(fleet):
    bump_all(fleet)
    proc, run_id = fleet.deploy("--data", "build=controller", "--data", "bench=false")
    assert_ok(proc)
    assert "built 3 toplevel(s) on the controller for 3 host(s)" in proc.stdout
    for h in ("host1", "host2", "host3"):
        result = fleet.result(run_id, h)
        assert result.status is Status.OK and fleet.system(h)[2] == result.final.path


def _controller_build(fleet, version: str) -> str:
    """Built as the controller builds: what is pushed, unpacked alone."""
    from ipex_fleet.nix.flakepush import materialize

    fleet.configure("host2", f"version={version}")
    env = {"NIX_CONF_DIR": str(fleet.lab.layout.nix_conf_dir), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["nix", "--extra-experimental-features", "nix-command flakes", "build", "--json", "--no-link",
                          f"path:{materialize(str(fleet.lab.layout.flake_dir))}#nixosConfigurations.host2.config.system.build.toplevel"],
                         capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    return json.loads(out)[0]["outputs"]["out"], env


@pytest.mark.parametrize("signing", ["unsigned", "wrong-key"])
def test_host_refuses_unsigned_or_foreign_paths(fleet, tmp_path, signing):
    path, env = _controller_build(fleet, f"bad-{signing}-{time.monotonic_ns()}")
    if signing == "wrong-key":
        secret, public = tmp_path / "other.sec", tmp_path / "other.pub"
        subprocess.run(["nix-store", "--generate-binary-cache-key", "intruder-1", secret, public], check=True,
                       env=env, timeout=60)
        subprocess.run(["nix", "--extra-experimental-features", "nix-command", "store", "sign", "--recursive",
                        "--key-file", secret, path], check=True, env=env, timeout=60)
    cache_dir = tmp_path / "cache"
    subprocess.run(["nix", "--extra-experimental-features", "nix-command", "copy", "--to",
                    f"file://{cache_dir}?compression=zstd", path], check=True, env=env, timeout=300)
    # Serve that cache over the lab's own HTTP server directory, under a path of its own.
    served = fleet.lab.layout.cache_dir / f"test-{signing}"
    subprocess.run(["cp", "-r", str(cache_dir), str(served)], check=True)
    address, port = fleet.spec.cache_address
    from ipex_fleet.nix.cache import substitute
    from ipex_fleet.settings import from_host_data

    data = {"flake": str(fleet.lab.layout.flake_dir), "cache": f"http://{address}:{port}/test-{signing}",
            "cache_public_key": fleet.lab.layout.cache_keys[1].read_text().strip()}
    proc = fleet.lab.ssh("host2", substitute(path, from_host_data("host2", data)), check=False, timeout=120)
    assert proc.returncode != 0
    assert "is not signed by any of the keys in 'trusted-public-keys'" in proc.stderr, proc.stderr
    assert fleet.sh("host2", f"test -e {path} && echo present || echo absent") == "absent"
