"""ipex_fleet.transaction.opsorder gives pyinfra the same operation order as its own stack inspection."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pyinfra
import pytest
from pyinfra.api import util

operation = importlib.import_module("pyinfra.api.operation")

from ipex_fleet.transaction import opsorder


def _call(fn, state):  # both are called from here, as pyinfra's operation decorator calls one of them
    return fn(state)


def _deep(depth, fn, state):
    return _deep(depth - 1, fn, state) if depth else _call(fn, state)


@pytest.mark.parametrize("deploy_file", [__file__, None, "/nowhere/deploy.py"])
@pytest.mark.parametrize("cli", [True, False])
@pytest.mark.parametrize("depth", [0, 3])
def test_the_same_line_numbers_as_pyinfra(monkeypatch, deploy_file, cli, depth):
    monkeypatch.setattr(pyinfra, "is_cli", cli)
    state = SimpleNamespace(current_deploy_filename=deploy_file, current_op_file_number=7)
    theirs, ours = (_deep(depth, fn, state) for fn in (util.get_operation_order_from_stack, opsorder.operation_order))
    assert ours == theirs
    assert len(ours) > 2 or deploy_file == "/nowhere/deploy.py"  # not found: pyinfra keeps the innermost frame only


def test_installed_once_over_pyinfras_own(monkeypatch):
    monkeypatch.setattr(operation, "get_operation_order_from_stack", util.get_operation_order_from_stack)
    assert opsorder.install() and operation.get_operation_order_from_stack is opsorder.operation_order
    assert opsorder.install()  # again: already in place
    monkeypatch.setattr(operation, "get_operation_order_from_stack", lambda state: [1])  # not what it replaces
    assert not opsorder.install()
