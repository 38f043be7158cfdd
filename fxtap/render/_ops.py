"""Per node: input checks, ops that compute differently per mode, shape text."""

from __future__ import annotations

import re
from collections.abc import Mapping

import networkx as nx
from torch import fx

from fxtap._fx import op_label, target_text

__all__ = ["input_checks", "mode_dependent", "shape_text"]


#: Module classes and functions that compute differently in train and eval mode.
_MODE_DEPENDENT = ("dropout", "batchnorm", "batch_norm", "stochasticdepth", "stochastic_depth")


def mode_dependent(op: str, target: str, module_type: str) -> bool:
    """Dropout, batch norm and stochastic depth: the same node, different values per mode."""
    what = module_type if op == "call_module" else target if op.startswith("call_") else ""
    what = what.rpartition(".")[2].lower()
    return any(word in what for word in _MODE_DEPENDENT)


def input_checks(
    graph: fx.Graph, names: Mapping[fx.Node, str], requested: Mapping[str, str]
) -> set[fx.Node]:
    """Nodes feeding only ``torch._assert`` calls (input-size checks), not the output (networkx)."""
    g = nx.DiGraph()
    for node in graph.nodes:
        g.add_node(node)
        g.add_edges_from((arg, node) for arg in node.all_input_nodes)
    asserts = [
        n
        for n in graph.nodes
        if n.op == "call_function"
        and (target_text(n).endswith("_assert") or op_label(n) in _ATEN_CHECKS)
    ]
    if not asserts:
        return set()
    wanted = [graph.output_node()] + [n for n, name in names.items() if name in requested]
    live = set(wanted).union(*(nx.ancestors(g, n) for n in wanted))
    feeding = set(asserts).union(*(nx.ancestors(g, n) for n in asserts))
    return {n for n in feeding - live if n.op != "placeholder"}


#: ATen ops of export-path graphs that check their inputs and compute nothing drawn.
_ATEN_CHECKS = frozenset({
    "aten._assert_tensor_metadata", "aten._assert_scalar", "aten._assert_async",
    "aten.sym_constrain_range", "aten.sym_constrain_range_for_size",
})  # fmt: skip


def shape_text(meta: object) -> str | None:
    """A tensor's ``shape dtype`` from ``tensor_meta`` set by someone else's ``ShapeProp``."""
    shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
    if shape is None or dtype is None:
        return None
    # NOTE: torch.export's dynamic batch is a symbol (``s72``); it reads as N.
    dims = [d if isinstance(d, int) else _SYMBOL.sub("N", str(d)) for d in shape]
    return f"{'×'.join(str(d) for d in dims) or 'scalar'} {str(dtype).removeprefix('torch.')}"


_SYMBOL = re.compile(r"\bs\d+\b")
