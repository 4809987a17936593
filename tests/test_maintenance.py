"""Maintenance on the systemd lab over real SSH: retention that keeps the policy and every anchor,
GC, journald, models, drift, and the lock shared with deploys."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ipex_fleet.nix import commands as nixcmd

from .conftest import BIN, REPO, bump, destroy_checked, make_fleet, wait_for, assert_ok
from .test_models import make_blob, start_mirror

ARTIFACTS = REPO / ".ipex-fleet" / "artifacts"
PROFILE = "/nix/var/nix/profiles/system"
DAY = 86400


@pytest.fixture(scope="module")
def fleet(lab_roots, tmp_path_factory):
    fleet = make_fleet(lab_roots, 3, tmp_path_factory)
    yield fleet
    destroy_checked(fleet.lab)


pytestmark = pytest.mark.usefixtures("healthy")


def inventory(fleet, tmp_path: Path, hosts: dict[str, dict], name: str = "maint.py") -> Path:
    """The named lab hosts, each with fast deploy data plus its own."""
    path = tmp_path / name
    path.write_text(
        "from ipex_fleet.lab.inventory import lab_hosts\n"
        f"_extra = {hosts!r}\n"
        "hosts = [(n, {**d, 'bench': False, 'health_levels': [1], 'min_free_mb': 64, 'command_timeout': 30,"
        " **_extra[n]})"
        f" for n, d in lab_hosts({str(fleet.lab.layout.root)!r}) if n in _extra]\n")
    return path


def maintain(fleet, inv: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, str]:
    proc = subprocess.run([str(BIN / "ipex-fleet"), "maintain", str(inv), "--waves", "100%", *args], cwd=REPO,
                          env=fleet.env(COLUMNS="100"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    match = re.search(r"^maintain (maintain-\S+): ", proc.stdout, re.M)
    assert match, proc.stdout
    return proc, match.group(1)


def generations(fleet, host: str) -> dict[int, str]:
    state = nixcmd.parse_profile_state(fleet.sh(host, nixcmd.profile_state(PROFILE)).splitlines())
    return {g.number: g.path for g in state.generations}


def entries(fleet, host: str) -> set[int]:
    names = fleet.sh(host, "ls /boot/loader/entries").split()
    return {int(m.group(1)) for n in names if (m := re.match(r"nixos-generation-(\d+)[+.]", n))}


def test_retention_keeps_the_policy_and_every_anchor_and_gc_frees_the_rest(fleet, tmp_path):
    inv = inventory(fleet, tmp_path, {"host1": {"keep_generations": 1, "keep_days": 7}})
    for _ in range(7):
        bump(fleet, "host1")
        proc, _ = fleet.deploy(inventory=str(inv))
        assert_ok(proc)
    gens = generations(fleet, "host1")
    assert sorted(gens) == list(range(1, 9))  # 8 generations; the last deploy went 7 -> 8
    # Every generation but the newest is 30 days old: the policy alone keeps only 8.
    old = int(time.time()) - 30 * DAY
    fleet.sh("host1", " ".join(f"touch -h -d @{old} {PROFILE}-{n}-link;" for n in range(1, 8)))
    # Anchors: 1 is booted; an open intent of a dead run names 3; 5's boot entry is being counted
    # (a try used, not blessed); 7 is the last deploy's recorded rollback target; 8 is current.
    boot_id = fleet.sh("host1", "cat /proc/sys/kernel/random/boot_id")
    intent = {"intent_id": "dead-run-1", "run_id": "dead-run", "previous": {"generation": 3, "path": gens[3]},
              "target": {"path": gens[8]}, "mode": "switch", "lease": {"boot_id": boot_id, "deadline": 0,
                                                                        "reboot_grace": 0}}
    fleet.sh("host1", f"mkdir -p /var/lib/ipex-fleet && echo '{json.dumps(intent)}' > /var/lib/ipex-fleet/intent.json")
    fleet.sh("host1", "cd /boot/loader/entries && mv nixos-generation-5+*.conf nixos-generation-5+2-1.conf")
    assert fleet.sh("host1", "readlink -f /run/booted-system") == gens[1]

    started = time.monotonic()
    proc, run_id = maintain(fleet, inv)
    took = time.monotonic() - started
    assert_ok(proc)
    report = fleet.result(run_id, "host1").report
    retention = report["tasks"]["retention"]
    assert sorted(generations(fleet, "host1")) == [1, 3, 5, 7, 8]
    assert retention["deleted"] == [2, 4, 6]
    kept = retention["kept"]
    assert "booted" in kept["1"] and "named by an open intent" in kept["3"]
    assert "boot entry being counted" in kept["5"] and "the last deploy's rollback target" in kept["7"]
    assert "current" in kept["8"] and "last 1" in kept["8"]
    assert entries(fleet, "host1") == {1, 3, 5, 7, 8}  # boot entries follow the kept generations
    gc = retention["gc"]
    assert gc["paths_deleted"] > 0 and gc["nix_freed_bytes"] > 0
    for n in (2, 4, 6):  # their toplevels are gone from the store
        assert fleet.sh("host1", f"nix-store --check-validity {gens[n]} 2>/dev/null && echo valid || echo gone") == "gone"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "maintenance-retention.json").write_text(json.dumps(
        {"seconds": round(took, 1), "generations_before": 8, "report": report}, indent=2))
    # The intent stays for the host's recovery to resolve; remove the fake one, then go to every kept one.
    fleet.sh("host1", "rm -f /var/lib/ipex-fleet/intent.json")
    for n in (1, 3, 5, 7, 8):
        proc, run_id = fleet.deploy("--data", f"generation={n}", deploy="deploys/rollback.py", inventory=str(inv))
        assert_ok(proc)
        number, path, running = fleet.system("host1")
        assert number == n and path == running == gens[n]


def test_journal_usage_drops_and_a_second_run_finds_nothing_to_do(fleet, tmp_path):
    fleet.sh("host2", "head -c 3000000 /dev/urandom | base64 -w 150 | systemd-cat -t filler; "
                      "journalctl --rotate; journalctl --flush", timeout=120)
    def usage() -> int:
        return _bytes(fleet.sh("host2", "journalctl --disk-usage"))

    before = usage()
    inv = inventory(fleet, tmp_path, {"host2": {"journal_max_mb": 1}})
    proc, run_id = maintain(fleet, inv)
    assert_ok(proc)
    after = usage()
    assert after < before, (before, after)
    journal = fleet.result(run_id, "host2").report["tasks"]["journal"]
    assert journal["after_bytes"] < journal["before_bytes"]
    # In the ledger it is maintenance, never a deploy: `status` and `rollback --to` do not count it.
    rows = sqlite3.connect(fleet.state / "ledger.sqlite3").execute(
        "SELECT phase, report FROM host_results WHERE run_id=?", (run_id,)).fetchall()
    assert [r[0] for r in rows] == ["maintain"] and json.loads(rows[0][1])["tasks"]["journal"] == journal
    # Nothing left to do: nothing deleted, nothing rotated.
    proc, run_id = maintain(fleet, inv)
    assert_ok(proc)
    report = fleet.result(run_id, "host2").report["tasks"]
    assert report["retention"]["deleted"] == [] and report["pushed"]["removed"] == []


def _bytes(text: str) -> int:
    m = re.search(r"take up ([\d.]+)([BKMGT])", text)
    assert m, text
    return int(float(m.group(1)) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2)])


def test_models_corrupt_refetched_undeclared_pruned_foreign_left(fleet, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sha_a, size_a = make_blob(mirror, "a.safetensors", 1)
    sha_b, size_b = make_blob(mirror, "b.safetensors", 1)
    proc_mirror, url = start_mirror(mirror)
    root = "/var/lib/comfyui/models/checkpoints"
    a = {"kind": "checkpoints", "name": "a.safetensors", "url": f"{url}/a.safetensors", "sha256": sha_a, "size": size_a}
    b = {"kind": "checkpoints", "name": "b.safetensors", "url": f"{url}/b.safetensors", "sha256": sha_b, "size": size_b}
    common = {"trusted_mirrors": ["http://127.0.0.1:"], "models_prune": ["checkpoints"]}
    try:
        proc, _ = fleet.deploy(inventory=str(inventory(fleet, tmp_path, {"host3": {**common, "models": [a, b]}})))
        assert_ok(proc)
        fleet.sh("host3", f"echo mine > {root}/foreign.safetensors; "  # not installed by ipex-fleet
                          f"printf 'rotten' | dd of={root}/a.safetensors conv=notrunc 2>/dev/null")
        inv = inventory(fleet, tmp_path, {"host3": {**common, "models": [a]}}, "maint-models.py")
        proc, run_id = maintain(fleet, inv)
        assert_ok(proc)
        models = fleet.result(run_id, "host3").report["models"]
        assert models["installed"] == ["checkpoints/a.safetensors"]  # found corrupt, fetched again
        assert models["pruned"] == ["checkpoints/b.safetensors"]  # the tool's, no longer declared
        assert fleet.sh("host3", f"sha256sum {root}/a.safetensors").split()[0] == sha_a
        assert fleet.sh("host3", f"ls {root}").split() == ["a.safetensors", "foreign.safetensors"]
        assert models["space"]["checkpoints"] == size_a + len("mine\n")
        # A flip that keeps size and time passes the marker; --verify-full re-hashes and finds it.
        fleet.sh("host3", f"cp -p {root}/a.safetensors /tmp/ref && printf 'X' | dd of={root}/a.safetensors "
                          f"conv=notrunc 2>/dev/null && touch -r /tmp/ref {root}/a.safetensors")
        proc, run_id = maintain(fleet, inv)
        assert fleet.result(run_id, "host3").report["models"]["installed"] == []
        proc, run_id = maintain(fleet, inv, "--verify-full")
        assert_ok(proc)
        assert fleet.result(run_id, "host3").report["models"]["installed"] == ["checkpoints/a.safetensors"]
        assert fleet.sh("host3", f"sha256sum {root}/a.safetensors").split()[0] == sha_a
    finally:
        proc_mirror.kill()


def test_a_pinned_ollama_model_whose_digest_drifted_is_reported_and_pulled_back(fleet, tmp_path):
    import urllib.request

    api = f"http://{fleet.spec.host('host3').address}:11434"

    def tags() -> dict[str, str]:
        with urllib.request.urlopen(f"{api}/api/tags", timeout=10) as resp:
            return {m["name"]: m["digest"] for m in json.load(resp)["models"]}

    pull = urllib.request.Request(f"{api}/api/pull", data=json.dumps({"model": "smollm2:135m", "stream": False}).encode())
    urllib.request.urlopen(pull, timeout=60).read()
    digest = tags()["smollm2:135m"]  # what the registry (the stand-in's catalog) gives: the pin
    inv = inventory(fleet, tmp_path, {"host3": {"models": [{"ollama": f"smollm2:135m@sha256:{digest}"}]}})
    proc, run_id = maintain(fleet, inv)
    assert_ok(proc)
    assert fleet.result(run_id, "host3").report["models"]["present"] == ["ollama/smollm2:135m"]
    # Someone pulls the tag by hand and gets another model under it: the host's tag now names other bytes.
    other = "b" * 64
    fleet.sh("host3", "sed -i 's/\"digest\": \"[0-9a-f]*\"/\"digest\": \"" + other + "\"/' "
                      "/var/lib/ollama/models/manifests/smollm2__135m")
    assert tags()["smollm2:135m"] == other
    proc, run_id = maintain(fleet, inv)
    assert_ok(proc)
    report = fleet.result(run_id, "host3").report
    drift = f"ollama/smollm2:135m: /api/tags has digest {other[:12]}, declared {digest[:12]}"
    assert report["models"]["drifted"] == [drift]
    assert f"model digest drifted: {drift}" in report["warnings"]
    assert f"host3: warning: model digest drifted: {drift}" in " ".join(proc.stdout.split())
    assert report["models"]["installed"] == ["ollama/smollm2:135m"] and tags()["smollm2:135m"] == digest


def records(fleet, host: str) -> list[dict]:
    return [json.loads(line) for line in fleet.sh(host, f"cat {nixcmd.DEPLOY_LOG}").splitlines() if line]


def test_maintenance_skips_or_waits_for_a_deploy_and_never_interleaves(fleet, tmp_path):
    inv = inventory(fleet, tmp_path, {"host3": {}})
    fleet.configure("host3", "slow_activation=8")
    bump(fleet, "host3")
    deploy = subprocess.Popen(fleet.pyinfra_argv("deploys/prod.py", inventory=str(inv)), cwd=REPO,
                              env=fleet.env(IPEX_FLEET_RUN_ID="slow-deploy"), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: fleet.host_path("host3", "/var/lib/ipex-fleet/intent.json").exists(), 120)
        proc, skipped = maintain(fleet, inv)  # no wait: skipped, with the reason
        assert_ok(proc)
        result = fleet.result(skipped, "host3")
        assert result.status.value == "skipped"
        assert "maintenance skipped after waiting 0s" in result.error and "locked by run slow-deploy" in result.error
        assert re.search(r"host3 +skipped", proc.stdout)
        proc, waited = maintain(fleet, inv, "--lock-wait", "120")
        assert_ok(proc)
    finally:
        deploy.wait(timeout=300)
    assert_ok(deploy)
    assert fleet.result(waited, "host3").report["lock_waited_s"] > 0
    lines = [(r.get("run_id"), r.get("phase"), r.get("event") or r.get("status")) for r in records(fleet, "host3")]
    assert not [line for line in lines if line[0] == skipped]  # a skipped run writes nothing there
    mine = [i for i, line in enumerate(lines) if line[0] == waited]
    theirs = [i for i, line in enumerate(lines) if line[0] == "slow-deploy"]
    assert [lines[i][2] for i in mine] == ["start", "ok"] and [lines[i][2] for i in theirs] == ["ok"]
    assert theirs[0] < mine[0], lines  # the deploy ended before maintenance started


def test_drift_is_a_warning_with_its_trend_and_rebaseline_keeps_the_old_baseline(fleet, tmp_path):
    inv = inventory(fleet, tmp_path, {"host2": {"bench": True}})
    bump(fleet, "host2")
    proc, _ = fleet.deploy(inventory=str(inv))  # records the baseline (or passes against it)
    assert_ok(proc)
    fleet.configure("host2", "cpu_hog=1")  # a generation that starves the benchmark, deployed past the gate
    proc, _ = fleet.deploy(inventory=str(inventory(fleet, tmp_path, {"host2": {}}, "nobench.py")))
    assert_ok(proc)
    before = fleet.system("host2")
    proc, run_id = maintain(fleet, inv, "--quick-bench")
    assert_ok(proc)
    result = fleet.result(run_id, "host2")
    assert result.status.value == "ok" and fleet.system("host2") == before  # the deployment is untouched
    drift = result.report["tasks"]["drift"]
    assert drift["result"] == "fail"
    slow = [c for c in drift["cases"] if c["verdict"] == "fail"]
    assert slow and all(c["ratio"] < 0.85 and len(c["trend"]) >= 2 and c["trend"][-1] == round(c["ratio"], 4)
                        for c in slow), slow
    warnings = result.report["warnings"]
    assert any(w.startswith("benchmark drift: ") and "of baseline" in w and "trend over" in w for w in warnings)
    assert "warning: benchmark drift" in proc.stdout
    # --rebaseline on this (healthy) host: the new baseline, the old one kept in the history.
    old = json.loads(fleet.sh("host2", "cat /var/lib/ipex-fleet/bench/baseline.json"))
    proc, run_id = maintain(fleet, inv, "--quick-bench", "--rebaseline")
    assert_ok(proc)
    assert fleet.result(run_id, "host2").report["tasks"]["drift"]["rebaselined"] is True
    history = [json.loads(l) for l in fleet.sh("host2", "cat /var/lib/ipex-fleet/bench/history.jsonl").splitlines()]
    assert any(h.get("verdict") == "rebaselined" and h["previous_baseline"] == old for h in history)
    assert json.loads(fleet.sh("host2", "cat /var/lib/ipex-fleet/bench/baseline.json")) != old


def test_update_locks_the_labs_new_release_and_the_rollout_deploys_it_in_waves(fleet):
    lock = fleet.lab.layout.flake_dir / "flake.lock"

    def locked() -> str:
        return json.loads(lock.read_text())["nodes"]["labpkgs"]["locked"]["narHash"]

    def update(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ipex-fleet"), "update", "inventories/lab.py", *args], cwd=REPO,
                              env=fleet.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)

    first = locked()
    proc = update()
    assert proc.returncode == 0 and "nothing to roll out" in proc.stdout, proc.stdout
    assert locked() == first
    before = {h: fleet.system(h) for h in ("host1", "host2", "host3")}
    fleet.lab.release()
    proc = update("--rollout")
    assert_ok(proc)
    assert locked() != first
    assert f"labpkgs: {first[:20]} -> {locked()[:20]}" in proc.stdout
    # The plan before the rollout: every host changes, none needs a reboot.
    plan = proc.stdout.split("ipex-fleet rollout inventories/lab.py deploys/prod.py")[0]
    assert "3 host(s) planned" in plan and plan.count("reboot needed: no") >= 1 and "reboot needed: yes" not in plan
    out = proc.stdout
    assert out.index("wave 1 canary") < out.index("wave 2 wave1") < out.index("wave 3 wave2")
    assert re.search(r"^rollout rollout-\S+: done$", out, re.M)
    for host, (number, path, _) in before.items():
        now, new_path, running = fleet.system(host)
        assert now == number + 1 and new_path != path and running == new_path
    # The update's rollout carried the new input to each host: it is valid in their stores.
    store_path = json.loads(subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "flake", "archive", "--json",
         f"path:{fleet.lab.layout.flake_dir}"], env={**fleet.env(), "NIX_CONF_DIR": str(fleet.lab.layout.nix_conf_dir)},
        capture_output=True, text=True, timeout=120, check=True).stdout)["inputs"]["labpkgs"]["path"]
    for host in before:
        assert fleet.sh(host, f"nix-store --check-validity {store_path} && echo valid") == "valid"


def test_restarts_go_wave_by_wave_and_a_host_that_does_not_come_back_halts_the_waves(fleet, tmp_path):
    inv = tmp_path / "waves.py"
    inv.write_text(
        "from ipex_fleet.lab.inventory import lab_hosts\n"
        "_all = [(n, {**d, 'bench': False, 'health_levels': [1], 'min_free_mb': 64, 'command_timeout': 30})"
        f" for n, d in lab_hosts({str(fleet.lab.layout.root)!r})]\n"
        "canary = _all[:1]\nwave1 = _all[1:2]\nwave2 = _all[2:3]\n")
    pids = {h: fleet.sh(h, "systemctl show -p MainPID --value comfyui.service") for h in ("host1", "host2", "host3")}
    # host2's ComfyUI will not start again (as a broken driver would leave it): a runtime drop-in.
    fleet.sh("host2", "mkdir -p /run/systemd/system/comfyui.service.d && printf '[Service]\\nExecStartPre=/bin/false\\n'"
                      " > /run/systemd/system/comfyui.service.d/broken.conf && systemctl daemon-reload")
    try:
        proc = subprocess.run([str(BIN / "ipex-fleet"), "maintain", str(inv), "--restart"], cwd=REPO,
                              env=fleet.env(COLUMNS="100"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=600)
    finally:
        fleet.sh("host2", "rm -rf /run/systemd/system/comfyui.service.d && systemctl daemon-reload && "
                          "systemctl restart comfyui.service")
    assert proc.returncode != 0, proc.stdout
    run_id = re.search(r"^maintain (maintain-\S+): halted$", proc.stdout, re.M).group(1)
    first = fleet.result(run_id, "host1")
    assert first.status.value == "ok"
    assert first.report["tasks"]["restarts"]["restarted"] == ["ollama.service", "comfyui.service"]
    assert fleet.sh("host1", "systemctl show -p MainPID --value comfyui.service") != pids["host1"]
    broken = fleet.result(run_id, "host2")
    assert broken.status.value == "failed" and "after the restarts the host is not healthy" in broken.error
    assert "comfyui.service did not restart" in broken.error
    assert broken.final.number == broken.previous.number  # maintenance never rolls back
    assert not (fleet.state / "runs" / run_id / "hosts" / "host3.json").exists()  # its wave never started
    assert fleet.sh("host3", "systemctl show -p MainPID --value comfyui.service") == pids["host3"]
    assert re.search(r"wave2 +host3 +not run", proc.stdout)


def test_tmpfiles_ages_clean_and_an_unhealthy_host_is_never_rebaselined(fleet, tmp_path):
    # systemd-tmpfiles' own rule and age (1 s here) decide what goes; the task only runs its --clean.
    fleet.sh("host1", "printf 'd /var/tmp/ipex-test 1777 root root 1s\\n' > /etc/tmpfiles.d/ipex-test.conf && "
                      "systemd-tmpfiles --create /etc/tmpfiles.d/ipex-test.conf && "
                      "head -c 2000000 /dev/zero > /var/tmp/ipex-test/old && sleep 2")
    # host1's ComfyUI is down and will not start: the host is unhealthy.
    fleet.sh("host1", "mkdir -p /run/systemd/system/comfyui.service.d && printf '[Service]\\nExecStartPre=/bin/false\\n'"
                      " > /run/systemd/system/comfyui.service.d/broken.conf && systemctl daemon-reload && "
                      "(systemctl restart comfyui.service || true)")
    baseline = "/var/lib/ipex-fleet/bench/baseline.json"
    before = fleet.sh("host1", f"cat {baseline} 2>/dev/null || echo none")
    try:
        proc, run_id = maintain(fleet, inventory(fleet, tmp_path, {"host1": {"bench": True}}), "--rebaseline",
                                "--quick-bench")
    finally:
        fleet.sh("host1", "rm -rf /run/systemd/system/comfyui.service.d /etc/tmpfiles.d/ipex-test.conf && "
                          "systemctl daemon-reload && systemctl restart comfyui.service")
    assert proc.returncode != 0, proc.stdout
    result = fleet.result(run_id, "host1")
    assert result.status.value == "failed" and "health checks failed" in result.error
    assert "drift" not in result.report["tasks"]  # the benchmark never ran
    assert fleet.sh("host1", f"cat {baseline} 2>/dev/null || echo none") == before
    assert "rebaselined" not in fleet.sh("host1", "cat /var/lib/ipex-fleet/bench/history.jsonl 2>/dev/null || true")
    tmp = result.report["tasks"]["tmp"]
    assert fleet.sh("host1", "ls /var/tmp/ipex-test") == ""
    assert tmp["before_bytes"] - tmp["after_bytes"] >= 1_900_000


def test_nothing_to_do_is_unchanged_after_one_look_and_cleans_tmp_at_most_hourly(fleet, tmp_path):
    """Housekeeping only, on real hosts: a host as the last maintenance left it is `unchanged` without
    the lock or a record; its temporary files are cleaned by the look unless maintenance cleaned them
    within the hour; a pushed flake aged past keep_days sends it down the full path again."""
    inv = inventory(fleet, tmp_path, {"host3": {"health_levels": [], "models": [], "keep_days": 1}})
    assert_ok(maintain(fleet, inv)[0])  # whatever the lab left behind goes now
    records = fleet.sh("host3", f"wc -l < {nixcmd.DEPLOY_LOG}")
    proc, run_id = maintain(fleet, inv)
    assert_ok(proc)
    result = fleet.result(run_id, "host3")
    assert result.status.value == "unchanged" and "nothing_to_do" in result.report, result
    assert result.report["tasks"]["tmp"] == {"cleaned_within_min": 60}  # the full run before cleaned them
    assert fleet.sh("host3", f"wc -l < {nixcmd.DEPLOY_LOG}") == records  # no record, and no lock taken
    assert fleet.sh("host3", "ls /var/lib/ipex-fleet/lock 2>/dev/null || echo none") == "none"

    # Two hours since the last cleaning: the look cleans them (systemd-tmpfiles' own ages decide).
    fleet.sh("host3", "printf 'd /var/tmp/ipex-look 1777 root root 1s\\n' > /etc/tmpfiles.d/ipex-look.conf && "
                      "systemd-tmpfiles --create /etc/tmpfiles.d/ipex-look.conf && "
                      "head -c 1000000 /dev/zero > /var/tmp/ipex-look/old && sleep 2 && "
                      "touch -d '-2 hours' /var/lib/ipex-fleet/tmp-cleaned")
    try:
        proc, run_id = maintain(fleet, inv)
    finally:
        fleet.sh("host3", "rm -rf /etc/tmpfiles.d/ipex-look.conf /var/tmp/ipex-look")
    assert_ok(proc)
    result = fleet.result(run_id, "host3")
    assert result.status.value == "unchanged", result
    tmp = result.report["tasks"]["tmp"]
    assert tmp["before_bytes"] - tmp["after_bytes"] >= 900_000, tmp

    # A pushed flake older than keep_days: the full path, which prunes it and writes its record.
    fleet.sh("host3", "mkdir -p /var/lib/ipex-fleet/flake/0ld && touch -d '-3 days' /var/lib/ipex-fleet/flake/0ld")
    proc, run_id = maintain(fleet, inv)
    assert_ok(proc)
    result = fleet.result(run_id, "host3")
    assert result.status.value == "ok" and "/var/lib/ipex-fleet/flake/0ld" in result.report["tasks"]["pushed"]["removed"]
    assert fleet.sh("host3", "ls /var/lib/ipex-fleet/flake/0ld 2>/dev/null || echo gone") == "gone"
