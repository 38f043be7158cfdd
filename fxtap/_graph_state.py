"""A picklable description of an ``fx.Graph``: one record per node, rebuilt without tracing.

torch.fx pickles a ``GraphModule`` as its generated source and traces that source again on
load. Tracing again is not the same graph: calls whose arguments are all constants run while
tracing and come back as ``_tensor_constant`` attributes the source does not hold (an exported
``arange(8)``), and the nodes after them get other names. The records here hold each node's op,
name, target, arguments and fxtap's name, so the rebuilt graph is the graph that was pickled.

Operator overloads (``torch.ops.aten.add.Tensor``) refuse to be pickled; they are stored by
their ``namespace::name.overload`` and looked up in ``torch.ops`` again. Other targets pickle as
themselves (by reference, for functions), as they do in torch.fx's own pickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from fxtap import _compat
from fxtap._fx import NAME_KEY

__all__ = ["GraphState", "graph_state", "rebuild_graph"]


@dataclass(frozen=True)
class GraphState:
    """What ``rebuild_graph`` needs: the node records and the graph's code generator."""

    nodes: tuple[tuple[Any, ...], ...]
    codegen: Any


def graph_state(graph: fx.Graph) -> GraphState:
    """The records of ``graph``'s nodes, in order; only fxtap's node names are kept of ``meta``.

    >>> g = fx.Graph()
    >>> x = g.placeholder("x")
    >>> _ = g.output(g.call_function(torch.ops.aten.relu.default, (x,)))
    >>> [str(n.target) for n in rebuild_graph(graph_state(g)).nodes]
    ['x', 'aten.relu.default', 'output']
    """
    records = []
    for node in graph.nodes:
        args = fx.node.map_arg(node.args, _ref)
        kwargs = fx.node.map_arg(node.kwargs, _ref)
        meta = {NAME_KEY: node.meta[NAME_KEY]} if NAME_KEY in node.meta else {}
        records.append((node.op, node.name, _target(node.target), args, kwargs, node.type, meta))
    return GraphState(tuple(records), _compat.graph_codegen(graph))


def rebuild_graph(state: GraphState) -> fx.Graph:
    """The graph ``state`` describes: the same nodes, names, targets and arguments.

    Postcondition: ``graph.lint()`` passes.
    """
    graph = fx.Graph()
    if state.codegen is not None:
        graph.set_codegen(state.codegen)
    env: dict[str, fx.Node] = {}

    def lookup(value: Any) -> Any:
        return env[value.name] if isinstance(value, _NodeRef) else value

    for op, name, target, args, kwargs, type_expr, meta in state.nodes:
        if isinstance(target, _Op):
            target = target.resolve()
        node = graph.create_node(
            op,
            target,
            fx.node.map_aggregate(args, lookup),
            fx.node.map_aggregate(kwargs, lookup),
            name=name,
            type_expr=type_expr,
        )
        node.meta.update(meta)
        env[name] = node
    graph.lint()
    return graph


@dataclass(frozen=True)
class _NodeRef:
    name: str


@dataclass(frozen=True)
class _Op:
    """An operator overload by name; ``torch.ops`` gives it back."""

    namespace: str
    name: str
    overload: str

    def resolve(self) -> Any:
        packet = getattr(getattr(torch.ops, self.namespace), self.name)
        return getattr(packet, self.overload) if self.overload else packet


def _ref(node: fx.Node) -> Any:  # Any: map_arg is typed to return fx arguments
    return _NodeRef(node.name)


def _target(target: Any) -> Any:
    if _compat.is_op_overload(target):
        return _Op(*_compat.op_parts(target))
    if _compat.is_op_packet(target):
        namespace, _, name = str(target).partition(".")  # str(torch.ops.aten.add): 'aten.add'
        return _Op(namespace, name, "")
    return target
