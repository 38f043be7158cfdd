"""Cut a model in two at any node: a head that returns the boundary and a tail that finishes."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from torch import fx, nn

from fxtap._draws import draws_random
from fxtap._fx import BOUNDARY, CUT_KEY, boundary_keys, union_root
from fxtap._query import Request, _enclosing_leaf, normalize_return_nodes, parse_query, resolve
from fxtap.errors import CutError, NodeNotFoundError, TraceError
from fxtap.extractor import MODES, ExtractorInfo, FeatureExtractor
from fxtap.prune import prune, unwrap_output, written_inputs
from fxtap.trace import NAME_KEY, Traced, TraceOptions, check_model, is_root_failure, route

__all__ = ["BOUNDARY", "Split", "split", "split_with", "tail_keys"]


@dataclass(frozen=True)
class Split:
    """The two halves of a model cut by ``split``; unpacks as ``head, tail = split(...)``.

    Attributes:
        head: ``head(*inputs)`` returns the boundary, a dict from dotted node names to values.
        tail: ``tail(boundary)`` returns what the model returns.
        at: by mode, the names of the nodes cut at, in execution order.
    """

    head: FeatureExtractor
    tail: FeatureExtractor
    at: Mapping[str, tuple[str, ...]]

    @property
    def boundary(self) -> dict[str, tuple[str, ...]]:
        """By mode, the keys of the dict ``head`` returns (and ``tail`` reads)."""
        return {mode: tuple(str(k) for k in self.head.outputs[mode]) for mode in MODES}

    def __iter__(self) -> Iterator[FeatureExtractor]:
        return iter((self.head, self.tail))


def split(
    model: nn.Module,
    at: str | list[str],
    *,
    example_inputs: Any = None,
    tracer: str = "auto",
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    auto_leaf: bool = True,
) -> Split:
    """Cut ``model`` after the nodes ``at`` into a head and a tail, both graph modules.

    The head computes the cut nodes and every value the tail still needs that is computed at
    or before the cut: skip connections, and the model's inputs the tail reads. An op that
    does not depend on the cut runs in the head when it comes before the last cut node in
    execution order, and in the tail otherwise. Each half keeps only the parameters it uses
    (shared with ``model``, as an extractor's are) and both have one graph per mode. The tail
    never writes into the boundary it is given: a value an in-place op of the tail would
    overwrite is copied first, so one cached boundary serves many tail calls.

    Args:
        model: the model; never modified.
        at: a node query in ``return_nodes`` syntax (``"layer3"``, ``"layer3.1.conv1:input"``),
            or a list of them.
        example_inputs: inputs to check the torch.fx graph with, or to export with on the
            export path (a tensor, a tuple, or a dict of keyword inputs).
        tracer: ``"auto"``, ``"fx"`` or ``"export"``, as in ``create_feature_extractor``.
        tracer_kwargs: ``NodePathTracer`` options (``leaf_modules``...).
        concrete_args: torch.fx's ``concrete_args``.
        auto_leaf: keep untraceable submodules opaque (a cut inside one is refused).

    Returns:
        A ``Split``: ``tail(head(*inputs))`` equals ``model(*inputs)``.

    Raises:
        CutError: the cut cannot be made (a node of one mode only, a node inside an opaque
            module, a model only the capture path runs); names the nearest cut that can.
        NodeNotFoundError: a query matches no node.
        TraceError: the model cannot be traced.

    >>> head, tail = split(torchvision.models.resnet18(), "layer2")
    >>> boundary = head(torch.rand(1, 3, 64, 64))
    >>> list(boundary)
    ['layer2.1.relu_1']
    >>> tail(boundary).shape
    torch.Size([1, 1000])
    """
    options = TraceOptions(tracer, tracer_kwargs, concrete_args, auto_leaf, example_inputs)
    return split_with(model, at, options)


def split_with(model: nn.Module, at: str | list[str], options: TraceOptions) -> Split:
    """``split`` with its ``TraceOptions`` (the command line's, with ``check`` off)."""
    check_model(model)
    requests = normalize_return_nodes(at, argument="at")
    name = type(model).__name__
    traces = _trace(model, options)
    cuts = _resolve_cuts(requests, traces, name)
    heads: dict[str, fx.GraphModule] = {}
    tails: dict[str, fx.GraphModule] = {}
    for mode in MODES:
        heads[mode], tails[mode] = _cut(traces[mode], cuts[mode], class_name=name)
    at_names = {
        mode: tuple(traces[mode].names[n] for n in sorted(cuts[mode], key=_order(traces[mode])))
        for mode in MODES
    }
    head_info = ExtractorInfo(
        outputs={mode: {k: k for k in _output_keys(heads[mode])} for mode in MODES}
    )
    tail_info = ExtractorInfo(outputs={mode: {} for mode in MODES})
    head = FeatureExtractor(
        union_root(heads),
        {m: gm.graph for m, gm in heads.items()},
        class_name=f"{name}Head",
        training=model.training,
        info=head_info,
    )
    tail = FeatureExtractor(
        union_root(tails),
        {m: gm.graph for m, gm in tails.items()},
        class_name=f"{name}Tail",
        training=model.training,
        info=tail_info,
    )
    return Split(head=head, tail=tail, at=at_names)


def tail_keys(module: nn.Module) -> tuple[str, ...] | None:
    """The boundary keys ``module`` reads when it is the tail of a ``split``, else ``None``.

    A tail, built or loaded from a file, takes one argument, the dict its head returns; its
    example input is the head's output on the model's. The keys are those of the eval graph.

    >>> head, tail = split(torchvision.models.resnet18(), "layer3")
    >>> tail_keys(tail), tail_keys(head)
    (('layer3.1.relu_1',), None)
    """
    graph_for = getattr(module, "graph_for", None)
    graph = graph_for("eval") if callable(graph_for) else getattr(module, "graph", None)
    return boundary_keys(graph) if isinstance(graph, fx.Graph) else None


def _trace(model: nn.Module, options: TraceOptions) -> dict[str, Traced]:
    try:
        return route(model, options, capture=False).traces
    except TraceError as exc:
        if not is_root_failure(exc):
            raise
        raise CutError(
            f"split needs a graph of {type(model).__name__}, and its root forward cannot be "
            f"traced ({exc.reason}); only the capture path runs it, which cannot be cut. Pass "
            "example_inputs= so that torch.export traces it (tracer='export'), or split one of "
            "its submodules"
        ) from exc


def _resolve_one(req: Request, traced: Traced, model_name: str) -> fx.Node:
    query = parse_query(req.query)
    if query.port == "model":
        raise CutError(
            f"at={req.query!r} is the model's output, after which nothing is left for a tail; "
            "cut at a node inside the model, e.g. its last layer",
            query=req.query,
        )
    try:
        node = resolve([req], traced, model_name=model_name)[req.key]
    except NodeNotFoundError:
        leaf = _enclosing_leaf(query.path, traced)
        if leaf is None:
            raise
        raise CutError(
            f"cannot cut at {req.query!r}: it is inside {leaf!r}, which the {traced.mode} graph "
            f"of {model_name} runs as one opaque module (a leaf); nearest cut: {leaf!r}. Pass "
            f"at={leaf!r}, or trace through it (remove it from tracer_kwargs['leaf_modules'], or "
            "make what fails in it traceable: docs/tracing.md)",
            query=req.query,
            nearest=leaf,
        ) from None
    if not isinstance(node, fx.Node):  # pragma: no cover - resolve returns nodes for these
        raise CutError(f"at={req.query!r} selects no single node", query=req.query)
    return node


def _resolve_cuts(
    requests: list[Request], traces: Mapping[str, Traced], model_name: str
) -> dict[str, dict[fx.Node, str]]:
    """By mode, cut node -> its query; a node that only one mode's graph has is refused, with
    the nearest node before it that both modes have."""
    cuts: dict[str, dict[fx.Node, str]] = {}
    for req in requests:
        found: dict[str, fx.Node] = {}
        missing: NodeNotFoundError | None = None
        for mode in MODES:
            try:
                found[mode] = _resolve_one(req, traces[mode], model_name)
            except NodeNotFoundError as exc:
                missing = exc
        if not found and missing is not None:
            raise missing
        for mode, other in (("train", "eval"), ("eval", "train")):
            node = found.get(mode)
            if node is None:
                continue
            name = traces[mode].names[node]
            present = set(traces[other].names.values())
            if name in present:
                continue
            nearest = _nearest_shared(node, traces[mode], present)
            hint = f"nearest cut: {nearest!r}. Pass at={nearest!r}" if nearest else "no node"
            raise CutError(
                f"cannot cut at {req.query!r}: it selects {name!r} in the {mode} graph of "
                f"{model_name}, which the {other} graph does not have (the model computes it in "
                f"{mode} mode only), and both halves must run in both modes; {hint}",
                query=req.query,
                nearest=nearest,
            )
        for mode in MODES:
            cuts.setdefault(mode, {}).setdefault(found[mode], req.query)
    return cuts


def _nearest_shared(node: fx.Node, traced: Traced, present: set[str]) -> str | None:
    """The closest node before ``node`` (through its inputs, breadth first) both modes have."""
    frontier = [node]
    seen = {node}
    while frontier:
        nxt = []
        for current in frontier:
            for arg in current.all_input_nodes:
                if arg in seen:
                    continue
                seen.add(arg)
                name = traced.names.get(arg)
                if name is not None and name in present and arg.op != "get_attr":
                    return name
                nxt.append(arg)
        frontier = nxt
    return None


def _order(traced: Traced) -> Any:
    order = {n: i for i, n in enumerate(traced.graph_module.graph.nodes)}
    return order.__getitem__


def _cut(
    traced: Traced, cut: Mapping[fx.Node, str], *, class_name: str
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """The head and the tail graph modules of one mode."""
    graph = traced.graph_module.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    last = max(order[n] for n in cut)
    after_cut = _reach(cut, lambda n: n.users) - set(cut)
    before = _reach(cut, lambda n: n.all_input_nodes)
    head_side = set(before)
    for node in graph.nodes:
        if node.op == "placeholder" or (order[node] < last and node not in after_cut):
            head_side.add(node)
    output = graph.output_node()
    tail_side = {
        n for n in graph.nodes if n not in head_side and n.op not in ("output", "get_attr")
    }
    boundary = [
        n
        for n in graph.nodes
        if n in head_side
        and n.op != "get_attr"
        and (n in cut or any(u in tail_side or u is output for u in n.users))
    ]
    keys = {n: traced.names.get(n, n.name) for n in boundary}
    # the head keeps every draw of its side when the tail draws: the tail's draws follow
    owner, training = traced.graph_module, traced.training
    draws = [n for n in graph.nodes if draws_random(n, owner, training=training)]
    keep = [n for n in draws if n in head_side] if set(draws) & tail_side else []
    head = prune(traced, {keys[n]: n for n in boundary}, class_name=class_name, keep=keep)
    marks = {keys[n]: "cut" if n in cut else "boundary" for n in boundary}
    for node in head.graph.nodes:
        if node.meta.get(NAME_KEY) in marks:
            node.meta[CUT_KEY] = marks[node.meta[NAME_KEY]]
    _return_plain_dict(head.graph)
    head.graph.lint()
    head.recompile()
    tail = _tail(traced, boundary, keys, tail_side, class_name=class_name)
    for node in tail.graph.nodes:
        if CUT_KEY in node.meta:
            node.meta[CUT_KEY] = marks[node.meta[NAME_KEY]]
    return head, tail


def _reach(start: Any, step: Any) -> set[fx.Node]:
    seen: set[fx.Node] = set(start)
    stack = list(start)
    while stack:
        for nxt in step(stack.pop()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _tail(
    traced: Traced,
    boundary: list[fx.Node],
    keys: Mapping[fx.Node, str],
    tail_side: set[fx.Node],
    *,
    class_name: str,
) -> fx.GraphModule:
    """The tail: the boundary as its one dict argument, then the tail's nodes, pruned."""
    owner = traced.graph_module
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for i, node in enumerate(boundary):
        # NOTE: not named after the key, which may not be an identifier ('3.0' of a Sequential)
        env[node] = graph.placeholder(f"{BOUNDARY}_{i}")
        env[node].meta = dict(node.meta)
    for node in owner.graph.nodes:
        needed = node in tail_side or (
            node.op == "get_attr" and any(u in tail_side or u.op == "output" for u in node.users)
        )
        if needed:
            env[node] = graph.node_copy(node, env.__getitem__)
    result = fx.node.map_arg(owner.graph.output_node().args[0], env.__getitem__)
    graph.output({"output": result})
    module = fx.GraphModule(owner, graph, class_name)
    names = {n: n.meta[NAME_KEY] for n in graph.nodes if NAME_KEY in n.meta}
    pruned = prune(
        Traced(module, names, traced.training), {"output": result}, class_name=class_name
    )
    # prune keeps the placeholders and maps the output onto its own copy
    unwrap_output(pruned.graph, "output")
    _protect_boundary(pruned)
    _boundary_as_dict(pruned.graph, [keys[n] for n in boundary])
    pruned.graph.lint()
    pruned.recompile()
    return pruned


def _protect_boundary(gm: fx.GraphModule) -> None:
    """Copy each boundary value an in-place op of the tail writes into, before any use.

    A cached boundary then stays as the head returned it, however often the tail runs.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    written = written_inputs(gm.graph, gm, placeholders)
    if not written:
        return
    with gm.graph.inserting_after(placeholders[-1]):
        for node in reversed(placeholders):
            if node in written:
                copy = gm.graph.call_method("clone", (node,))
                node.replace_all_uses_with(
                    copy, delete_user_cb=functools.partial(operator.is_not, copy)
                )


def _boundary_as_dict(graph: fx.Graph, keys: list[str]) -> None:
    """Replace the tail's placeholders, one per boundary value, by one dict argument."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(placeholders[0] if placeholders else first):
        boundary = graph.placeholder(BOUNDARY)
    for node, key in zip(placeholders, keys, strict=True):
        with graph.inserting_before(first):
            item = graph.call_function(operator.getitem, (boundary, key))
        item.meta = dict(node.meta)
        item.meta[CUT_KEY] = "boundary"
        node.replace_all_uses_with(item)
        graph.erase_node(node)


def _return_plain_dict(graph: fx.Graph) -> None:
    """Make the head return its boundary through ``dict(...)``, a plain dict in every runner.

    NOTE: torch.export runs a graph module with torch.fx's Interpreter, which rebuilds a
    returned dict literal as torch.fx's ``immutable_dict``: a pytree type of its own, which
    the input spec of an exported tail (a ``dict``) would refuse.

    Before: ``return {'layer3.1.relu_1': layer3_1_relu_1}``; after:
    ``boundary = dict({'layer3.1.relu_1': layer3_1_relu_1}); return boundary``.
    """
    output = graph.output_node()
    with graph.inserting_before(output):
        plain = graph.create_node("call_function", dict, (output.args[0],), name=BOUNDARY)
    output.args = (plain,)


def _output_keys(gm: fx.GraphModule) -> list[str]:
    result = gm.graph.output_node().args[0]
    if isinstance(result, fx.Node):  # dict(...) of the boundary
        result = result.args[0]
    return list(cast(dict[str, Any], result))
