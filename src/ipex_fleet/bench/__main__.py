"""`python -m ipex_fleet.bench`: the contract's entry point (see __init__)."""

import runpy

runpy.run_module("ipex_fleet.host.bench", run_name="__main__", alter_sys=True)
