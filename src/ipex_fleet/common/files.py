"""Files both sides write: a JSON file replaced atomically, the controller's state directory
(`.ipex-fleet/` or $IPEX_FLEET_STATE)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def state_dir() -> Path:
    return Path(os.environ.get("IPEX_FLEET_STATE") or ".ipex-fleet").absolute()


def write_json_atomic(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
