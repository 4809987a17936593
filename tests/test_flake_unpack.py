"""The pushed flake's unpacking (nix.commands.unpack_flake), run by a real sh in the build's round trip
(unpacked_then): whole or not at all, the upload removed, a failure told apart from the build's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.nix.flakepush import flake_tarball


def sh(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(nixcmd, "FLAKE_ROOT", str(tmp_path / "flake"))
    (tmp_path / "flake").mkdir()
    return tmp_path / "flake"


def upload(root: Path, tmp_path: Path, text: str) -> Path:
    source = tmp_path / f"src-{len(text)}"
    source.mkdir()
    (source / "flake.nix").write_text(text)
    (source / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}')
    path = root / ".upload-abc-run.tar.gz"
    path.write_bytes(flake_tarball(str(source)))
    return path


def test_the_flake_is_unpacked_whole_then_built_in_one_round_trip(root, tmp_path):
    tarball = upload(root, tmp_path, "{ outputs = _: { }; }\n")
    got = sh(nixcmd.unpacked_then(nixcmd.unpack_flake(str(tarball), "abc"), "echo built"))
    assert got.returncode == 0 and got.stdout.strip() == "built", got.stderr
    assert (root / "abc" / "flake.nix").read_text() == "{ outputs = _: { }; }\n"
    assert (root / "abc" / ".complete").is_file() and not tarball.exists() and not (root / "abc.tmp").exists()
    # Pushed again (a half-done earlier attempt's temporary folder left behind): replaced whole.
    (root / "abc.tmp").mkdir()
    (root / "abc.tmp" / "stale").write_text("x")
    tarball = upload(root, tmp_path, "{ outputs = _: { b = 1; }; }\n")
    assert sh(nixcmd.unpacked_then(nixcmd.unpack_flake(str(tarball), "abc"), "true")).returncode == 0
    assert sorted(p.name for p in (root / "abc").iterdir()) == [".complete", "flake.lock", "flake.nix"]
    assert "b = 1" in (root / "abc" / "flake.nix").read_text()


def test_a_torn_upload_is_never_used_and_its_failure_is_not_the_builds(root, tmp_path):
    tarball = root / ".upload-abc-run.tar.gz"
    tarball.write_bytes(b"\x1f\x8b\x08\x00 torn in transit")
    got = sh(nixcmd.unpacked_then(nixcmd.unpack_flake(str(tarball), "abc"), "echo built"))
    assert got.returncode != 0 and "built" not in got.stdout
    assert got.stderr.strip().splitlines()[-1] == nixcmd.UNPACK_FAILED
    assert len(got.stderr.strip().splitlines()) > 1  # tar's own words come before it
    assert not (root / "abc").exists()  # no flake where the build would look


def test_a_failed_build_after_a_good_unpack_is_the_builds(root, tmp_path):
    tarball = upload(root, tmp_path, "{ }\n")
    got = sh(nixcmd.unpacked_then(nixcmd.unpack_flake(str(tarball), "abc"), "echo 'error: eval' >&2; exit 1"))
    assert got.returncode == 1 and got.stderr.strip().splitlines()[-1] == "error: eval"
