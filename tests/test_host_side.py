"""The host side (src/ipex_fleet/host/ and src/ipex_fleet/common/) needs only what it declares: pyproject's
`dependencies` and the flake's host package's (flake/packages/ipex-fleet-host.nix, which adds torch). A fresh
environment made from /usr/bin/python3 holds just those distributions and what they require, less the
controller's packages (torch requires jinja2, which no host import loads). There no controller package is
importable, every module of host/ and common/ imports (without loading torch: it is imported where a benchmark
or a check runs), and the host's commands (probe, bench, models, metrics, the host agent) run. The host side's
own imports stay on its side."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from .conftest import REPO

SRC = REPO / "src"
HOST_PACKAGE = REPO / "flake" / "packages" / "ipex-fleet-host.nix"
# The controller's packages (import names) and their distributions.
CONTROLLER = {"pyinfra": "pyinfra", "paramiko": "paramiko", "click": "click", "rich": "rich", "jinja2": "jinja2",
              "pydantic": "pydantic", "yaml": "pyyaml", "gevent": "gevent"}
SIDE = ("host", "common")
# Host-side imports of the controller that are known and run only on the controller (issue 27: to move).
KNOWN_CROSSINGS = {("host/models/manifest.py", "ipex_fleet.settings")}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> list[str]:
    """The host side's Python dependencies: pyproject's own (the controller's are an extra) and the flake's
    host package's (which adds the host's torch)."""
    m = re.search(r"\bdependencies\s*=\s*with\s+python3Packages;\s*\[([^\]]*)\]", HOST_PACKAGE.read_text())
    assert m, f"{HOST_PACKAGE}: no `dependencies = with python3Packages; [ ... ]`"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*m.group(1).split(), *(re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in project.get("dependencies", ()))]


def closure(names: list[str]) -> list[importlib.metadata.Distribution]:
    """The distributions, with what they require (no extras), less the controller's."""
    blocked = {_norm(d) for d in CONTROLLER.values()}
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = _norm(todo.pop())
        if name in seen or name in blocked:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name}: declared for the host package but not installed in this environment")
        seen[name] = dist
        for req in dist.requires or ():
            if "extra" in req.partition(";")[2]:
                continue
            todo.append(re.match(r"[A-Za-z0-9_.-]+", req).group(0))
    return list(seen.values())


@pytest.fixture(scope="module")
def host_python(tmp_path_factory) -> Path:
    """A fresh environment from /usr/bin/python3: the host package's dependencies and ipex_fleet's source."""
    if not Path("/usr/bin/python3").is_file():
        pytest.skip("no /usr/bin/python3")
    env = tmp_path_factory.mktemp("host-env")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for dist in closure(declared()):
        base = Path(dist.locate_file(""))
        tops = {f.parts[0] for f in dist.files or () if f.parts and f.parts[0] != ".."}
        for top in tops:
            if top == "__pycache__" or top.endswith(".pth"):
                continue
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    (site / "ipex_fleet_src.pth").write_text(f"{SRC}\n")
    return python


def _run(python: Path, *argv: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "IPEX_FLEET_STATE": str(tmp_path / "state")})


def side_modules() -> list[str]:
    out = []
    for side in SIDE:
        for path in sorted((SRC / "ipex_fleet" / side).rglob("*.py")):
            rel = path.relative_to(SRC).with_suffix("")
            if "__pycache__" in rel.parts:
                continue
            out.append(".".join(rel.parts).removesuffix(".__init__"))
    return out


def test_no_controller_package_is_importable(host_python, tmp_path):
    code = ("import importlib.util, json, sys; "
            "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in sys.argv[1:]}))")
    proc = _run(host_python, "-c", code, *CONTROLLER, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert not [name for name, there in found.items() if there], found
    proc = _run(host_python, "-m", "ipex_fleet", "enroll", "--help", tmp_path=tmp_path)  # a controller command
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


def test_every_host_module_imports(host_python, tmp_path):
    modules = side_modules()
    assert "ipex_fleet.host.agent" in modules and "ipex_fleet.host.probe" in modules
    code = ("import importlib, json, sys, traceback\nbad = {}\nfor m in sys.argv[1:]:\n    try:\n"
            "        importlib.import_module(m)\n    except BaseException:\n"
            "        bad[m] = traceback.format_exc(limit=-3)\n"
            "print(json.dumps({'bad': bad, 'torch': 'torch' in sys.modules}))")
    proc = _run(host_python, "-c", code, *modules, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["bad"] == {}, "\n".join(doc["bad"].values())
    assert doc["torch"] is False, "importing the host side loaded torch: import it where it runs"


def test_the_host_side_imports_only_its_side():
    """Every ipex_fleet import in host/ and common/ (in functions too) names host/ or common/."""
    allowed = tuple(f"ipex_fleet.{side}" for side in SIDE)
    crossings = set()
    for side in SIDE:
        for path in (SRC / "ipex_fleet" / side).rglob("*.py"):
            rel = path.relative_to(SRC / "ipex_fleet")
            package = ["ipex_fleet", *rel.parent.parts]
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    base = package[:len(package) - node.level + 1] if node.level else []
                    module = ".".join([*base, *([node.module] if node.module else [])])
                    names = [f"{module}.{a.name}" for a in node.names] if module == "ipex_fleet" else [module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] == "ipex_fleet" and not name.startswith(allowed):
                        crossings.add((str(rel), name))
    assert crossings <= KNOWN_CROSSINGS, sorted(crossings - KNOWN_CROSSINGS)


def test_probe_runs_on_the_host_side(host_python, tmp_path):
    proc = _run(host_python, "-m", "ipex_fleet", "probe", "--level", "1", "--json", "--accelerator", "cpu",
                tmp_path=tmp_path)
    assert "ModuleNotFoundError" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["level"] == 1 and doc["result"] in ("pass", "warn") and doc["checks"]


@pytest.mark.parametrize("argv", [("-m", "ipex_fleet", "bench", "--help"), ("-m", "ipex_fleet", "models", "--help"),
                                  ("-m", "ipex_fleet.host.agent", "--help"),
                                  # the contracts' entry points (DESIGN.md): they run the host package's code
                                  ("-m", "ipex_fleet.probe", "--help"), ("-m", "ipex_fleet.bench", "--help")])
def test_host_commands_load_on_the_host_side(host_python, tmp_path, argv):
    proc = _run(host_python, *argv, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")


def test_metrics_write_on_the_host_side(host_python, tmp_path):
    proc = _run(host_python, "-m", "ipex_fleet", "metrics", "--textfile-dir", str(tmp_path / "prom"),
                tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "prom" / "ipex_fleet_deploy.prom").is_file()

