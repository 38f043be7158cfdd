"""What ``render`` draws of a traced graph: traces per mode, kept and requested nodes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
from torch import fx

from fxtap._protocol import DrawRequest
from fxtap._query import normalize_return_nodes, resolve
from fxtap._shapes import propagate_shapes
from fxtap.errors import InvalidArgumentError, NodeNotFoundError
from fxtap.names import diff_modes
from fxtap.render._view import View, build_view
from fxtap.trace import Traced

__all__ = ["graph_views", "model_name", "pruned_views", "sources", "with_shapes"]


def graph_views(
    model: Any,
    traces: dict[str, Traced] | None,
    nodes: Sequence[str] | Mapping[str, str] | None,
    request: DrawRequest,
) -> dict[str, View]:
    """One view per mode of a model's ``traces`` or of a trace (``sources``), ``nodes`` marked."""
    found = sources(model, request.modes, nodes, traces)
    return _views(*found, request, request.title or model_name(model))


def pruned_views(extractor: Any, request: DrawRequest) -> dict[str, View]:
    """A pruning extractor's views (``FeatureExtractor.views``): its kept nodes marked.

    Without the unpruned traces (``keep_traces=True``) only what the extractor kept is drawn.
    """
    full = extractor.full
    whole = all(m in full for m in request.modes)
    traces = dict(full) if whole else extractor.pruned_traces()
    # NOTE: a pruned graph holds only what runs: its inputs and output are kept too (a split's
    # tail, an edited model), though they carry no node name
    kept = {m: set(extractor.node_names(m)) if whole else None for m in traces}
    requested = {m: dict(extractor.return_nodes.get(m, {})) for m in traces}
    name = next(iter(full.values())).graph_module.__class__.__name__ if full else None
    title = request.title or name or type(extractor).__name__
    return _views(traces, kept, requested, set(extractor.opaque), request, title)


def _views(
    traces: dict[str, Traced],
    kept: Mapping[str, set[str] | None],
    requested: Mapping[str, dict[str, str]],
    opaque: set[str],
    request: DrawRequest,
    title: str,
) -> dict[str, View]:
    modes, example_inputs = request.modes, request.example_inputs
    only: dict[str, set[str]] = {m: set() for m in traces}
    if "train" in traces and "eval" in traces:
        diff = diff_modes(traces["train"], traces["eval"])
        only = {"train": set(diff.train_only), "eval": set(diff.eval_only)}
    if example_inputs is not None:
        for m in modes:
            traces[m] = with_shapes(traces[m], example_inputs, title)
    return {
        m: build_view(
            traces[m],
            title=title,
            kept=kept.get(m),
            requested=requested.get(m),
            only=only.get(m, ()),
            opaque=opaque,
            heat=request.heat,
            checks=request.checks,
        )
        for m in modes
    }


def sources(
    model: Any,
    modes: Sequence[str],
    nodes: Sequence[str] | Mapping[str, str] | None,
    traces: dict[str, Traced] | None = None,
) -> tuple[dict[str, Traced], dict[str, set[str]], dict[str, dict[str, str]], set[str]]:
    """Traces per mode, kept names, requested name -> key, and opaque module paths.

    ``model`` is a model with its ``traces`` (by mode, as ``route`` traced them) or a
    ``Traced``.
    """
    if isinstance(model, Traced):
        if modes != (model.mode,):
            raise InvalidArgumentError(
                f"a Traced holds the {model.mode} graph only, not mode={'both' if len(modes) > 1 else modes[0]!r}; "
                f"pass mode={model.mode!r} or the model itself"
            )
        traces = {model.mode: model}
    elif traces is None:
        raise InvalidArgumentError(
            f"model {model!r:.80} is a {type(model).__name__}; expected an nn.Module, an fxtap "
            "extractor (fxtap.create_feature_extractor) or a Traced"
        )
    opaque = {leaf for t in traces.values() for leaf in t.leaves}
    if nodes is None:
        return traces, {}, {}, opaque
    # The extractor's own resolver: partial names, NAME:input and :output mean the same here.
    wanted = normalize_return_nodes(nodes, argument="nodes")
    kept: dict[str, set[str]] = {}
    requested: dict[str, dict[str, Any]] = {}
    errors: dict[str, NodeNotFoundError] = {}
    found: set[str] = set()
    for m, t in traces.items():
        requested[m] = {}
        for req in wanted:
            try:
                value = resolve([req], t, model_name=model_name(model))[req.key]
            except NodeNotFoundError as exc:
                errors.setdefault(req.query, exc)
                continue
            found.add(req.query)
            for node in _nodes_of(value):
                if node in t.names:
                    requested[m][t.names[node]] = req.key
        kept[m] = _ancestors(t, requested[m])
    for req in wanted:
        if req.query not in found:
            raise errors[req.query]
    return traces, kept, requested, opaque


def _nodes_of(value: Any) -> list[fx.Node]:
    nodes: list[fx.Node] = []

    def visit(node: fx.Node) -> fx.Node:
        nodes.append(node)
        return node

    fx.node.map_arg(value, visit)
    return nodes


def _ancestors(traced: Traced, names: Mapping[str, str]) -> set[str]:
    """Names of the nodes the requested ones depend on, themselves included."""
    by_name = {n: node for node, n in traced.names.items()}
    g = nx.DiGraph(
        (arg, node) for node in traced.graph_module.graph.nodes for arg in node.all_input_nodes
    )
    wanted = [by_name[n] for n in names]
    seen = set(wanted).union(*(nx.ancestors(g, n) for n in wanted if n in g))
    return {traced.names[n] for n in seen if n in traced.names}


def with_shapes(traced: Traced, example_inputs: Any, title: str) -> Traced:
    """A copy of ``traced`` whose nodes carry shapes; the original graph is left untouched."""
    graph = fx.Graph()
    mapping: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(traced.graph_module.graph, mapping)
    graph.output(out)
    gm = fx.GraphModule(traced.graph_module, graph, traced.graph_module.__class__.__name__)
    propagate_shapes(gm, example_inputs, model_name=title, training=traced.training)
    names = {mapping[n]: name for n, name in traced.names.items()}
    inputs = {
        k: mapping[v] for k, v in getattr(traced, "module_inputs", {}).items() if v in mapping
    }
    return dataclasses.replace(traced, graph_module=gm, names=names, module_inputs=inputs)


def model_name(model: Any) -> str:
    """The class name of the model a model or trace was made from."""
    if isinstance(model, Traced):
        return model.graph_module.__class__.__name__
    return type(model).__name__
