"""Install a model plan on this host (stdlib only: it runs on hosts).

File models: download into a hidden `.NAME.part` beside the target (same filesystem, and not a
model extension, so ComfyUI never lists it), hash while downloading, resume with Range, retry with
backoff, check size and sha256, then rename into place. A verified marker (sha256, size, mtime)
spares the next run from re-hashing. Ollama models go through the host's Ollama API.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ipex_fleet.common import redact
from ipex_fleet.host.models import ollama
from ipex_fleet.host.models.manifest import FileModel, ModelPlan, OllamaModel

CHUNK = 1 << 20
MARKER_DIR = ".ipex-fleet"


class InstallError(Exception):
    pass


@dataclass
class Report:
    installed: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    drifted: list[str] = field(default_factory=list)  # pinned Ollama models found under another digest
    bytes_downloaded: int = 0
    bytes_hashed: int = 0
    space: dict[str, int] = field(default_factory=dict)  # bytes in each model folder, afterwards

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Progress:
    """Percent and rate, at most every 10% or every 10 seconds: long downloads show without flooding."""

    def __init__(self, label: str, total: int | None, say: Callable[[str], None]) -> None:
        self.label, self.total, self.say = label, total, say
        self.started = time.monotonic()
        self.last_time = self.started
        self.last_pct = -10

    def update(self, done: int, start: int = 0) -> None:
        now = time.monotonic()
        pct = int(done * 100 / self.total) if self.total else 0
        if pct >= self.last_pct + 10 or now - self.last_time >= 10:
            rate = (done - start) / max(now - self.started, 1e-6) / (1 << 20)
            self.say(f"{self.label}: {pct}% of {_mib(self.total)} at {rate:.1f} MiB/s")
            self.last_pct, self.last_time = pct, now


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):.1f} MiB"


def marker_path(root: Path, model: FileModel) -> Path:
    return root / MARKER_DIR / model.kind / f"{model.name}.json"


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _hash_file(path: Path, report: Report, limit: int | None = None) -> tuple[Any, int]:
    digest, done = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while limit is None or done < limit:
            block = f.read(CHUNK if limit is None else min(CHUNK, limit - done))
            if not block:
                break
            digest.update(block)
            done += len(block)
    report.bytes_hashed += done
    return digest, done


def is_current(root: Path, model: FileModel, verify: bool, report: Report) -> bool:
    """True when the file in place is the declared one (by marker, or by a full re-hash with verify)."""
    target = root / model.kind / model.name
    marker = read_marker(marker_path(root, model))
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    if not verify:
        return bool(marker) and marker.get("sha256") == model.sha256 and marker.get("size") == st.st_size \
            and marker.get("mtime_ns") == st.st_mtime_ns
    digest, _ = _hash_file(target, report)
    return digest.hexdigest() == model.sha256


def _content_length(url: str, timeout: float) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as resp:
            value = resp.headers.get("Content-Length")
            return int(value) if value else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def download(model: FileModel, part: Path, report: Report, say: Callable[[str], None], timeout: float,
              retries: int) -> Any:
    """Fetch into `part`, resuming what is there; return the sha256 state of the whole file."""
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        digest, have = _hash_file(part, report) if have else (hashlib.sha256(), 0)
        request = urllib.request.Request(model.url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                if have and resp.status != 206:  # the server ignored Range: start over
                    digest, have = hashlib.sha256(), 0
                    part.unlink()
                total = model.size or (int(resp.headers["Content-Length"]) + have
                                       if resp.headers.get("Content-Length") else None)
                progress = Progress(f"{model.kind}/{model.name}", total, say)
                if have:
                    say(f"{model.kind}/{model.name}: resuming at {_mib(have)}")
                with open(part, "ab") as f:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        f.write(block)
                        digest.update(block)
                        have += len(block)
                        report.bytes_downloaded += len(block)
                        progress.update(have)
                    f.flush()
                    os.fsync(f.fileno())
            if model.size is not None and have < model.size:
                raise InstallError(f"the download ended at {have} of {model.size} bytes")
            return digest
        except (urllib.error.URLError, OSError, InstallError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code in (403, 404, 410):
                raise InstallError(f"{redact.url(model.url)}: HTTP {exc.code}") from None
            attempt += 1
            if attempt > retries:
                raise InstallError(redact.text(f"{model.url}: {exc} (gave up after {retries} retries)")) from None
            delay = min(2 ** (attempt - 1), 30)
            say(f"{model.kind}/{model.name}: {exc}; retrying in {delay}s")
            time.sleep(delay)


def install_file(root: Path, model: FileModel, report: Report, say: Callable[[str], None], verify: bool = False,
                 timeout: float = 60, retries: int = 5) -> None:
    label = f"{model.kind}/{model.name}"
    if is_current(root, model, verify, report):
        report.present.append(label)
        return
    folder = root / model.kind
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{model.name}.part"
    pushed = pushed_path(root, model)
    needed = None if pushed.exists() else (model.size if model.size is not None
                                           else _content_length(model.url, timeout))
    if needed is not None:
        have = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(folder).free
        if needed - have > free:
            raise InstallError(f"{label}: needs {_mib(needed - have)} but {folder} has {_mib(free)} free; "
                               "free space or move the models path")
    if pushed.exists():  # models_source: controller put the bytes here over SFTP
        os.replace(pushed, part)
        digest, _ = _hash_file(part, report)
    else:
        digest = download(model, part, report, say, timeout, retries)
    size = part.stat().st_size
    if digest.hexdigest() != model.sha256 or (model.size is not None and size != model.size):
        part.unlink()
        raise InstallError(f"{label}: sha256 {digest.hexdigest()[:16]}... ({size} bytes) does not match the "
                           f"declared {model.sha256[:16]}...; the file in place (if any) is untouched")
    target = folder / model.name
    os.replace(part, target)
    st = target.stat()
    marker = marker_path(root, model)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sha256": model.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                               "url": redact.url(model.url), "installed_by": "ipex-fleet"}))
    os.replace(tmp, marker)
    report.installed.append(label)
    say(f"{label}: installed ({_mib(st.st_size)})")


def prune(root: Path, plan: ModelPlan, report: Report, say: Callable[[str], None]) -> None:
    declared = {(m.kind, m.name) for m in plan.files}
    for kind in plan.prune:
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith(".") or (kind, path.name) in declared:
                continue
            marker = root / MARKER_DIR / kind / f"{path.name}.json"
            ours = bool(read_marker(marker))
            if not ours and not plan.prune_foreign:
                continue  # not installed by ipex-fleet: left alone unless told otherwise
            path.unlink()
            marker.unlink(missing_ok=True)
            report.pruned.append(f"{kind}/{path.name}")
            say(f"{kind}/{path.name}: pruned (no longer declared)")


def _digest(value: str | None) -> str:
    return (value or "").lower().removeprefix("sha256:")


def install_ollama(url: str, models: list[OllamaModel], report: Report, say: Callable[[str], None], timeout: float,
                   retry_delay: float = 1.0) -> None:
    """Pull what /api/tags lacks; a pinned model must then show its declared digest there, or it fails
    (and a model this run pulled under the wrong digest is deleted, so it never serves)."""
    api = ollama.Api(url, timeout)
    try:
        tags = ollama.tags(api)
    except ollama.OllamaError as exc:
        raise InstallError(str(exc)) from None
    for model in models:
        full = model.name if ":" in model.name.rsplit("/", 1)[-1] else f"{model.name}:latest"
        had = _digest(tags.get(full))
        if had and (not model.digest or had == model.digest):
            report.present.append(f"ollama/{full}")
            continue
        if had:  # pinned, and the host holds another digest under that tag
            report.drifted.append(f"ollama/{full}: /api/tags has digest {had[:12]}, declared {model.digest[:12]}")
            say(f"ollama/{full}: digest {had[:12]} drifted from the declared {model.digest[:12]}; pulling it again")
        progress: list[Progress] = []

        def show(done: int, total: int, full: str = full, progress: list[Progress] = progress) -> None:
            if not progress or progress[0].total != total:  # each layer has its own total
                progress[:] = [Progress(f"ollama/{full}", total, say)]
            progress[0].update(done)

        try:
            ollama.pull(api, full, say, show, delay=retry_delay)
            got = _digest(ollama.tags(api).get(full))
        except ollama.OllamaError as exc:
            raise InstallError(str(exc)) from None
        if not got:
            raise InstallError(f"ollama pull {full} said success, but /api/tags has no digest for it")
        if model.digest and got != model.digest:
            kept = "the model it replaced is gone too" if had else "it was deleted again"
            if not had:
                try:
                    ollama.delete(api, full)
                except ollama.OllamaError as exc:
                    kept = f"deleting it failed: {exc}"
            raise InstallError(f"ollama pull {full}: got digest {got[:12]}, but {model.digest[:12]} is declared "
                               f"(the tag now names another model upstream; {kept}); pin the new digest once "
                               "it is checked, or keep the old model")
        report.installed.append(f"ollama/{full}")
        say(f"ollama/{full}: pulled, digest {got[:12]}")


def install(plan: ModelPlan, root: Path, ollama_url: str | None, say: Callable[[str], None],
            verify: bool = False, timeout: float = 60) -> Report:
    report = Report()
    for model in plan.files:
        try:
            install_file(root, model, report, say, verify, timeout)
        except InstallError as exc:
            report.failed.append(str(exc))
            say(f"FAILED {exc}")
    if plan.ollama:
        if not ollama_url:
            report.failed.append("Ollama models are declared, but this host has no Ollama service configured")
        else:
            try:
                install_ollama(ollama_url, list(plan.ollama), report, say, timeout)
            except InstallError as exc:
                report.failed.append(str(exc))
                say(f"FAILED {exc}")
    if not report.failed:
        prune(root, plan, report, say)  # only once everything declared is in place
    report.space = folder_space(root)
    return report


def folder_space(root: Path) -> dict[str, int]:
    """Bytes of the files in each model folder (hidden ones included: a .part takes space too)."""
    space = {}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != MARKER_DIR):
            space[folder.name] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return space


def pushed_path(root: Path, model: FileModel) -> Path:
    """Where a controller push lands: hidden, beside the target, picked up by install_file."""
    return root / model.kind / f".{model.name}.pushed"


def needs(plan: ModelPlan, root: Path) -> dict[str, Any]:
    """The files of the plan that are not in place (by marker, no hashing), and the free space."""
    missing = [m for m in plan.files if not is_current(root, m, False, Report())]
    folder = root if root.exists() else root.parent
    return {"root": str(root), "free": shutil.disk_usage(folder).free,
            "missing": [{"kind": m.kind, "name": m.name, "size": m.size, "push_to": str(pushed_path(root, m))}
                        for m in missing]}
