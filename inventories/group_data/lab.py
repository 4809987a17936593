"""The lab's hosts: small, local and fast, so failures show within seconds."""

min_free_mb = 64
command_timeout = 20
build_timeout = 300
activation_timeout = 60
# Lab hosts share one noisy 2-core VM: a wider tolerance than production's 15% keeps healthy
# generations from false failures, while a starved CPU (lab knob cpu_hog) is far slower still.
bench_tolerance = 0.25
# ...and one thread each: two threads on a shared pair of cores swing wildly when a neighbour runs.
bench_threads = 1
# An inconclusive benchmark is a warning in the lab, not a rollback (lab_hosts sets bench_inconclusive:
# other labs and test runs share the same two cores); a starved CPU still fails outright.
# Hosts take turns on the benchmark (the lab's bench_lock): the last of ten waits for nine others'
# runs, a new baseline being three of them.
bench_timeout = 900
