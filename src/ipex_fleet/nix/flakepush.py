"""A flake directory as content: its hash (the push address), a deterministic tarball, and the
checks that make what is pushed self-contained and reproducible.

A flake may list extra files in `push.json` (`include`: name in the pushed flake -> path relative
to the flake directory): the real flake carries the probe package's source this way, because a
flake pushed as a plain directory sees nothing outside it. The flake must have a `flake.lock`
whose every input is locked, so that each host builds the same revisions.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

EXCLUDED = {".git", "__pycache__", ".direnv", "result", ".pytest_cache"}
PUSH_FILE = "push.json"
LOCK_FILE = "flake.lock"


class FlakeError(ValueError):
    """The flake cannot be pushed as it is; the message says what to do."""


def _walk(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED)
        for name in sorted(filenames):
            if name not in EXCLUDED and not name.startswith("result-") and not name.endswith(".pyc"):
                out.append(Path(dirpath) / name)
    return out


def entries(root: str) -> list[tuple[str, Path]]:
    """(name in the pushed flake, file on the controller) for every file pushed, in a stable order."""
    base = Path(root)
    found = [(p.relative_to(base).as_posix(), p) for p in _walk(base)]
    for name, source in sorted(_includes(base).items()):
        origin = (base / source).resolve()
        if not origin.exists():
            raise FlakeError(f"{base / PUSH_FILE}: include {name!r} -> {source!r} does not exist")
        if origin.is_file():
            found.append((name, origin))
        else:
            found += [(f"{name}/{p.relative_to(origin).as_posix()}", p) for p in _walk(origin)]
    return sorted(found)


def _includes(base: Path) -> dict[str, str]:
    path = base / PUSH_FILE
    if not path.is_file():
        return {}
    try:
        include = json.loads(path.read_text()).get("include") or {}
    except ValueError as exc:
        raise FlakeError(f"{path}: not JSON ({exc})") from None
    for name in include:
        if name.startswith("/") or ".." in Path(name).parts:
            raise FlakeError(f"{path}: include name {name!r} must stay inside the flake")
    return {str(k): str(v) for k, v in include.items()}


def check_locked(root: str) -> None:
    """Refuse a flake without flake.lock, or with an input the lock does not pin."""
    path = Path(root) / LOCK_FILE
    if not path.is_file():
        raise FlakeError(f"flake {root} has no {LOCK_FILE}: run `nix flake lock` there (on a machine with "
                         "network) and commit it, so that every host builds the same locked inputs")
    try:
        lock = json.loads(path.read_text())
        nodes, root_name = lock["nodes"], lock["root"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FlakeError(f"{path} is not a flake lock ({exc}); run `nix flake lock` again") from None
    unlocked = sorted(name for name, node in nodes.items() if name != root_name and "locked" not in node)
    if unlocked:
        raise FlakeError(f"{path}: input(s) {', '.join(unlocked)} are not locked; run `nix flake lock`")
    # Inputs flake.nix declares (or that a locked input follows) with no node: the shipped lock pins
    # intel-xpu and leaves nixpkgs to the user, who locks it once, with network.
    locked_names = set((nodes.get(root_name) or {}).get("inputs") or {})
    missing = sorted((declared_inputs(root) - locked_names) | _dangling_follows(nodes, root_name))
    if missing:
        raise FlakeError(f"{path} locks no {', '.join(missing)}: run `nix flake lock {root}` on a machine with "
                         f"network (Nix 2.18+; it adds {', '.join(missing)} and keeps the locked inputs as they are) "
                         f"and commit {path}")


def _dangling_follows(nodes: dict, root_name: str) -> set[str]:
    """Root inputs that a `follows` (a path from the root) names and the root does not have."""
    root_inputs = (nodes.get(root_name) or {}).get("inputs") or {}
    return {ref[0] for node in nodes.values() for ref in ((node.get("inputs") or {}).values())
            if isinstance(ref, list) and ref and ref[0] not in root_inputs}


def declared_inputs(root: str) -> set[str]:
    """The input names flake.nix declares, read by Nix without evaluating the flake (empty when it
    cannot be read: the lock's own checks still apply)."""
    path = Path(root) / "flake.nix"
    try:
        stat = path.stat()
    except OSError:
        return set()
    return set(_declared_inputs(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=64)
def _declared_inputs(path: str, _mtime_ns: int, _size: int) -> tuple[str, ...]:
    """Asked of Nix once per content of flake.nix: the answer is kept on disk under it (a flake's
    inputs are a literal set in flake.nix itself, so its bytes decide them). Every pyinfra run checks
    the flake before touching a host; a Nix evaluation each time cost 0.1 s on a quiet controller
    and several seconds on a busy one, before the first host was reached."""
    from ipex_fleet.common.errors import CommandFailed
    from ipex_fleet.runner import run

    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]
    except OSError:
        return ()
    cached = _cache_base() / f"declared-inputs-{digest}.json"
    try:
        names = json.loads(cached.read_text())
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return tuple(names)
    except (OSError, ValueError):
        pass
    expr = f"builtins.attrNames ((import {path}).inputs or {{ }})"
    try:
        proc = run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], timeout=30, check=False)
    except (CommandFailed, OSError):
        return ()
    try:
        names = json.loads(proc.stdout) if proc.ok else None
    except ValueError:
        return ()
    if not isinstance(names, list):
        return ()
    try:  # only an answer is kept, never a failure
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        tmp.write_text(json.dumps(names))
        os.replace(tmp, cached)
    except OSError:
        pass
    return tuple(names)


