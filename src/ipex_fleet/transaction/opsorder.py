"""pyinfra's operation order, read without inspect.stack().

In CLI mode pyinfra orders (and hashes) each operation by the line numbers of its call stack, from the
deploy file inwards (`pyinfra.api.util.get_operation_order_from_stack`). It reads them with
`inspect.stack()`, which also loads every frame's source lines and looks up its module among all
loaded ones: 1.3 ms a call at a deploy's stack depth here (12 ms under cProfile, where it was the
largest part of preparing a deploy; a no-change deploy of 40 hosts prepares 240 operations). `operation_order` returns the same
list from the frames themselves; `install` puts it in pyinfra's place (roles/transaction.py does, when
a deploy file first imports it), once, and only over the function it was written against.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import pyinfra
from pyinfra.api import util as _util

_operation = importlib.import_module("pyinfra.api.operation")  # the module (pyinfra.api.operation is also a function)

_PYINFRA = _util.PYINFRA_INSTALL_DIR


def operation_order(state: Any) -> list[int]:
    """What get_operation_order_from_stack returns, called from the same place (the same frames, a
    frame's file as inspect names it, which is its code's file for Python sources)."""
    frames = []
    frame = sys._getframe(0)  # this frame too, in the place of pyinfra's own (skipped below, as pyinfra's is)
    own = frame
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    i = 0
    if state.current_deploy_filename:  # the *first* frame of the deploy file, as pyinfra looks for it
        for i, found in enumerate(frames):
            if found.f_code.co_filename == state.current_deploy_filename:
                break
    line_numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    line_numbers += [f.f_lineno for f in frames[i:] if f is not own and not f.f_code.co_filename.startswith(_PYINFRA)]
    return line_numbers


def install() -> bool:
    """Use operation_order in pyinfra's operation decorator; False where pyinfra is not the one this
    was written against (its function was replaced or moved): pyinfra's own then stays."""
    if getattr(_operation, "get_operation_order_from_stack", None) is _util.get_operation_order_from_stack:
        _operation.get_operation_order_from_stack = operation_order  # type: ignore[attr-defined]
        return True
    return _operation.get_operation_order_from_stack is operation_order  # type: ignore[attr-defined]
