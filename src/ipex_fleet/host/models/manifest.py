"""The model manifest (YAML, or inline host data `models:`), validated into frozen values.

Every error is one line naming the entry and what to fix, raised before any host is touched.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from ipex_fleet.common import redact
from ipex_fleet.common.errors import UserError

KINDS = ("checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "controlnet", "upscale_models",
         "embeddings", "clip_vision")
EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")
_PART = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,254}$")


@dataclass(frozen=True)
class FileModel:
    kind: str
    name: str
    url: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class OllamaModel:
    name: str
    digest: str | None = None  # the manifest digest it must have (64 hex), as /api/tags shows it

    def to_json(self) -> str:
        return f"{self.name}@sha256:{self.digest}" if self.digest else self.name

    @classmethod
    def from_json(cls, text: str) -> "OllamaModel":
        name, _, digest = text.partition("@sha256:")
        return cls(name, digest or None)


@dataclass(frozen=True)
class ModelPlan:
    files: tuple[FileModel, ...] = ()
    ollama: tuple[OllamaModel, ...] = ()
    prune: tuple[str, ...] = ()  # kinds whose undeclared, tool-installed files are removed
    prune_foreign: bool = False  # ...and files the tool did not install too
    source: str = "mirror"  # mirror (the host downloads) | controller (pushed over SFTP)

    def to_json(self) -> dict[str, Any]:
        return {"files": [asdict(f) for f in self.files], "ollama": [o.to_json() for o in self.ollama],
                "prune": list(self.prune), "prune_foreign": self.prune_foreign, "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelPlan":
        return cls(tuple(FileModel(**f) for f in data.get("files", [])),
                   tuple(OllamaModel.from_json(n) for n in data.get("ollama", [])), tuple(data.get("prune", [])),
                   bool(data.get("prune_foreign")), data.get("source", "mirror"))


def check_ollama_name(name: str, where: str) -> str:
    """[host/][namespace/]model[:tag], parts of [A-Za-z0-9_.-], no '..', at most 128 characters each."""
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: ollama model name is missing")
    path, _, tag = name.partition(":")
    parts = path.split("/")
    if len(parts) > 3 or ".." in name or not all(_PART.fullmatch(p) for p in parts) or (tag and not _PART.fullmatch(tag)):
        raise UserError(f"{where}: {name!r} is not an Ollama model name ([host/][namespace/]model[:tag], "
                        "characters A-Z a-z 0-9 _ . -)")
    return name


def check_digest(digest: Any, where: str) -> str:
    """A manifest digest, `sha256:<64 hex>` or the 64 hex digits /api/tags shows; returned as the hex."""
    hexdigits = digest.lower().removeprefix("sha256:") if isinstance(digest, str) else ""
    if not _SHA256.fullmatch(hexdigits):
        raise UserError(f"{where}: digest {digest!r} must be sha256:<64 hex digits>, as `ollama list` or "
                        "/api/tags shows it")
    return hexdigits


def _ollama_entry(entry: dict[str, Any], where: str) -> OllamaModel:
    """{ollama: NAME}, {ollama: NAME@sha256:HEX}, or {ollama: NAME, digest: sha256:HEX}."""
    unknown = set(entry) - {"ollama", "digest"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; an Ollama entry has ollama and digest")
    text = entry["ollama"]
    name, at, pinned = text.partition("@") if isinstance(text, str) else (text, "", "")
    if at and "digest" in entry:
        raise UserError(f"{where}: give the digest once, as {name}@sha256:... or as digest:, not both")
    digest = pinned if at else entry.get("digest")
    return OllamaModel(check_ollama_name(name, where), check_digest(digest, where) if at or "digest" in entry else None)


def _file_entry(entry: dict[str, Any], where: str, trusted: tuple[str, ...]) -> FileModel:
    unknown = set(entry) - {"kind", "name", "url", "sha256", "size"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; a file model has kind, name, url, sha256, size")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise UserError(f"{where}: kind {kind!r} is not a ComfyUI model folder ({', '.join(KINDS)})")
    name = entry.get("name")
    if not isinstance(name, str) or "/" in name or "\\" in name or name in (".", "..") or name.startswith("/") \
            or ".." in name or not _FILE_NAME.fullmatch(name):
        raise UserError(f"{where}: name {name!r} must be a plain file name (no path, no '..')")
    if not name.endswith(EXTENSIONS):
        raise UserError(f"{where}: {name} must end in one of {', '.join(EXTENSIONS)}, or ComfyUI will not list it")
    sha = entry.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha.lower()):
        raise UserError(f"{where}: sha256 {sha!r} must be 64 hex digits")
    url = entry.get("url")
    if not isinstance(url, str) or not re.fullmatch(r"^https?://[^\s]+$", url):
        raise UserError(f"{where}: url {url!r} is not an http(s) URL")
    if not url.startswith("https://") and not any(url.startswith(t) for t in trusted):
        raise UserError(f"{where}: {redact.url(url)} is not https; use https, or list its mirror in host data "
                        "trusted_mirrors")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise UserError(f"{where}: size {size!r} must be a byte count")
    return FileModel(kind, name, url, sha.lower(), size)


def parse(entries: Any, origin: str, trusted: tuple[str, ...] = (), prune: Any = (), prune_foreign: bool = False,
          source: str = "mirror") -> ModelPlan:
    if not isinstance(entries, list):
        raise UserError(f"{origin}: models must be a list of entries")
    files, ollama, seen = [], [], set()
    for i, entry in enumerate(entries, 1):
        where = f"{origin} entry {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: each entry is a mapping ({{ollama: NAME}} or kind/name/url/sha256)")
        if "ollama" in entry:
            ollama.append(_ollama_entry(entry, where))
            continue
        model = _file_entry(entry, where, trusted)
        if (model.kind, model.name) in seen:
            raise UserError(f"{where}: {model.kind}/{model.name} is declared twice")
        seen.add((model.kind, model.name))
        files.append(model)
    prune_kinds = tuple(prune or ())
    bad = [k for k in prune_kinds if k not in KINDS]
    if bad:
        raise UserError(f"{origin}: prune {', '.join(bad)}: not ComfyUI model folders ({', '.join(KINDS)})")
    if source not in ("mirror", "controller"):
        raise UserError(f"{origin}: models_source {source!r}: use mirror or controller")
    return ModelPlan(tuple(files), tuple(ollama), prune_kinds, bool(prune_foreign), source)


def from_host_data(host: str, data: Any, root: str = ".") -> ModelPlan | None:
    """The host's model plan from `models_manifest: PATH` or inline `models:`; None if it has none."""
    from ipex_fleet.settings import flag

    trusted_value = data.get("trusted_mirrors") or ()
    if not isinstance(trusted_value, (list, tuple)) or not all(isinstance(m, str) for m in trusted_value):
        raise UserError(f"host {host}: trusted_mirrors={trusted_value!r} must be a list of URL prefixes, "
                        "like [\"http://mirror.lan/\"]")
    trusted = tuple(trusted_value)
    path = data.get("models_manifest")
    inline = data.get("models")
    if path and inline:
        raise UserError(f"host {host}: set models_manifest or models, not both")
    if not path and not inline:
        return None
    prune = data.get("models_prune") or ()
    foreign = flag("models_prune_foreign", host, data.get("models_prune_foreign", False))
    source = str(data.get("models_source") or "mirror")
    if inline:
        return parse(inline, f"host {host} models", trusted, prune, foreign, source)
    full = os.path.join(root, str(path))
    try:
        import yaml

        with open(full) as f:
            document = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"host {host}: models_manifest {path} does not exist (paths are relative to the repository root)") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(document, dict):
        prune = document.get("prune", prune)
        document = document.get("models")
    return parse(document, str(path), trusted, prune, foreign, source)
