"""The rollout's final table: a 10-host rollout stays readable in an 80-column terminal (rendered by
rich at 80 columns, as a recording console captures it): no line is wider, every host has its row
with its status, generations, health, benchmark and time, and long errors fold instead of vanishing."""

from __future__ import annotations

import io
import re

from ipex_fleet.views.live import Live
from ipex_fleet.domain import Generation, HostResult, Status
from ipex_fleet.ledger.results import write_host_result
from ipex_fleet.fleet.engine import Rollout, RolloutOptions
from ipex_fleet.ledger.runs import Ledger
from ipex_fleet.fleet.waves import Wave

HOSTS = [f"gpu-node-{i:02d}" for i in range(1, 11)]
ERROR = ("health checks on the new generation: health checks failed: accelerator: expected 2 xpu devices, "
         "torch sees 1 (ZE_AFFINITY_MASK=0); comfyui: comfyui.service failed: Torch not compiled with CUDA enabled")


def test_a_ten_host_rollout_summary_fits_80_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("IPEX_FLEET_STATE", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "80")
    ledger = Ledger()
    run_id = "rollout-20261122T050000Z-abcdef"
    ledger.start_run(run_id, "rollout", "inventories/prod.py", "deploys/prod.py", {})
    waves = [Wave(0, "canary", tuple(HOSTS[:1]), "0"), Wave(1, "wave1", tuple(HOSTS[1:4]), "1"),
             Wave(2, "wave2", tuple(HOSTS[4:]), "10%")]
    for i, host in enumerate(HOSTS[:-1]):  # the last host never ran: the rollout halted before it
        bad = host == "gpu-node-03"
        result = HostResult(
            host, run_id, Status.ROLLED_BACK if bad else Status.OK, Generation(41, "/a"), Generation(42, "/b"),
            Generation(41 if bad else 42, "/b"),
            health={"result": "fail" if bad else "pass",
                    "failing": ["accelerator: expected 2 xpu devices", "comfyui: comfyui.service failed"] if bad else []},
            bench={"result": "pass", "baseline_recorded": False, "comparisons": []} if not bad else None,
            timings={"build": 31.5, "switch": 4.25 + i}, error=ERROR if bad else None)
        write_host_result(result)
        ledger.record(result, "deploy", 0 if i == 0 else (1 if i < 4 else 2), run_id=run_id)
    ledger.finish_run(run_id, "halted")
    out = io.StringIO()
    Rollout(RolloutOptions("inventories/prod.py", "deploys/prod.py"), run_id, ledger, Live(None, out)).summary(waves)
    lines = out.getvalue().splitlines()

    assert lines and max(len(line) for line in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    for host in HOSTS:
        row = next(line for line in lines if re.match(rf"\S+\s+{host}\s", line))
        if host == "gpu-node-03":
            assert "rolled_back" in row and "41→41" in row and "fail" in row
            assert any(line.startswith("gpu-node-03: health checks") for line in lines)
        elif host == "gpu-node-10":
            assert "not run" in row
        else:
            assert "ok" in row and "41→42" in row and "pass" in row and re.search(r"\d+s", row)
    # The long error folds over several lines: every word of it is still there.
    assert all(word in text for word in ("ZE_AFFINITY_MASK=0);", "comfyui.service", "Torch", "CUDA", "enabled"))
    assert lines[-1] == f"rollout {run_id}: halted"
    assert "\x1b[" not in text, "plain text when the output is not a terminal"
