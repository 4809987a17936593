"""Writing an enrolled host: its folder under flake/hosts/ and its entry in a Python inventory.

Everything is checked before anything is written: an existing host is refused unless forced, and
the inventory's new text must still parse as Python."""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from ipex_fleet.common.errors import UserError

ENROLLED_GROUP = "enrolled"


@dataclass(frozen=True)
class InventoryEdit:
    path: Path
    group: str
    text: str | None  # None: the host is already listed; the file stays as it is


def _top_level_lists(tree: ast.Module) -> dict[str, ast.List]:
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.List):
            found[node.targets[0].id] = node.value
    return found


def listed_hosts(tree: ast.Module) -> set[str]:
    """Host names of the inventory's `(name, data)` tuples and plain string entries."""
    names = set()
    for lst in _top_level_lists(tree).values():
        for elt in lst.elts:
            first = elt.elts[0] if isinstance(elt, ast.Tuple) and elt.elts else elt
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def default_group(lists: dict[str, ast.List]) -> str:
    """The last wave (wave2 after wave1), so that rollouts reach the host; else a group of its own."""
    waves = sorted((int(n[4:]), n) for n in lists if n.startswith("wave") and n[4:].isdigit())
    return waves[-1][1] if waves else ENROLLED_GROUP


def check_inventory(path: Path) -> tuple[str, ast.Module]:
    """The inventory's text and syntax tree, or one line saying why not."""
    try:
        text = path.read_text()
        return text, ast.parse(text, str(path))
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"inventory {path} not found: give --inventory FILE (a Python inventory such as "
                        f"inventories/prod.py)") from None
    except SyntaxError as exc:
        raise UserError(f"inventory {path} is not valid Python (line {exc.lineno}): fix it first") from None


def inventory_edit(path: Path, name: str, entry: str, group: str | None) -> InventoryEdit:
    """The inventory's new text with `entry` (one line, indented, ending in ',\\n') in `group`."""
    text, tree = check_inventory(path)
    lists = _top_level_lists(tree)
    group = group or default_group(lists)
    if name in listed_hosts(tree):
        return InventoryEdit(path, group, None)
    lines = text.splitlines(keepends=True)
    if group in lists:
        node = lists[group]
        assert node.end_lineno is not None and node.end_col_offset is not None
        row, col = node.end_lineno - 1, node.end_col_offset - 1  # the closing bracket
        closing = _offset(lines, node.end_lineno, node.end_col_offset - 1)
        comma = not node.elts or "," in text[_offset(lines, node.elts[-1].end_lineno, node.elts[-1].end_col_offset):closing]
        if lines[row][:col].strip() == "" and comma:
            lines.insert(row, entry)  # the usual layout: one entry a line, `]` on its own line
        else:  # a list on one line (`wave2 = []`): laid out again, one entry a line
            elements = "".join(f"    {ast.get_source_segment(text, e)},\n" for e in node.elts)
            begin = _offset(lines, node.lineno, node.col_offset)
            lines = [text[:begin] + "[\n" + elements + entry + "]" + text[closing + 1:]]
    else:
        # A new group, before the inventory's closing call (refuse_empty_selection) if it has one.
        last_list = max((l.end_lineno or 0) for l in lists.values()) if lists else 0
        at = next((n.lineno - 1 for n in tree.body if isinstance(n, (ast.Expr, ast.ImportFrom)) and n.lineno > last_list),
                  len(lines))
        lines.insert(at, f"{group} = [  # hosts added by `ipex-fleet enroll`; move them into the waves you want\n"
                         f"{entry}]\n\n")
    new = "".join(lines)
    try:
        ast.parse(new)
    except SyntaxError:
        raise UserError(f"inventory {path}: cannot add {name} to group {group} by itself; add this line there:\n"
                        f"{entry.rstrip()}") from None
    return InventoryEdit(path, group, new)


def _offset(lines: list[str], lineno: int | None, col: int | None) -> int:
    """The character offset of an ast (line, column) position (inventories are ASCII Python)."""
    return sum(len(l) for l in lines[:(lineno or 1) - 1]) + (col or 0)


def check_folder(hosts_dir: Path, name: str, force: bool) -> Path:
    folder = hosts_dir / name
    if folder.exists() and not force:
        raise UserError(f"host {name} already exists ({folder}); give --force to overwrite it, or --name NEW")
    if not hosts_dir.is_dir():
        raise UserError(f"{hosts_dir} is not a directory: give --flake DIR (the flake with hosts/)")
    return folder


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
