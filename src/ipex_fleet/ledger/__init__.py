"""What the controller remembers of its runs: the sqlite ledger (runs) and each host's result files (results)."""
