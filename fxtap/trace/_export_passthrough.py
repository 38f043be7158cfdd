"""Module calls that run no op on the export path (``nn.Identity``): an ``alias`` names them.

torch.fx records a leaf module's call as one ``call_module`` node whatever it computes, so
``nn.Identity`` (a drop path at rate 0, a disabled norm) has a name there, and its value is its
input. ``torch.export`` records ATen ops only: a call that returns its input runs none, so
nothing in the program ran in that module and ``nn_module_stack`` never names it.

While the model is exported, ``aliasing_passthrough`` makes such calls return
``aten.alias(input)``: one op recorded inside the module's scope, which the naming rules then
call by the module's path, with the same value and on the same autograd path as the module's
output (every later op reads the alias, as every later op reads the module's output). The
mechanism is a global forward hook, registered for the export only and limited to the calls
the exporting thread makes into the model's own modules: nothing is set on the model.
``settle_aliases`` then keeps an alias only where it names something, the call of a leaf
module that ran no other op, and gives every other alias's readers its input back, as the
eager model runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import fx, nn

from fxtap._fx import STACK_KEY

__all__ = ["PassThrough", "aliasing_passthrough", "settle_aliases"]

_ALIAS = torch.ops.aten.alias.default


class PassThrough:
    """The modules whose calls returned one of their arguments during an export (by ``id``)."""

    def __init__(self) -> None:
        self.modules: set[int] = set()


@contextlib.contextmanager
def aliasing_passthrough(model: nn.Module) -> Iterator[PassThrough]:
    """While exporting ``model``: a call of one of its submodules that returns one of its
    tensor arguments itself returns ``aten.alias`` of it instead; the hook is removed on exit."""
    owned = {id(m) for m in model.modules() if m is not model}
    thread = threading.get_ident()
    found = PassThrough()

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if id(module) not in owned or not isinstance(out, torch.Tensor):
            return None
        if not any(arg is out for arg in args) or threading.get_ident() != thread:
            return None
        found.modules.add(id(module))
        return _ALIAS(out)

    # NOTE: a global hook, not one per module: the user's modules are never touched
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield found
    finally:
        handle.remove()


def settle_aliases(
    graph: fx.Graph,
    found: PassThrough,
    modules: Mapping[str, nn.Module],
    leaf_call: Mapping[fx.Node, tuple[str, str]],
) -> dict[fx.Node, fx.Node]:
    """Keep the aliases that name a leaf module's call; erase the others.

    An alias is kept when it is the last alias of a leaf module's call that ran no other op
    (``nn.Identity``); a call that ran ops (``aten.dropout`` of ``nn.Dropout``) is named by its
    last op, and an alias outside any leaf call names nothing. An erased alias's readers read
    its input again::

        alias = aten.alias(relu);  dropout = aten.dropout(alias, 0.0, False)
        # becomes
        dropout = aten.dropout(relu, 0.0, False)

    Args:
        graph: the exported graph, rewritten in place (``graph.lint()`` holds after).
        found: what ``aliasing_passthrough`` recorded.
        modules: the model's modules by path (``named_modules(remove_duplicate=False)``).
        leaf_call: node -> ``(call key, leaf path)`` (``ModuleCalls.leaf_call``).

    Returns:
        Each erased alias -> the node its readers read now, for the caller to forget the alias
        (it is no longer in ``graph``) and to update what it kept of it.
    """
    if not found.modules:
        return {}
    aliases = [n for n in graph.nodes if _is_ours(n, found, modules)]
    if not aliases:
        return {}
    ours = set(aliases)
    ran_ops: set[str] = set()
    last: dict[str, fx.Node] = {}
    for node, (key, _) in leaf_call.items():
        if node in ours:
            last[key] = node
        else:
            ran_ops.add(key)
    kept = {n for key, n in last.items() if key not in ran_ops}
    # NOTE: in graph order, so an alias's input is never erased after it: one lookup in the
    # result gives a live node
    erased: dict[fx.Node, fx.Node] = {}
    for node in aliases:
        source = node.args[0]
        if node in kept or not isinstance(source, fx.Node):
            continue
        node.replace_all_uses_with(source)
        graph.erase_node(node)
        erased[node] = source
    return erased


def _is_ours(node: fx.Node, found: PassThrough, modules: Mapping[str, nn.Module]) -> bool:
    """An ``aten.alias`` whose innermost module is one whose call returned its argument."""
    if node.op != "call_function" or node.target is not _ALIAS:
        return False
    inner = None
    for value in dict(node.meta.get(STACK_KEY) or {}).values():
        path = str(value[0]) if isinstance(value, tuple) and value else ""
        if path and path in modules:
            inner = modules[path]
    return inner is not None and id(inner) in found.modules
