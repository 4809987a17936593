"""Staged rollouts: waves of pyinfra runs, failure budgets, revert, soak, resume, and the ledger."""
