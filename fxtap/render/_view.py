"""Describe what to draw: the traces per mode and each node with its status."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from fxtap._fx import CUT_KEY, EDIT_KEY, op_label, owned_params, target_text
from fxtap._query import parse_query
from fxtap._shapes import VALUE_KEY
from fxtap.render._ops import input_checks, mode_dependent, shape_text
from fxtap.trace import SCOPE_KEY, SOURCE_KEY, Traced

__all__ = [
    "View",
    "ViewNode",
    "build_view",
    "finish_view",
    "mode_dependent",
    "prefixes",
    "scaled_heat",
    "unique",
]


@dataclass
class ViewNode:
    """One drawn node: an fx node, a collapsed module, a fold of pruned ops or a reference.

    ``kind`` is ``'op'``, ``'module'`` (a collapsed module), ``'pruned'`` (pruned ops of one
    module folded together) or ``'ref'`` (a reference standing for a cut edge).
    """

    id: str
    short: str
    op: str
    target: str
    module: str
    kind: str = "op"
    module_type: str = ""
    shape: str | None = None
    params: int = 0
    source: str | None = None
    key: str | None = None
    pruned: bool = False
    only: str | None = None
    opaque: bool = False
    heat: float | None = None
    count: int = 1
    mode_dependent: int = 0
    untraced: str = ""  # why a capture extractor's module call is not traced ('' if it is)
    skipped: bool = False  # a capture extractor's early exit skips it
    #: What the label shows for the op when not its target's last part (``aten.add``).
    label: str | None = None
    #: ``"edited"`` (an edit ``fxtap.edit`` inserted), ``"cut"`` or ``"boundary"`` (a value
    #: crossing a ``split``), else ``""``.
    mark: str = ""

    @property
    def protected(self) -> bool:
        """Requested, mode-only, untraced and marked (cut, edited) nodes are never folded or
        collapsed away."""
        return (
            self.key is not None or self.only is not None or bool(self.untraced) or bool(self.mark)
        )


@dataclass
class View:
    """The graph to draw: nodes in graph order, deduplicated edges, module types and folds."""

    title: str
    mode: str
    nodes: dict[str, ViewNode]
    edges: list[tuple[str, str]]
    module_types: dict[str, str]
    #: First module of a fold -> (count, last module, identical sizes).
    folds: dict[str, tuple[int, str, bool]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: Names not drawn themselves -> the drawn node standing for them (a fold or a box).
    where: dict[str, str] = field(default_factory=dict)
    #: Long chains wrapped into side-by-side columns: drawn node -> column (see ``wrap``).
    columns: dict[str, int] = field(default_factory=dict)
    #: The module whose children are split into columns.
    wrap_at: str = ""
    #: Drawn for both modes at once: the train and eval graphs are identical.
    same: bool = False
    #: A capture extractor's traced islands, and its call-order edges (no data flow seen).
    islands: tuple[str, ...] = ()
    sequence: frozenset[tuple[str, str]] = frozenset()

    def clusters(self) -> list[str]:
        """Every module path holding a drawn node, parents first, in order of appearance."""
        seen: dict[str, None] = {}
        for node in self.nodes.values():
            for path in prefixes(node.module):
                seen.setdefault(path, None)
        return list(seen)

    def children(self) -> dict[str, list[str]]:
        """Module path -> the paths of its child modules holding drawn nodes, in order."""
        children: dict[str, list[str]] = {}
        for path in self.clusters():
            if path:
                children.setdefault(path.rpartition(".")[0], []).append(path)
        return children


def build_view(
    traced: Traced,
    *,
    title: str,
    kept: Iterable[str] | None = None,
    requested: Mapping[str, str] | None = None,
    only: Iterable[str] = (),
    opaque: Iterable[str] = (),
    heat: Mapping[str, float] | None = None,
    checks: bool = False,
) -> View:
    """Describe every fx node of ``traced`` as a drawn node; parameters fold into their users.

    Nodes without a name (a namedtuple built for the output) pass their edges through, so the
    output is never drawn unconnected. Input checks (nodes that only feed ``torch._assert``,
    as ViT's input-size check) are hidden unless ``checks`` is true.

    Args:
        traced: the trace to draw (``node.meta['tensor_meta']`` gives shapes when present).
        title: the drawing's title.
        kept: names kept by pruning; ``None`` when nothing was pruned.
        requested: requested node name -> output key.
        only: names of the nodes that exist in this mode only.
        opaque: module paths made opaque leaves by fallback.
        heat: node name -> cost, coloured as a heat map.
        checks: draw input checks too.
    """
    gm = traced.graph_module
    hidden = set() if checks else input_checks(gm.graph, traced.names, requested or {})
    kept_set = None if kept is None else set(kept)
    requested = _requested_names(traced, requested or {})
    only_set, opaque_set = set(only), set(opaque) | set(traced.leaves)
    heat = scaled_heat(heat)
    ids: dict[fx.Node, str] = {}
    nodes: dict[str, ViewNode] = {}
    folded_params: dict[fx.Node, int] = {}
    types: dict[str, str] = {}
    # NOTE: on the export path a leaf module's call is ATen ops in the leaf's own scope, the
    # last one named by the module path; a call of one op is drawn in the parent, as a
    # ``call_module`` node is, not as a cluster of one.
    per_scope = collections.Counter(
        node.meta.get(SCOPE_KEY, ("", None))[0]
        for node in traced.names
        if node.op == "call_function" and node not in hidden
    )
    for node in gm.graph.nodes:
        name = traced.names.get(node)
        if node in hidden:
            continue
        if node.op == "get_attr" and name not in requested:
            # Parameters, buffers and constants are drawn inside the node that uses them.
            size = owned_params(gm, node)
            for user in node.users:
                folded_params[user] = folded_params.get(user, 0) + size
            continue
        if name is None:
            if node.op != "output":
                continue
            name = unique("output", nodes)
        scope, scope_type = node.meta.get(SCOPE_KEY, ("", None))
        if node.op == "call_module":
            module = str(node.target).rpartition(".")[0]
            module_type = type(gm.get_submodule(str(node.target))).__name__
        else:
            module = scope
            module_type = getattr(scope_type, "__name__", "")
            if scope and name == scope and per_scope[scope] == 1:
                module = scope.rpartition(".")[0]
        for path, kind in node.meta.get("nn_module_stack", {}).values():
            types.setdefault(path, getattr(kind, "__name__", str(kind).rpartition(".")[2]))
        is_kept = kept_set is None or name in kept_set or name in requested
        ids[node] = name
        nodes[name] = ViewNode(
            id=name,
            short=name[len(module) + 1 :] if module and name.startswith(module + ".") else name,
            op=node.op,
            target=target_text(node) if node.op != "output" else "output",
            module=module,
            module_type=module_type,
            shape=node.meta.get(VALUE_KEY) or shape_text(node.meta.get("tensor_meta")),
            params=owned_params(gm, node) if node.op == "call_module" else 0,
            source=node.meta.get(SOURCE_KEY),
            key=requested.get(name),
            pruned=not is_kept,
            only=traced.mode if name in only_set else None,
            opaque=node.op == "call_module" and node.target in opaque_set,
            heat=heat.get(name),
            mode_dependent=int(
                mode_dependent(node.op, op_label(node) or target_text(node), module_type)
            ),
            label=op_label(node),
            mark="edited" if EDIT_KEY in node.meta else str(node.meta.get(CUT_KEY, "")),
        )
    edges: dict[tuple[str, str], None] = {}
    for node, name in ids.items():
        nodes[name].params += folded_params.get(node, 0)
        for arg in _drawn_inputs(node, ids):
            edges.setdefault((ids[arg], name), None)
    counts = {
        "pruned": sum(n.pruned for n in nodes.values()),
        "only": sum(n.only is not None for n in nodes.values()),
        "opaque": sum(n.opaque for n in nodes.values()),
        "checks": sum(1 for n in hidden if n.op != "get_attr"),
        "mode_dependent": sum(n.mode_dependent for n in nodes.values()),
    }
    return finish_view(title, traced.mode, nodes, edges, types, counts)


def finish_view(
    title: str,
    mode: str,
    nodes: dict[str, ViewNode],
    edges: Iterable[tuple[str, str]],
    types: dict[str, str],
    counts: Mapping[str, int],
    **fields: Any,
) -> View:
    """The ``View`` of ``nodes``: every enclosing module typed, the totals before ``counts``.

    A module whose class is unknown is typed ``""``: GraphModule rebuilds the containers
    between root and the leaves it calls as plain ``nn.Module`` objects, so their class is lost.
    """
    for path in {n.module for n in nodes.values()}:
        for prefix in prefixes(path):
            types.setdefault(prefix, "")
    totals = {
        "total": len(nodes),
        "requested": sum(n.key is not None for n in nodes.values()),
        **counts,
    }
    return View(title, mode, nodes, list(edges), types, counts=totals, **fields)


def scaled_heat(heat: Mapping[str, float] | None) -> dict[str, float]:
    """Node name -> cost divided by the largest absolute cost (a heat map between -1 and 1)."""
    heat = dict(heat or {})
    top = max((abs(v) for v in heat.values()), default=0.0) or 1.0
    return {name: value / top for name, value in heat.items()}


def _drawn_inputs(node: fx.Node, ids: Mapping[fx.Node, str]) -> list[fx.Node]:
    """The drawn nodes ``node`` reads, in argument order, looking through undrawn ones."""
    out: dict[fx.Node, None] = {}
    seen: set[fx.Node] = set()
    stack = list(reversed(node.all_input_nodes))
    while stack:
        arg = stack.pop()
        if arg in seen:
            continue
        seen.add(arg)
        if arg in ids:
            out.setdefault(arg, None)
        elif arg.op not in ("get_attr", "placeholder"):
            stack.extend(reversed(arg.all_input_nodes))
    return list(out)


def prefixes(path: str) -> list[str]:
    """``'a.b.c'`` -> ``['', 'a', 'a.b', 'a.b.c']``."""
    if not path:
        return [""]
    parts = path.split(".")
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def unique(base: str, taken: Mapping[str, object] | set[str]) -> str:
    """``base``, or ``base_1``, ``base_2`` … whichever is not taken."""
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _requested_names(traced: Traced, requested: Mapping[str, str]) -> dict[str, str]:
    """Requested node names, with the extractor's ``':output'`` and ``'NAME:input'`` resolved."""
    out: dict[str, str] = {}
    inputs = getattr(traced, "module_inputs", {})
    for name, key in requested.items():
        query = parse_query(name)
        if query.port == "model":
            name = "output"
        elif query.port == "input" and query.path in inputs:
            name = traced.names.get(inputs[query.path], name)
        out[name] = key
    return out
