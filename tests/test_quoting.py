"""Nothing reaches a shell unquoted: property tests over the command builders and host data, with
shell metacharacters, newlines, unicode and very long values."""

from __future__ import annotations

import json
import shlex

import pytest
from hypothesis import example, given, settings, strategies as st

from ipex_fleet.domain import Action
from ipex_fleet.common.errors import UserError
from ipex_fleet.nix import commands as nixcmd
from ipex_fleet.settings import check_host_name, from_host_data

# Anything a user or a host could hand us: metacharacters, quotes, newlines, unicode, long values.
NASTY = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                max_size=300) | st.sampled_from(["$(reboot)", "`id`", "a; rm -rf /", "x\ny", "'\"", "--set",
                                                 "é🚀", "a" * 5000, "${HOME}", "*", "&&", "|| true"])


def words(command: str) -> list[str]:
    return shlex.split(command)


@given(NASTY, NASTY)
def test_profile_commands_keep_each_value_one_word(profile, path):
    assert words(nixcmd.set_profile(profile, path)) == ["nix-env", "-p", profile, "--set", path]
    assert words(nixcmd.switch_generation(profile, 7)) == ["nix-env", "-p", profile, "--switch-generation", "7"]


@given(NASTY)
def test_activation_quotes_the_path(path):
    command = nixcmd.activate(path, Action.SWITCH, "abc")
    assert f"{path}/bin/switch-to-configuration" in words(command)


@given(st.dictionaries(st.sampled_from(["run_id", "controller", "since"]), NASTY, min_size=1))
def test_records_carry_values_as_json_in_one_word(owner):
    tokens = words(nixcmd.append_deploy_record(owner))
    assert owner in [json.loads(t) for t in tokens if t.startswith("{")]


@settings(max_examples=60)
@given(NASTY, NASTY, st.dictionaries(st.sampled_from(["run_id", "controller"]), NASTY, min_size=1))
def test_agent_commands_carry_each_value_in_one_word(intent_id, token, owner):
    """What the controller sends the host agent reaches its argv whole, whatever the bytes."""
    from ipex_fleet.transaction import hostagent

    owner_json = json.dumps(owner, sort_keys=True)
    argv = words(hostagent.command("lock-take", "--owner", owner_json, "--for", "30"))
    assert argv[:4] == [hostagent.LAUNCHER, hostagent.SCRIPT, "--root", "/var/lib/ipex-fleet"]
    assert json.loads(argv[argv.index("--owner") + 1]) == owner
    argv = words(hostagent.command("claim", "--intent", intent_id, "--who", "committed"))
    assert argv[argv.index("--intent") + 1] == intent_id
    argv = words(hostagent.command("lock-release", "--token", token))
    assert argv[-1] == token


@given(NASTY)
@example("0\n")  # `$` matches before a final newline: found by hypothesis, now fullmatch
def test_host_names_with_metacharacters_are_refused_in_one_line(name):
    try:
        checked = check_host_name(name)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert shlex.quote(checked) == checked, "a name that passes needs no quoting"


@given(NASTY)
def test_ipex_fleet_command_is_refused_or_quoted_once(value):
    import os
    import tempfile

    flake = tempfile.mkdtemp()
    open(os.path.join(flake, "flake.nix"), "w").close()
    open(os.path.join(flake, "flake.lock"), "w").write('{"nodes": {"root": {}}, "root": "root", "version": 7}')
    try:
        settings_ = from_host_data("h", {"flake": flake, "ipex_fleet_command": value})
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert words(settings_.ipex_fleet_command) == shlex.split(value)


# For every key of the schema: a wrong type, a wrong word or a wrong shape (one each at least).
WRONG = {
    "flake": ["/nonexistent/flake"], "nixos_config": ["a b", "a.b"], "mode": ["reboot", 3],
    "nix_profile": ["relative/path", "/a b"], "min_free_mb": ["lots", -1], "keep_flakes": [0, "five"],
    "command_timeout": ["soon", 0], "build_timeout": ["1h"], "activation_timeout": [[60]],
    "break_lock": ["maybe", 2], "magic_rollback": ["sometimes"], "build": ["remote"],
    "cache": [["http://a", "http://b"]], "cache_public_key": [{"k": 1}], "cache_secret_key": [["x"]],
    "cache_push": [{"to": "x"}], "controller_nix_conf_dir": [["a"]], "confirm_timeout": ["never"],
    "lease_grace": [0, "x"], "pace": ["fast", 1], "models_timeout": ["x"], "models_verify": ["full"], "reboot": ["later"],
    "reboot_timeout": [1], "ipex_fleet_command": ['"unclosed', "", ["a", "b\nc"]],
    "accelerator": ["gpu", ["xpu"]], "min_devices": [0, "two"], "smoke_model": ["a b", "x;y"],
    "health_levels": [[4], "1,5", "abc", {"1": 2}], "health_timeout": [-5], "bench": [2, "always"],
    "bench_tolerance": [2, 0, "fast"], "bench_timeout": ["x"], "bench_inconclusive": ["maybe", True], "pause_timeout": [5, "an hour"], "health_warn": ["ignore", True], "bench_lock": ["relative"], "metrics_dir": ["relative/dir", ["/a"]],
    "bench_threads": [0, True],
    "keep_generations": [0, "all"], "keep_days": [-1, "a week"], "gc": ["sometimes"], "gc_max_freed_mb": [0, "lots"],
    "gc_min_free_mb": [0], "store_optimise": ["daily"], "keep_records": [5, "many"], "journal_max_mb": [0, "1G"],
    "journal_max_days": [0], "maintenance_lock_wait": [-1, "forever"], "maintenance_restart": ["now"],
    "maintenance_bench_quick": [3], "rebaseline": ["if slow"],
    "restart_units": ["ollama", ["comfyui.service", "a b.service"], [3], "x.service;reboot"],
}
CASES = [(k, v) for k, values in WRONG.items() for v in values]


def test_every_host_data_key_has_bad_input_cases():
    from ipex_fleet.settings import _KEYS

    assert set(WRONG) == set(_KEYS) | {"flake"}


@pytest.mark.parametrize("key,value", CASES)
def test_every_wrong_host_data_value_is_one_line(tmp_path, key, value):
    (tmp_path / "flake.nix").write_text("{}")
    (tmp_path / "flake.lock").write_text('{"nodes": {"root": {}}, "root": "root", "version": 7}')
    with pytest.raises(UserError) as err:
        from_host_data("h", {"flake": str(tmp_path), key: value})
    assert "\n" not in str(err.value) and key in str(err.value)
