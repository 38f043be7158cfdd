"""Names for an exported graph: NodePathTracer's rules, read from ``node.meta['nn_module_stack']``.

``torch.export`` records, for every node, the stack of module calls it ran in. A call of a module
that ``NodePathTracer`` would keep as a leaf (``nn.Linear``, torchvision's ops, ``leaf_modules``)
is one node on the fx path; here it is the last node of that call, named by the module path.
Every other op is named by its innermost enclosing module plus its op name, counted per scope.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import fx, nn

from fxtap import _compat
from fxtap._fx import SCOPE_KEY, STACK_KEY
from fxtap.trace._tracer import NodePathTracer, _sanitize

__all__ = ["STACK_KEY", "ModuleCalls", "assign_names", "op_name"]


class ModuleCalls:
    """The module calls of an exported graph: for each node, its scope and its leaf call.

    Attributes:
        scope: node -> innermost module path it ran in (``""`` for the root), cut at the
            outermost leaf module.
        leaf_call: node -> ``(call key, leaf module path)`` when the node ran inside a call of
            a leaf module.
        first_call: module path -> nodes of its first call, in graph order.
    """

    def __init__(
        self,
        graph: fx.Graph,
        modules: Mapping[str, nn.Module],
        is_leaf: Callable[[nn.Module, str], bool],
    ) -> None:
        self.scope: dict[fx.Node, str] = {}
        self.leaf_call: dict[fx.Node, tuple[str, str]] = {}
        self.first_call: dict[str, list[fx.Node]] = {}
        first_key: dict[str, str] = {}
        for node in graph.nodes:
            if node.op not in ("call_function", "call_method", "call_module"):
                continue
            scope = ""
            for key, value in dict(node.meta.get(STACK_KEY) or {}).items():
                path = str(value[0]) if isinstance(value, tuple) and value else ""
                if path not in modules:
                    # NOTE: export adds pseudo entries for nodes built from shape metadata
                    continue
                scope = path
                if path and first_key.setdefault(path, key) == key:
                    self.first_call.setdefault(path, []).append(node)
                if path and is_leaf(modules[path], path):
                    self.leaf_call[node] = (key, path)
                    break
            self.scope[node] = scope

    def forget(self, erased: Collection[fx.Node]) -> None:
        """Drop the calls' nodes that were erased from the graph; a module whose first call
        held nothing else has no first call (torch.export would not have recorded it)."""
        if not erased:
            return
        for node in erased:
            self.scope.pop(node, None)
            self.leaf_call.pop(node, None)
        for path, nodes in list(self.first_call.items()):
            kept = [n for n in nodes if n not in erased]
            if not kept:
                del self.first_call[path]
            elif len(kept) < len(nodes):
                self.first_call[path] = kept

    def outputs(self) -> dict[fx.Node, str]:
        """The last node of each leaf-module call -> that module's path."""
        last: dict[str, tuple[fx.Node, str]] = {}
        for node, (key, path) in self.leaf_call.items():
            last[key] = (node, path)
        return {node: path for node, path in last.values()}

    def first_inputs(self) -> dict[str, fx.Node]:
        """Module path -> the first outside value its first call read (its first argument)."""
        found: dict[str, fx.Node] = {}
        for path, nodes in self.first_call.items():
            inside = set(nodes)
            # NOTE: the call's first ops may read only weights (a weight-standardized conv
            # reshapes its weight before it reads its input), so look on until one reads a value
            outside = (
                arg
                for node in nodes
                for arg in node.all_input_nodes
                if arg not in inside and arg.op != "get_attr"
            )
            first = next(outside, None)
            if first is not None:
                found[path] = first
        return found

    def first_outputs(self) -> dict[str, fx.Node]:
        """Module path -> the last node of its first call."""
        return {path: nodes[-1] for path, nodes in self.first_call.items()}


def op_name(node: fx.Node) -> str:
    """The op part of a name: ``aten.add.Tensor`` -> ``add``, ``operator.getitem`` -> ``getitem``."""
    target: Any = node.target
    if node.op == "placeholder":
        return _sanitize(str(target))
    # OpOverload: the op without namespace/overload
    name = _compat.op_parts(target)[1] if _compat.is_op_overload(target) else None
    if name is None:
        name = getattr(target, "__name__", None) or str(target)
    op = _sanitize(str(name).rsplit(".", 1)[-1])
    if isinstance(node.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool)):
        # NOTE: arithmetic on dynamic sizes (``s1 + 1``) is counted apart from tensor ops,
        # so a tensor op has the same name whichever dimensions were exported dynamic
        return op if op.startswith("sym_") else f"sym_{op}"
    return op


def assign_names(
    graph: fx.Graph,
    calls: ModuleCalls,
    modules: Mapping[str, nn.Module],
    tracer: NodePathTracer,
    *,
    skip: set[fx.Node],
) -> dict[fx.Node, str]:
    """Name every placeholder and op of ``graph`` (not ``get_attr`` nodes, not ``skip``).

    Sets ``node.meta[NAME_KEY]`` and ``node.meta[SCOPE_KEY]`` as ``NodePathTracer`` does and
    returns node -> name in graph order. Counting per scope and the reservation of real module
    paths are ``NodePathTracer``'s own.
    """
    outputs = calls.outputs()
    pending: list[tuple[fx.Node, str, bool]] = []
    for node in graph.nodes:
        if node.op in ("get_attr", "output") or node in skip:
            continue
        scope = calls.scope.get(node, "")
        # NOTE: the root scope has no module type, as in torch.fx's Scope("", None)
        node.meta[SCOPE_KEY] = (scope, type(modules[scope]) if scope else None)
        if node in outputs:
            pending.append((node, outputs[node], True))
            continue
        op = op_name(node)
        pending.append((node, f"{scope}.{op}" if scope else op, False))
    # NOTE: the tracer's counter and reservations are reused as they are, so both paths
    # agree on suffixes; only its bookkeeping lists are filled here.
    tracer.node_to_qualname = {}
    tracer._pending = pending
    tracer._assign_names()
    return dict(tracer.node_to_qualname)
