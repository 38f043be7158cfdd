"""Module calls that run no op on the export path (``nn.Identity``): an ``alias`` names them.

torch.fx records a leaf module's call as one ``call_module`` node whatever it computes, so
``nn.Identity`` (a drop path at rate 0, a disabled norm) has a name there, and its value is its
input. ``torch.export`` records ATen ops only: a call that returns its input runs none, so
nothing in the program ran in that module and ``nn_module_stack`` never names it.

While the model is exported, ``marking_passthrough`` makes such calls return
``aten.alias(input)``: one op recorded inside the module's scope, which the naming rules then
call by the module's path, with the same value and on the same autograd path as the module's
output (every later op reads the alias, as every later op reads the module's output). The
mechanism is a global forward hook, registered for the export only and limited to the model's
own modules: nothing is set on the model. ``settle_marks`` then keeps a mark only where it names
something, the call of a leaf module that ran no other op, and gives every other mark's readers
its input back, as the eager model runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import fx, nn

from fxtap._fx import STACK_KEY

__all__ = ["Marks", "marking_passthrough", "settle_marks"]

_ALIAS = torch.ops.aten.alias.default


class Marks:
    """The modules whose calls returned an input during an export (``id`` of each module)."""

    def __init__(self) -> None:
        self.modules: set[int] = set()


@contextlib.contextmanager
def marking_passthrough(model: nn.Module) -> Iterator[Marks]:
    """While exporting ``model``: a call of one of its submodules that returns one of its
    tensor arguments itself returns ``aten.alias`` of it instead; the hook is removed on exit."""
    owned = {id(m) for m in model.modules() if m is not model}
    marks = Marks()

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if id(module) not in owned or not isinstance(out, torch.Tensor):
            return None
        if not any(arg is out for arg in args):
            return None
        marks.modules.add(id(module))
        return _ALIAS(out)

    # NOTE: a global hook, not one per module: the user's modules are never touched, and a
    # module created or swapped during the export is seen too
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield marks
    finally:
        handle.remove()


def settle_marks(
    graph: fx.Graph,
    marks: Marks,
    modules: Mapping[str, nn.Module],
    leaf_call: Mapping[fx.Node, tuple[str, str]],
) -> dict[fx.Node, fx.Node]:
    """Keep the marks that name a leaf module's call; erase the others.

    A mark is kept when it is the last mark of a leaf module's call that ran no other op
    (``nn.Identity``); a call that ran ops (``aten.dropout`` of ``nn.Dropout``) is named by its
    last op, and a mark outside any leaf call names nothing. An erased mark's readers read its
    input again::

        alias = aten.alias(relu);  dropout = aten.dropout(alias, 0.0, False)
        # becomes
        dropout = aten.dropout(relu, 0.0, False)

    Args:
        graph: the exported graph, rewritten in place (``graph.lint()`` holds after).
        marks: what ``marking_passthrough`` recorded.
        modules: the model's modules by path (``named_modules(remove_duplicate=False)``).
        leaf_call: node -> ``(call key, leaf path)`` (``ModuleCalls.leaf_call``).

    Returns:
        Each erased mark -> its input, for the caller to forget the mark (it is no longer in
        ``graph``) and to find the input of a module whose call ran no op.
    """
    if not marks.modules:
        return {}
    marked = [n for n in graph.nodes if _is_mark(n, marks, modules)]
    if not marked:
        return {}
    is_mark = set(marked)
    ran_ops: set[str] = set()
    last_mark: dict[str, fx.Node] = {}
    for node, (key, _) in leaf_call.items():
        if node in is_mark:
            last_mark[key] = node
        else:
            ran_ops.add(key)
    kept = {n for key, n in last_mark.items() if key not in ran_ops}
    erased: dict[fx.Node, fx.Node] = {}
    for node in marked:
        source = node.args[0]
        if node in kept or not isinstance(source, fx.Node):
            continue
        node.replace_all_uses_with(source)
        graph.erase_node(node)
        erased[node] = source
    return erased


def _is_mark(node: fx.Node, marks: Marks, modules: Mapping[str, nn.Module]) -> bool:
    """An ``aten.alias`` whose innermost module is one whose call was marked."""
    if node.op != "call_function" or node.target is not _ALIAS:
        return False
    inner = _innermost(node, modules)
    return inner is not None and id(inner) in marks.modules


def _innermost(node: fx.Node, modules: Mapping[str, nn.Module]) -> nn.Module | None:
    found = None
    for value in dict(node.meta.get(STACK_KEY) or {}).values():
        path = str(value[0]) if isinstance(value, tuple) and value else ""
        if path and path in modules:
            found = modules[path]
    return found
