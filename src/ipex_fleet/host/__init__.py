"""What runs on a GPU host: the probe, the bench, the model installer, the textfile metrics and the host agent of the
safety net. It imports only the standard library, torch, prometheus-client, ipex_fleet.common and itself
(tests/test_host_side.py imports every module in an environment holding just those)."""
