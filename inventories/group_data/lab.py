"""The lab's hosts: small, local and fast, so failures show within seconds."""

min_free_mb = 64
command_timeout = 20
build_timeout = 300
activation_timeout = 60
