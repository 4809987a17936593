"""python -m ipex_fleet.host.models install --plan FILE [--root DIR] [--ollama URL] [--verify] [--json]"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ipex_fleet.host import fleetconfig
from ipex_fleet.host.models.install import install, needs
from ipex_fleet.host.models.manifest import ModelPlan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ipex-fleet models", description=__doc__)
    p.add_argument("action", choices=("install", "needs"),
                   help="install the plan, or list (JSON) the files it lacks, for a controller push")
    p.add_argument("--plan", required=True, help="the plan JSON the controller uploaded")
    p.add_argument("--root", help="ComfyUI's models/ folder (default: from /etc/ipex-fleet/config.json)")
    p.add_argument("--ollama", help="Ollama's URL (default: from /etc/ipex-fleet/config.json)")
    p.add_argument("--verify", action="store_true", help="re-hash files in place instead of trusting markers")
    p.add_argument("--timeout", type=float, default=60, help="per-request network timeout")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    config = fleetconfig.load()
    services = config.services if config else {}
    root = args.root or (services["comfyui"].models if "comfyui" in services else None)
    ollama = args.ollama or (services["ollama"].url if "ollama" in services else None)
    plan = ModelPlan.from_json(json.loads(Path(args.plan).read_text()))
    if plan.files and not root:
        print("ipex-fleet models: error: no models path: give --root or install the fleet module", file=sys.stderr)
        return 2
    if args.action == "needs":
        print(json.dumps(needs(plan, Path(root or "."))), flush=True)
        return 0
    report = install(plan, Path(root or "."), ollama, lambda line: print(line, flush=True), args.verify, args.timeout)
    if args.json:
        print(json.dumps(report.to_json()), flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
