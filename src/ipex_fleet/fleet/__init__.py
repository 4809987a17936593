"""Fleet runs: the rollout engine with its waves, breaker and tally, the inventory, update, plan, selection,
drift, retention and probation."""
