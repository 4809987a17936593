"""Tables for people (rich): columns sized to the terminal, long cells folded rather than cut, plain
text with no colour codes when the output is not a terminal. Machines read `--json` instead."""

from __future__ import annotations

import io
import shutil
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def when(ts: float | None) -> str:
    """A Unix time as local `YYYY-MM-DD HH:MM:SS`, or `-`."""
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def width() -> int:
    """The terminal's width, or $COLUMNS, or 100 when the output is not a terminal."""
    return shutil.get_terminal_size((100, 24)).columns


def wrap(text: str, columns: int, indent: str = "") -> list[str]:
    """Lines of at most `columns`, later ones indented; long words are broken, none is cut off."""
    import textwrap

    return textwrap.wrap(text, columns, subsequent_indent=indent, break_long_words=True,
                         break_on_hyphens=False) or [""]


def render(columns: list[tuple[str, dict[str, Any]]], rows: list[list[str]], title: str | None = None,
           columns_wide: int | None = None) -> str:
    """The table as text, at most `width` columns wide (default: the terminal's, or $COLUMNS)."""
    terminal = sys.stdout.isatty()
    console = Console(file=io.StringIO(), width=columns_wide or width(),
                      force_terminal=terminal, no_color=not terminal, highlight=False, soft_wrap=False)
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, options in columns:
        table.add_column(name, **{"overflow": "fold", **options})
    for row in rows:  # cells carry host-provided text: shown as written, never read as rich markup
        table.add_row(*(Text(str(cell)) for cell in row))
    console.print(table)
    return "\n".join(line.rstrip() for line in console.file.getvalue().rstrip("\n").splitlines())


def health_cell(health: dict[str, Any] | None) -> str:
    """`pass`, or `fail: check, check` (the failing checks' names)."""
    if not health or not health.get("result"):
        return "-"
    failing = [f.split(":", 1)[0] for f in health.get("failing") or []]
    return health["result"] + (f": {', '.join(failing)}" if failing else "")


def bench_cell(bench: dict[str, Any] | None) -> str:
    """The gate's verdict against the baseline, with the slowest case's ratio when one was off."""
    if not bench or not bench.get("result"):
        return "-"
    if bench.get("baseline_recorded"):
        return "baseline"
    ratios = [c["ratio"] for c in bench.get("comparisons") or [] if c.get("ratio") is not None]
    return bench["result"] + (f" {min(ratios):.0%}" if ratios else "")
