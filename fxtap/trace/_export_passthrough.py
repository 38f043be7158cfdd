"""Leaf calls that ran no op on the export path (``nn.Identity``): the aliases naming them.

torch.fx records a leaf module's call as one ``call_module`` node whatever it computes, so
``nn.Identity`` (a drop path at rate 0, a disabled norm) has a name there, and its value is its
input. ``torch.export`` records ATen ops only, and a call that returns its input runs none.
While exporting, the forward hook of ``fxtap.trace._export_marks`` makes a leaf's call that
returns one of its arguments return ``aten.alias`` of it, an op recorded in the module's scope.
``settle_aliases`` keeps an alias only where it names something, the call of a leaf module
that ran no other op, and gives every other alias's readers its input back, as the eager
model runs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import fx, nn

from fxtap._fx import STACK_KEY

__all__ = ["settle_aliases"]

_ALIAS = torch.ops.aten.alias.default


def settle_aliases(
    graph: fx.Graph,
    passed: Collection[int],
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
        passed: ``id`` of each leaf module whose call returned one of its arguments
            (``Marks.passed``).
        modules: the model's modules by path (``named_modules(remove_duplicate=False)``).
        leaf_call: node -> ``(call key, leaf path)`` (``ModuleCalls.leaf_call``).

    Returns:
        Each erased alias -> the node its readers read now, for the caller to forget the alias
        (it is no longer in ``graph``) and to update what it kept of it.
    """
    if not passed:
        return {}
    aliases = [n for n in graph.nodes if _is_ours(n, passed, modules)]
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


def _is_ours(node: fx.Node, passed: Collection[int], modules: Mapping[str, nn.Module]) -> bool:
    """An ``aten.alias`` whose innermost module is one whose call returned its argument."""
    if node.op != "call_function" or node.target is not _ALIAS:
        return False
    inner = None
    for value in dict(node.meta.get(STACK_KEY) or {}).values():
        path = str(value[0]) if isinstance(value, tuple) and value else ""
        if path and path in modules:
            inner = modules[path]
    return inner is not None and id(inner) in passed
