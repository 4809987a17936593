"""The controller's model cache (models_source: controller, for air-gapped hosts): each file is
fetched once, verified, and kept under .ipex-fleet/model-cache/<sha256> for every host's push."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import gevent.lock

from ipex_fleet.common.files import state_dir
from ipex_fleet.host.models.install import InstallError, Report, download
from ipex_fleet.host.models.manifest import FileModel

_LOCKS: dict[str, gevent.lock.BoundedSemaphore] = {}


def fetch(model: FileModel, say: Callable[[str], None], timeout: float = 60, retries: int = 5) -> Path:
    """The verified local copy of `model`, downloading it (resumably) the first time only."""
    lock = _LOCKS.setdefault(model.sha256, gevent.lock.BoundedSemaphore(1))
    with lock:  # hosts of one run share one download
        cache = state_dir() / "model-cache"
        target = cache / model.sha256
        if target.exists():
            return target
        cache.mkdir(parents=True, exist_ok=True)
        part = cache / f".{model.sha256}.part"
        digest = download(model, part, Report(), say, timeout, retries)
        if digest.hexdigest() != model.sha256:
            part.unlink()
            raise InstallError(f"{model.kind}/{model.name}: the mirror's file does not match the declared sha256")
        part.rename(target)
        return target
