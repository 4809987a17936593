"""`python -m ipex_fleet.probe`: the contract's entry point (see __init__)."""

import runpy

runpy.run_module("ipex_fleet.host.probe", run_name="__main__", alter_sys=True)
