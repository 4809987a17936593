"""A flake directory as content: its hash (the push address) and a deterministic tarball."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

EXCLUDED = {".git", "__pycache__", ".direnv", "result"}


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED)
        for name in sorted(filenames):
            if name not in EXCLUDED and not name.startswith("result-"):
                out.append(Path(dirpath) / name)
    return out


def flake_hash(root: str) -> str:
    """sha256 over every file's relative path, mode and content, in a stable order."""
    base = Path(root)
    digest = hashlib.sha256()
    for path in _files(base):
        rel = path.relative_to(base).as_posix()
        digest.update(rel.encode() + b"\0")
        if path.is_symlink():
            digest.update(b"L" + os.readlink(path).encode())
        else:
            digest.update(b"X" if os.access(path, os.X_OK) else b"F")
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def flake_tarball(root: str) -> bytes:
    """A gzip tarball of the flake with fixed owners and times, so equal content packs equally."""
    base = Path(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path in _files(base):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(base).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()
