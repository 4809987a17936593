"""Maintenance, under the host's lock: retention and GC, old pushed flakes and records, journald and
temporary files, models, restarts, health and drift (ipex_fleet.maintsteps)."""

from pyinfra.api import deploy

from ipex_fleet import maintsteps, modelsteps, transaction

from .transaction import step


@deploy("Maintenance")
def maintenance() -> None:
    step("Take the lock (wait for a deploy, bounded, or skip); record the start", maintsteps.begin)
    step("Remove old pushed flakes and records; keep the generations the policy and the anchors name; "
         "collect garbage", maintsteps.retention)
    step("Vacuum the journal; clean temporary files", maintsteps.vacuum)
    step("Verify the declared models, fetch corrupt ones again, prune by policy", modelsteps.install_models)
    step("Restart the AI services (--restart), then probe", maintsteps.restart)
    step("Health levels 1-3 and the full benchmark: drift against baseline and history",
         maintsteps.health_and_drift)
    step("Record the end and release the lock", transaction.record)
