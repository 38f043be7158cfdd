"""Grad-mode regions of an exported program, carried over into the export path's graph.

In train mode, a ``torch.no_grad()`` block of the model (cpmant's position bias) is recorded
by ``torch.export`` as one higher-order op, ``wrap_with_set_grad_enabled(False, submod, *args)``,
whose ops live in a submodule of the exported program. ``copy_node`` inlines such a region
into the graph being built: its ops become ordinary nodes (named by their own module stack),
and under ``False`` the region reads detached copies of its inputs, so that its values are
those of the model and no gradient flows through it, as under ``torch.no_grad()``.

Before (exported program)::

    where_2 = wrap_with_set_grad_enabled(False, submod_1, repeat_1, cat_1)
    getitem_4 = getitem(where_2, 0)

After (the rebuilt graph)::

    detach = aten.detach(repeat_1); detach_1 = aten.detach(cat_1)
    ...the region's ops on detach, detach_1...
    (getitem_4 is the region's first output)
"""

from __future__ import annotations

import operator
from collections.abc import MutableMapping
from typing import Any

import torch
from torch import fx

__all__ = ["GRAD_REGION", "copy_node", "is_grad_region", "region_graphs"]

#: The higher-order op of a grad-mode region, by its name in ``torch.ops.higher_order``.
GRAD_REGION = "wrap_with_set_grad_enabled"


def copy_node(
    graph: fx.Graph, node: fx.Node, env: MutableMapping[fx.Node, Any], owner: fx.GraphModule
) -> Any:
    """Copy ``node`` of ``owner``'s graph into ``graph``; a grad-mode region is inlined.

    Returns the new node, or for a region the tuple of its output nodes (a ``getitem`` of that
    tuple is resolved here, not copied).
    """
    if node.op == "call_function" and is_grad_region(node.target):
        return _inline(graph, node, env, owner)
    if node.op == "get_attr" and isinstance(getattr(owner, str(node.target), None), fx.GraphModule):
        return None  # a region's subgraph: inlined where it is called, never a value

    if node.target is operator.getitem and isinstance(env.get(node.args[0]), tuple):  # type: ignore[arg-type]
        return env[node.args[0]][node.args[1]]  # type: ignore[index]
    return graph.node_copy(node, lambda n: env[n])


def is_grad_region(target: Any) -> bool:
    """Whether ``target`` is the higher-order op of a grad-mode region."""
    return getattr(target, "namespace", None) == "higher_order" and (
        getattr(target, "__name__", None) == GRAD_REGION or str(target).endswith(GRAD_REGION)
    )


def region_graphs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.GraphModule]]:
    """Each node of ``gm``'s graph, and of the regions it inlines, with the module that owns it."""
    found = []
    for node in gm.graph.nodes:
        found.append((node, gm))
        if node.op == "call_function" and is_grad_region(node.target):
            found += region_graphs(getattr(gm, str(node.args[1].target)))  # type: ignore[union-attr]
    return found


def _inline(
    graph: fx.Graph, node: fx.Node, env: MutableMapping[fx.Node, Any], owner: fx.GraphModule
) -> tuple[Any, ...]:
    enabled, attr, *operands = node.args
    sub = getattr(owner, str(attr.target))  # type: ignore[union-attr]
    local: dict[fx.Node, Any] = {}
    inputs = iter(operands)
    outputs: tuple[Any, ...] = ()
    for inner in sub.graph.nodes:
        if inner.op == "placeholder":
            value = env[next(inputs)]  # type: ignore[index]
            if not enabled and isinstance(inner.meta.get("val"), torch.Tensor):
                detached = graph.call_function(torch.ops.aten.detach.default, (value,))
                detached.meta.update(inner.meta)
                detached.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
                value = detached
            local[inner] = value
        elif inner.op == "output":
            outputs = tuple(local[a] for a in inner.args[0])
        else:
            local[inner] = copy_node(graph, inner, local, sub)
    return outputs
