"""Grad-mode regions of an exported program, carried over into the export path's graph.

In train mode, a ``torch.no_grad()`` block of the model (cpmant's position bias) is recorded
by ``torch.export`` as one higher-order op, ``wrap_with_set_grad_enabled(False, submod, *args)``,
whose ops live in a submodule of the exported program. ``copy_node`` inlines such a region
into the graph being built: its ops become ordinary nodes (named by their own module stack),
and under ``False`` the region reads detached copies of its inputs, so that its values are
those of the model and no gradient flows through it, as under ``torch.no_grad()``. One value
keeps its history: an input the region hands back as it is (``x.to(x.dtype)`` returns ``x``
itself under ``torch.no_grad()`` too), which the graph reads from outside the region, as the
model does (dots3_note's indexer returns its float input, which the gate projection reads).

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

from fxtap import _compat

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
    # region values that are, at run time, the very tensor of an operand (the value outside)
    same: dict[fx.Node, Any] = {}
    inputs = iter(operands)
    outputs: tuple[Any, ...] = ()
    for inner in sub.graph.nodes:
        if inner.op == "placeholder":
            value = same[inner] = env[next(inputs)]  # type: ignore[index]
            if not enabled and isinstance(inner.meta.get("val"), torch.Tensor):
                detached = graph.call_function(torch.ops.aten.detach.default, (value,))
                detached.meta.update(inner.meta)
                detached.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
                value = detached
            local[inner] = value
        elif inner.op == "output":
            outputs = tuple(same.get(a, local.get(a, a)) for a in inner.args[0])
        else:
            local[inner] = copy_node(graph, inner, local, sub)
            source = inner.args[0] if inner.args else None
            if source in same and _returns_self(inner):
                same[inner] = same[source]
    return outputs


def _returns_self(node: fx.Node) -> bool:
    """Whether ``aten.to`` returns its input itself: no change of dtype, device or layout,
    no copy, no memory format asked (``x.float()`` of a float tensor).

    A tensor that leaves a ``torch.no_grad()`` region that way is the tensor that went in,
    with its gradient history; every other value computed in the region has none.
    """
    if node.op != "call_function" or node.target not in _TO_OPS:
        return False
    source = node.args[0]
    before = source.meta.get("val") if isinstance(source, fx.Node) else None
    after = node.meta.get("val")
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
        return False
    schema = _compat.op_schema(node.target)
    given = {**{a.name: v for a, v in zip(schema.arguments, node.args)}, **node.kwargs}
    return (
        not given.get("copy", False)
        and given.get("memory_format") in (None, torch.preserve_format)
        and (before.dtype, before.device, before.layout)
        == (after.dtype, after.device, after.layout)
    )


_TO_OPS = {
    torch.ops.aten.to.dtype,
    torch.ops.aten.to.device,
    torch.ops.aten.to.dtype_layout,
    torch.ops.aten.to.other,
}
