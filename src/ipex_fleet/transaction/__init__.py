"""The one-host transaction (DESIGN.md, "One host's deploy is a transaction"). Read `flow` first:
the steps top to bottom, each declared with its timeout and lease; the modules beside it are the
parts the steps call (`core`: the record and the one way to run a command; `agentcalls`; `system`;
`activation`; `models`; `gates`; `rollback`)."""
