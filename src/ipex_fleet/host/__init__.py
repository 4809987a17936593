"""What runs on a GPU host: the host agent of the safety net (stdlib only; copied to hosts by content
hash), and, in time, the probe, the bench and the model installer (issue 27)."""
