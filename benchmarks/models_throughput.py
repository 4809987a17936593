#!/usr/bin/env python3
"""Model installation figures, over loopback from the lab's Range mirror:

- install throughput of a 512 MiB model against `curl -o f && sha256sum f` of the same file;
- a run that changes nothing for 10 declared models totalling at least 5 GiB: time and bytes read.

    .venv/bin/python benchmarks/models_throughput.py [--dir /srv/ipex-fleet-models-bench]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from ipex_fleet.host.models.install import install  # noqa: E402
from ipex_fleet.host.models.manifest import FileModel, ModelPlan  # noqa: E402


def make(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(8 << 20, left))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def read_bytes_of(pid: int) -> int:
    for line in open(f"/proc/{pid}/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dir", default="/srv/ipex-fleet-models-bench")
    args = p.parse_args()
    base = Path(args.dir)
    shutil.rmtree(base, ignore_errors=True)
    mirror, models = base / "mirror", base / "models"
    mirror.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    big = 512 << 20
    sha_big = make(mirror / "big.safetensors", big)
    server = subprocess.Popen([sys.executable, "-m", "ipex_fleet.lab.mirror", "--dir", str(mirror), "--port", str(port)])
    time.sleep(1)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        subprocess.run(f"curl -s -o {base}/curl.bin {url}/big.safetensors && sha256sum {base}/curl.bin",
                       shell=True, check=True, capture_output=True)
        curl_s = time.monotonic() - t0
        plan = ModelPlan(files=(FileModel("checkpoints", "big.safetensors", f"{url}/big.safetensors", sha_big, big),))
        t0 = time.monotonic()
        report = install(plan, models, None, lambda _l: None)
        ours_s = time.monotonic() - t0
        assert not report.failed, report.failed
        print(f"512 MiB: ipex-fleet install {ours_s:.2f}s ({big / ours_s / (1 << 20):.0f} MiB/s); curl -o && sha256sum "
              f"{curl_s:.2f}s ({big / curl_s / (1 << 20):.0f} MiB/s); ratio ours/curl {ours_s / curl_s:.2f}x")
        files = []
        each = 520 << 20  # 10 x 520 MiB = 5.08 GiB
        for i in range(10):
            files.append(FileModel("diffusion_models", f"m{i}.safetensors", f"{url}/m{i}.safetensors",
                                   make(mirror / f"m{i}.safetensors", each), each))
        plan = ModelPlan(files=tuple(files))
        report = install(plan, models, None, lambda _l: None)
        assert not report.failed and len(report.installed) == 10, report.failed
        rchar0 = read_bytes_of(os.getpid())
        t0 = time.monotonic()
        report = install(plan, models, None, lambda _l: None)
        elapsed = time.monotonic() - t0
        rchar = read_bytes_of(os.getpid()) - rchar0
        print(f"no-change run, 10 models, {10 * each / (1 << 30):.2f} GiB declared: {elapsed * 1000:.1f} ms, "
              f"{report.bytes_hashed} bytes hashed, {report.bytes_downloaded} bytes downloaded, "
              f"{rchar} bytes read by the process (markers and stat only)")
    finally:
        server.kill()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