def _cache_base() -> Path:
    """The controller's cache of what a flake's content decides (materialize's directory too)."""
    return Path(tempfile.gettempdir()) / "ipex-fleet-flakes"


_PUSHABLE: dict[tuple, None] = {}


def check_pushable(root: str) -> None:
    """check_locked and the walk of what is pushed (entries), once per flake in a process while its
    flake.lock, flake.nix and push.json are unchanged: every host of a run names the same flake, and
    validating each host's data walked and hashed the whole tree again (15 ms a host; 1.2 s of a
    no-change deploy's controller time at 40 hosts). A file removed later still fails the push."""
    base = Path(root)
    key = (str(base.resolve()),) + tuple(_stat_key(base / name) for name in (LOCK_FILE, "flake.nix", PUSH_FILE))
    if key in _PUSHABLE:
        return
    check_locked(root)
    entries(root)
    if len(_PUSHABLE) >= 64:
        _PUSHABLE.clear()
    _PUSHABLE[key] = None


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def flake_hash(root: str) -> str:
    """sha256 over every pushed file's name, mode and content, in a stable order."""
    digest = hashlib.sha256()
    for name, path in entries(root):
        digest.update(name.encode() + b"\0")
        if path.is_symlink():
            digest.update(b"L" + os.readlink(path).encode())
        else:
            digest.update(b"X" if os.access(path, os.X_OK) else b"F")
            digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def flake_tarball(root: str, prefix: str = "") -> bytes:
    """A gzip tarball of the flake with fixed owners and times, so equal content packs equally.
    `prefix` puts everything under one top directory (Nix's tarball inputs need exactly one)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in entries(root):
            info = tar.gettarinfo(str(path), arcname=f"{prefix}/{name}" if prefix else name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def materialize(root: str, parent: str | None = None) -> str:
    """What is pushed, unpacked alone in a directory on the controller (made once per content):
    the controller builds and archives this, never the checkout, so it sees what the hosts see."""
    digest = flake_hash(root)
    base = Path(parent or Path(tempfile.gettempdir()) / "ipex-fleet-flakes")
    dest = base / digest
    if (dest / ".complete").is_file():
        return str(dest)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=base))
    with tarfile.open(fileobj=io.BytesIO(flake_tarball(root)), mode="r:gz") as tar:
        tar.extractall(tmp)  # our own tarball: names checked by entries()
    (tmp / ".complete").touch()
    try:
        tmp.rename(dest)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)
