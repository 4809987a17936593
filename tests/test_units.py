"""Unit tests: parsing, validation, hashing, command quoting. No hosts needed."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from ipex_fleet.domain import Action, Generation, HostResult, Status
from ipex_fleet.common.errors import UserError
from ipex_fleet.nix.flakepush import entries as flake_entries
from ipex_fleet.nix.flakepush import flake_hash, flake_tarball
from ipex_fleet.lab import knobs
from ipex_fleet.lab.inventory import split_waves
from ipex_fleet.lab.layout import check_net, check_root
from ipex_fleet.nix import commands
from ipex_fleet.settings import from_host_data


def test_profile_state_parses_generations_and_current():
    lines = [
        "system-1-link 1700000000 /nix/store/aaa-nixos-system-h-1",
        "system-12-link 1700000100 /nix/store/bbb-nixos-system-h-2",
        "system-2-link 1700000050 /nix/store/ccc-nixos-system-h-3",
        "current system-12-link",
    ]
    state = commands.parse_profile_state(lines)
    assert [g.number for g in state.generations] == [1, 2, 12]
    assert state.current == 12
    assert state.current_generation == Generation(12, "/nix/store/bbb-nixos-system-h-2", 1700000100)
    assert state.by_path("/nix/store/ccc-nixos-system-h-3").number == 2


def test_profile_state_without_generations_has_no_current():
    state = commands.parse_profile_state(["current "])
    assert state.generations == () and state.current is None
    assert state.current_generation.number is None


def test_build_output_gives_out_path():
    out = json.dumps([{"drvPath": "/nix/store/x.drv", "outputs": {"out": "/nix/store/y-sys"}}])
    assert commands.parse_build_output(out) == "/nix/store/y-sys"


def test_commands_quote_their_arguments():
    evil = "/nix/var/nix/profiles/sys tem; rm -rf /"
    cmd = commands.set_profile(evil, "/nix/store/a b")
    assert shlex.split(cmd) == ["nix-env", "-p", evil, "--set", "/nix/store/a b"]
    assert "'" + evil + "'" in commands.profile_state(evil)


@pytest.fixture
def flake_dir(tmp_path: Path) -> Path:
    (tmp_path / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    (tmp_path / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}')
    (tmp_path / "hosts").mkdir()
    (tmp_path / "hosts" / "a.json").write_text("{}")
    return tmp_path


def test_settings_defaults(flake_dir: Path):
    s = from_host_data("web1", {"flake": str(flake_dir)})
    assert s.mode is Action.SWITCH and s.nixos_config == "web1"
    assert s.profile == "/nix/var/nix/profiles/system"


@pytest.mark.parametrize("name,data,message", [
    ("web1", {"mode": "swtch"}, "mode='swtch' is an unknown mode"),
    ("web1", {"flake": "/nonexistent/flake"}, "has no flake.nix"),
    ("web1;reboot", {}, "the name may hold only"),
    ("web1", {"nixos_config": "a.b"}, "not a plain attribute name"),
    ("web1", {"command_timeout": "soon"}, "command_timeout='soon' is not a number"),
    ("web1", {"nix_profile": "relative/path"}, "must be an absolute path"),
])
def test_settings_refuse_bad_input_in_one_line(flake_dir: Path, name, data, message):
    with pytest.raises(UserError) as err:
        from_host_data(name, {"flake": str(flake_dir), **data})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_flake_missing_is_refused(tmp_path: Path):
    with pytest.raises(UserError, match="no flake set"):
        from_host_data("web1", {})


def test_flake_hash_follows_content_only(flake_dir: Path, tmp_path_factory):
    first = flake_hash(str(flake_dir))
    copy = tmp_path_factory.mktemp("copy")
    for p in flake_dir.rglob("*"):
        target = copy / p.relative_to(flake_dir)
        if p.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(p.read_bytes())
    assert flake_hash(str(copy)) == first
    assert flake_tarball(str(copy)) == flake_tarball(str(flake_dir))
    (copy / "hosts" / "a.json").write_text('{"version": "2"}')
    assert flake_hash(str(copy)) != first


def test_knobs_parse_and_refuse():
    assert knobs.parse_assignment("version=2.1") == ("version", "2.1")
    assert knobs.parse_assignment("fail_activation=true") == ("fail_activation", True)
    assert knobs.parse_assignment("fail_activation=false") == ("fail_activation", None)
    assert knobs.parse_assignment("fail_service=ollama") == ("fail_service", "ollama")
    assert knobs.parse_assignment("slow_ollama=3") == ("slow_ollama", 3.0)
    assert knobs.parse_assignment("slow_ollama=1") == ("slow_ollama", None)  # as fast as ever: the knob off
    for bad, message in (("colour=red", "unknown lab setting"), ("version=a b", "must be"),
                         ("slow_ollama=0.5", "from 1 to 20"), ("slow_ollama=fast", "from 1 to 20"),
                         ("fail_service=sshd", "the lab's services"), ("lock_ssh=maybe", "true or false"),
                         ("version", "not KEY=VALUE")):
        with pytest.raises(UserError, match=message):
            knobs.parse_assignment(bad)
    settings = knobs.apply({"version": "3", "fail_activation": True}, [("fail_activation", None), ("version", None)])
    assert settings == {"version": "1"}


def test_lab_addresses_stay_on_loopback():
    assert check_net("127.0.10") == "127.0.10"
    for bad in ("10.0.0", "192.168.1", "127.0", "127.0.300", "127.0.10.1"):
        with pytest.raises(UserError):
            check_net(bad)
    with pytest.raises(UserError, match="replaces"):
        check_root("/tmp/lab")
    with pytest.raises(UserError, match="replaces"):
        check_root("/var/lib/lab")


def test_split_waves_keeps_order_and_covers_every_host():
    hosts = [f"h{i}" for i in range(1, 7)]
    canary, wave1, wave2 = split_waves(hosts)
    assert (canary, wave1, wave2) == (["h1"], ["h2", "h3"], ["h4", "h5", "h6"])
    assert split_waves(["a"]) == (["a"], [], [])
    assert split_waves(["a", "b", "c"]) == (["a"], ["b"], ["c"])


def test_host_result_round_trips():
    result = HostResult(host="h", run_id="r", status=Status.ROLLED_BACK, previous=Generation(1, "/nix/store/a"),
                        target=Generation(2, "/nix/store/b"), final=Generation(1, "/nix/store/a"), error="boom")
    data = result.to_json()
    assert data["status"] == "rolled_back"
    assert data["previous"] == {"generation": 1, "path": "/nix/store/a"}
    assert set(data) >= {"host", "run_id", "status", "previous", "target", "final", "health", "bench",
                         "timings", "error"}
    assert HostResult.from_json(json.loads(json.dumps(data))) == result


def test_secrets_in_urls_are_redacted_where_they_point_stays_readable():
    from ipex_fleet.common import redact

    assert redact.url("https://user:pw@hf.co/x/m.safetensors?token=abc&x=1") == \
        "https://REDACTED@hf.co/x/m.safetensors?token=REDACTED&x=REDACTED"
    assert redact.url("https://mirror.lan/m.safetensors") == "https://mirror.lan/m.safetensors"
    message = "models: https://h/m.st?sig=SECRET: HTTP 403; then http://a:b@c/d."
    assert redact.text(message) == "models: https://h/m.st?sig=REDACTED: HTTP 403; then http://REDACTED@c/d."
    assert "SECRET" not in redact.text(message) and ":b@" not in redact.text(message)


def test_host_data_left_unset_leaves_the_health_policy_to_the_fleet_config(flake_dir: Path):
    from ipex_fleet.transaction.gates import probe_command
    from ipex_fleet.transaction.core import HostTransaction

    policy = HostTransaction("h", "r", from_host_data("h", {"flake": str(flake_dir)}))
    assert probe_command(policy, "config", None).split()[1:5] == ["probe", "--level", "config", "--json"]
    assert "--accelerator" not in probe_command(policy, "config", None)
    pinned = HostTransaction("h", "r", from_host_data(
        "h", {"flake": str(flake_dir), "accelerator": "xpu", "min_devices": "2", "health_levels": "1,3"}))
    assert pinned.settings.health_levels == (1, 3)
    assert "--accelerator xpu --min-devices 2" in probe_command(pinned, 3, None)


def test_probe_level_config_follows_the_fleet_config(tmp_path: Path):
    import subprocess
    import sys

    config = {"schema": 1, "accelerator": "cpu", "health": {"levels": [1]}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "ipex_fleet.host.probe", "--level", "config", "--json",
                          "--config", str(tmp_path / "config.json")], capture_output=True, text=True, timeout=120)
    document = json.loads(out.stdout.strip().splitlines()[-1])
    assert document["level"] == 1 and {c["level"] for c in document["checks"]} == {1}
    config["health"]["levels"] = []
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "ipex_fleet.host.probe", "--level", "config", "--json",
                          "--config", str(tmp_path / "config.json")], capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1])["checks"] == []


def test_plan_parses_diff_closures_path_info_and_boot_links():
    from ipex_fleet.fleet.plan import parse_closure, parse_dry_activate, parse_reboot

    sections = {
        "diff": ["linux: 6.12.1 → 6.13.0, +1024.0 KiB", "ollama: ∅ → 0.9.0, +30.1 MiB",
                 "comfyui: 0.3 → ∅, -10.0 MiB", "etc: +1.2 KiB", "warning: something"],
        "current": ["/nix/store/a-linux-6.12.1", "/nix/store/c-glibc"],
        "target": ['[{"path": "/nix/store/b-linux-6.13.0", "narSize": 2048},',
                   ' {"path": "/nix/store/c-glibc", "narSize": 999}]'],
        "boot": ["kernel /nix/store/a/bzImage /nix/store/b/bzImage", "initrd /x /x", "firmware - -"],
    }
    change = parse_closure(sections)
    assert change.added == ("ollama 0.9.0",) and change.removed == ("comfyui 0.3",)
    assert change.changed == ("linux: 6.12.1 → 6.13.0",) and change.bytes_new == 2048
    assert parse_reboot(sections) == ("kernel",)
    assert parse_dry_activate(["would restart the following units: a.service, b.service",
                               "would start the following units: c.service"]) == {
        "restart": ("a.service", "b.service"), "start": ("c.service",)}


def test_ledger_settles_plain_runs_and_last_reads_phases_that_are_written(tmp_path: Path):
    from ipex_fleet.domain import Generation, HostResult, Status
    from ipex_fleet.ledger.runs import Ledger

    ledger = Ledger(tmp_path / "ledger.sqlite")

    def result(host: str, status: Status, number: int) -> HostResult:
        gen = Generation(number, f"/nix/store/{number}")
        return HostResult(host=host, run_id="r1", status=status, previous=gen, target=gen, final=gen)

    for host, status, phase in (("a", Status.OK, "deploy"), ("b", Status.ROLLED_BACK, "deploy"),
                                ("a", Status.OK, "check"), ("b", Status.OK, "recover")):
        ledger.start_run("r1", phase, None, None, {}, status="pyinfra")
        ledger.record(result(host, status, 3), phase)
        ledger.settle_plain_run("r1")
    run = ledger.run("r1")
    assert run.status == "failed" and run.finished is not None
    assert ledger.last("a")["phase"] == "deploy" and ledger.last("b")["phase"] == "recover"
    ledger.start_run("r2", "rollout", "inv", "deploy", {})
    ledger.settle_plain_run("r2")
    assert ledger.run("r2").status == "running"


REPO_FLAKE = Path(__file__).resolve().parents[1] / "flake"


def test_a_flake_without_a_lock_or_with_an_unlocked_input_is_refused_in_one_line(flake_dir: Path):
    (flake_dir / "flake.lock").unlink()
    with pytest.raises(UserError) as err:
        from_host_data("web1", {"flake": str(flake_dir)})
    assert "has no flake.lock: run `nix flake lock`" in str(err.value) and "\n" not in str(err.value)
    (flake_dir / "flake.lock").write_text(json.dumps({"version": 7, "root": "root", "nodes": {
        "root": {"inputs": {"nixpkgs": "nixpkgs"}}, "nixpkgs": {"original": {"type": "github"}}}}))
    with pytest.raises(UserError, match="input\\(s\\) nixpkgs are not locked"):
        from_host_data("web1", {"flake": str(flake_dir)})


def test_the_pushed_flake_carries_the_probe_source_and_evaluates_alone(tmp_path: Path):
    """What the deploy pushes, unpacked alone: it holds the package's source (push.json), so its
    `source` is ./_source, not a path outside the flake."""
    import io
    import subprocess
    import tarfile

    names = [name for name, _ in flake_entries(str(REPO_FLAKE))]
    assert "_source/src/ipex_fleet/host/probe/__main__.py" in names and "_source/pyproject.toml" in names
    assert not any("__pycache__" in n for n in names)
    with tarfile.open(fileobj=io.BytesIO(flake_tarball(str(REPO_FLAKE)))) as tar:
        tar.extractall(tmp_path)  # our own tarball, of plain files
    # Evaluated with no repository around it, the flake's own source path stays inside the flake.
    expr = (f"let src = if builtins.pathExists {tmp_path}/_source then {tmp_path}/_source else {tmp_path}/..; "
            "in builtins.pathExists (src + \"/src/ipex_fleet/__init__.py\")")
    out = subprocess.run(["nix-instantiate", "--eval", "--expr", expr], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "true", out.stderr
    assert 'source = if builtins.pathExists ./_source then ./_source else ./..;' in (REPO_FLAKE / "flake.nix").read_text()


def test_a_one_line_change_in_the_pushed_source_changes_the_push_address(tmp_path: Path):
    flake = tmp_path / "flake"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    (flake / "push.json").write_text(json.dumps({"include": {"_source/pkg": "../pkg"}}))
    first = flake_hash(str(flake))
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert flake_hash(str(flake)) != first
    (flake / "push.json").write_text(json.dumps({"include": {"../escape": "../pkg"}}))
    with pytest.raises(ValueError, match="must stay inside the flake"):
        flake_hash(str(flake))


@pytest.mark.parametrize("key,value", [("nixos_config", "web1\n"), ("nix_profile", "/nix/var/nix/profiles/system\n"),
                                       ("smoke_model", "llama3.2:1b\n"), ("bench_lock", "/run/bench.lock\n")])
def test_a_trailing_newline_never_passes_a_pattern(flake_dir: Path, key, value):
    with pytest.raises(UserError) as err:
        from_host_data("web1", {"flake": str(flake_dir), key: value})
    assert key in str(err.value) and "\n" not in str(err.value)


def test_tables_show_host_text_as_written_never_as_markup():
    from ipex_fleet.views.tables import render

    cells = ["unit [ollama.service] failed", "not in [/nix/store/abc-x]", "[bold]x[/bold]", "[/]"]
    out = render([("error", {})], [[c] for c in cells], columns_wide=200)
    for cell in cells:
        assert cell in out


def _sh(command: str) -> dict[str, str]:
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    return commands.parse_key_values(out.stdout.splitlines())


def test_free_kb_is_dfs_available_column(tmp_path: Path):
    df = subprocess.run(["df", "-Pk", str(tmp_path)], capture_output=True, text=True, check=True)
    available = int(df.stdout.splitlines()[1].split()[3])
    free = int(_sh(commands.free_kb(str(tmp_path)))["free_kb"])
    assert abs(free - available) <= 1024  # the same figure, a moment apart on a live filesystem
    assert _sh(commands.free_kb(str(tmp_path / "missing"), "gone")) == {"gone": "0"}


def test_summed_kb_adds_the_paths_and_counts_a_missing_one_as_zero(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"x" * 300_000)
    (tmp_path / "b" / "y").write_bytes(b"y" * 200_000)
    du = {p: int(subprocess.run(["du", "-sk", str(tmp_path / p)], capture_output=True, text=True,
                                check=True).stdout.split()[0]) for p in ("a", "b")}
    a, b, gone = (str(tmp_path / p) for p in ("a", "b", "gone"))
    assert _sh(commands.summed_kb(f"{a} {b}", "used")) == {"used": str(du["a"] + du["b"])}
    assert _sh(commands.summed_kb(f"{gone} {b}", "used")) == {"used": str(du["b"])}
    assert _sh(commands.summed_kb(f"{a} {gone}", "used")) == {"used": str(du["a"])}
    assert _sh(commands.summed_kb(f"{gone} {gone}", "used") + '; echo left=$kb') == {"used": "0", "left": "0"}


def test_then_running_reports_the_running_system_and_runs_then_if_only_where_that_system_runs():
    running = subprocess.run(["sh", "-c", "readlink -f /run/current-system"], capture_output=True,
                             text=True).stdout.strip()

    def run(then_if):
        out = subprocess.run(["sh", "-c", commands.then_running("echo out; echo err >&2; exit 3", then_if, (3,))],
                             capture_output=True, text=True, timeout=30)
        rest, then_rc = commands.take_then(tuple(out.stdout.splitlines()))
        return out.returncode, commands.take_running(rest), then_rc

    # The command's exit code stands; `then`'s output is dropped, its exit code (an `exit` in it ends
    # only itself) comes on the last line.
    assert run((running, "echo noise; echo noise >&2; exit 7")) == (3, (("out",), running), 7)
    assert run((running, "true")) == (3, (("out",), running), 0)
    assert run(("/nix/store/another-system", "exit 7")) == (3, (("out",), running), None)
    assert run(None) == (3, (("out",), running), None)


def test_then_running_runs_then_if_only_after_an_accepted_exit_code():
    running = subprocess.run(["sh", "-c", "readlink -f /run/current-system"], capture_output=True,
                             text=True).stdout.strip()

    def then_rc(exit_code: int, codes: tuple[int, ...]):
        command = commands.then_running(f"exit {exit_code}", (running, "true"), codes)
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
        assert out.returncode == exit_code
        return commands.take_then(tuple(out.stdout.splitlines()))[1]

    assert then_rc(0, (0,)) == 0 and then_rc(3, (0,)) is None
    assert then_rc(100, (0, 100, 4)) == 0 and then_rc(4, (0, 100, 4)) == 0
    assert then_rc(4, (0, 100)) is None and then_rc(2, (0, 100, 4)) is None
