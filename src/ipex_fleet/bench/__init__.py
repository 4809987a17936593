"""The contract's entry point (DESIGN.md, Contracts): `python -m ipex_fleet.bench` runs ipex_fleet.host.bench,
where the code lives (everything a host runs is under ipex_fleet/host/)."""
