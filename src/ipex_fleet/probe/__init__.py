"""The contract's entry point (DESIGN.md, Contracts): `python -m ipex_fleet.probe` runs ipex_fleet.host.probe,
where the code lives (everything a host runs is under ipex_fleet/host/)."""
