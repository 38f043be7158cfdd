"""Whether a read of a module's ``training`` flag can change what the model runs.

transformers' attention passes ``dropout=0.0 if not self.training else self.attention_dropout``
and its dropout calls ``nn.functional.dropout(h, p=self.dropout, training=self.training)``:
with the dropout rates at 0, both read the flag and do the same in either mode. ``harmless``
finds the expression the flag was read in (from the reading frame's current instruction and
the source file's syntax tree) and evaluates it with the flag set to each mode, reading only
constants, names and attributes; when both evaluations agree, the rest of the program cannot
tell the modes apart at that read.
"""

from __future__ import annotations

import ast
import functools
import linecache
import operator
from types import FrameType
from typing import Any

import torch.nn.functional as F

__all__ = ["harmless"]

#: Calls whose ``training`` argument changes nothing when their ``p`` is 0: they return their
#: input in either mode, and draw no random numbers.
_DROPOUT_CALLS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                  F.feature_alpha_dropout)  # fmt: skip

_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
}  # fmt: skip
_PLAIN = (bool, int, float, str, type(None))


class _Impure(Exception):
    """The expression reads something other than constants, names and attributes."""


def harmless(frame: FrameType) -> bool:
    """True when the flag read by ``frame``'s current instruction gives the same value to
    the expression around it in both modes (``False`` whenever that cannot be shown)."""
    try:
        node, parents = _read_node(frame)
    except Exception:  # source not found, another Python's positions: assume it matters
        return False
    if node is None:
        return False
    # the flag, or its negation, is the test of an IfExp, an operand of a BoolOp, or the
    # ``training=`` argument of a dropout call
    while isinstance(parents.get(node), ast.UnaryOp):
        node = parents[node]
    parent = parents.get(node)
    flagged = _flag_node(node)
    try:
        if isinstance(parent, ast.IfExp) and parent.test is node:
            return _same(parent, flagged, frame)
        if isinstance(parent, ast.BoolOp):
            return _same(parent, flagged, frame)
        if isinstance(parent, ast.keyword) and parent.arg == "training":
            return _dropout_at_zero(parents.get(parent), frame)
    except _Impure:
        return False
    return False


def _flag_node(node: ast.AST) -> ast.AST:
    while isinstance(node, ast.UnaryOp):
        node = node.operand
    return node


def _same(expr: ast.AST, flag: ast.AST, frame: FrameType) -> bool:
    values = [_evaluate(expr, flag, mode, frame) for mode in (True, False)]
    return all(isinstance(v, _PLAIN) for v in values) and values[0] == values[1]


def _dropout_at_zero(call: ast.AST | None, frame: FrameType) -> bool:
    if not isinstance(call, ast.Call):
        return False
    fn = _evaluate(call.func, None, False, frame, plain=False)
    if not any(fn is f for f in _DROPOUT_CALLS):
        return False
    p = next((k.value for k in call.keywords if k.arg == "p"), None)
    if p is None and len(call.args) > 1:
        p = call.args[1]
    return p is not None and _evaluate(p, None, False, frame) == 0


def _evaluate(
    node: ast.AST, flag: ast.AST | None, mode: bool, frame: FrameType, *, plain: bool = True
) -> Any:
    """The value of ``node`` with ``flag`` read as ``mode``; only constants, names, attribute
    reads, comparisons, ``not``, ``and``/``or`` and conditional expressions."""
    if node is flag:
        return mode
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        for scope in (frame.f_locals, frame.f_globals, frame.f_builtins):
            if node.id in scope:
                return _checked(scope[node.id], plain)
        raise _Impure(node.id)
    if isinstance(node, ast.Attribute) and node.attr != "training":
        try:
            return _checked(getattr(_evaluate(node.value, flag, mode, frame, plain=False),
                                    node.attr), plain)  # fmt: skip
        except AttributeError as exc:
            raise _Impure(node.attr) from exc
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _evaluate(node.operand, flag, mode, frame)
    if isinstance(node, ast.BoolOp):
        value: Any = None
        for operand in node.values:
            value = _evaluate(operand, flag, mode, frame)
            if bool(value) is isinstance(node.op, ast.Or):
                return value
        return value
    if isinstance(node, ast.IfExp):
        test = _evaluate(node.test, flag, mode, frame)
        return _evaluate(node.body if test else node.orelse, flag, mode, frame)
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
        left = _evaluate(node.left, flag, mode, frame)
        right = _evaluate(node.comparators[0], flag, mode, frame)
        return _checked(_COMPARE[type(node.ops[0])](left, right), plain=True)
    raise _Impure(type(node).__name__)


def _checked(value: Any, plain: bool) -> Any:
    if plain and not isinstance(value, _PLAIN):
        raise _Impure(type(value).__name__)
    return value


def _read_node(frame: FrameType) -> tuple[ast.AST | None, dict[ast.AST, ast.AST]]:
    """The ``x.training`` node the frame is reading, and the parent of every node."""
    positions = list(frame.f_code.co_positions())
    where = positions[frame.f_lasti // 2]
    nodes, parents = _tree(frame.f_code.co_filename)
    node = nodes.get(where)
    if not isinstance(node, ast.Attribute) or node.attr != "training":
        return None, parents
    return node, parents


@functools.lru_cache(maxsize=32)
def _tree(filename: str) -> tuple[dict[tuple, ast.AST], dict[ast.AST, ast.AST]]:
    tree = ast.parse("".join(linecache.getlines(filename)))
    nodes: dict[tuple, ast.AST] = {}
    parents: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent
        if isinstance(parent, ast.Attribute) and parent.attr == "training":
            key = (parent.lineno, parent.end_lineno, parent.col_offset, parent.end_col_offset)
            nodes[key] = parent
    return nodes, parents
