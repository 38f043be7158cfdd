"""Draw a capture extractor's forward: its module calls, islands and early exit (``render``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fxtap._protocol import DrawRequest
from fxtap._query import parse_query
from fxtap.capture._islands import Island, find_islands
from fxtap.capture._probe import ModuleCall, Probe, probe
from fxtap.errors import FxtapError, InvalidArgumentError, NodeNotFoundError
from fxtap.render._graphs import sources, with_shapes
from fxtap.render._view import (
    View,
    ViewNode,
    build_view,
    finish_view,
    scaled_heat,
    unique,
)

__all__ = ["capture_views"]

_WHY = {
    "leaf": "leaf module, runs eagerly",
    "opaque": "forward not traceable",
    # the extractor traced it with other tracer_kwargs than render() was given
    "island": "traced island, graph not drawn: pass the extractor's tracer_kwargs=",
}


def capture_views(extractor: Any, request: DrawRequest) -> tuple[dict[str, View], list[str]]:
    """One view per mode whose probe run succeeds, and a message for each mode that failed.

    The root is drawn as the module calls of a probe run in order of their first call: each
    island as a cluster holding its traced graph, every other call as a hatched box, the calls
    after the extractor's early exit dashed as not run. Edges follow the tensors handed from
    call to call; where none is seen, a dotted edge gives the call order.

    Raises:
        InvalidArgumentError: ``example_inputs`` is missing, or the probe fails in every mode.
    """
    example_inputs = request.example_inputs
    title = request.title or type(extractor.model).__name__
    if example_inputs is None:
        raise InvalidArgumentError(
            f"render() of {title}, whose root forward cannot be traced, runs it once per mode "
            "to see which modules it calls, and example_inputs is None; pass example_inputs= "
            "(--input SHAPE on the command line), e.g. example_inputs=torch.rand(1, 3, 224, 224)"
        )
    if isinstance(example_inputs, torch.Tensor):
        args: tuple[Any, ...] = (example_inputs,)
    elif isinstance(example_inputs, Sequence) and not isinstance(example_inputs, str):
        args = tuple(example_inputs)
    else:
        raise InvalidArgumentError(
            f"example_inputs {example_inputs!r:.80} is a {type(example_inputs).__name__}; "
            "expected a tensor or a tuple of the model's positional arguments, e.g. "
            "example_inputs=([image],) for a model taking a list of images"
        )
    views: dict[str, View] = {}
    failures: list[str] = []
    for m in request.modes:
        try:
            found = probe(extractor, args, mode=m)
        except FxtapError:
            raise  # a mistraced island: the extractor's own error, not the input's
        except Exception as exc:  # the model refusing the input in this mode (missing targets)
            other = "eval" if m == "train" else "train"
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            failures.append(
                f"{title} could not be drawn in {m} mode: its probe run with example_inputs= "
                f"raised {type(exc).__name__}: {reason}; pass inputs the model accepts in {m} "
                f"mode (example_inputs=, --input), or draw the other mode only "
                f"(mode={other!r}, --mode {other})"
            )
            continue
        islands = find_islands(
            extractor.model, training=m == "train", tracer_kwargs=request.trace.tracer_kwargs
        )
        views[m] = _view(extractor, found, islands, title, request.heat, request.checks)
    if not views:
        raise InvalidArgumentError(" ".join(failures))
    return views, failures


def _view(
    extractor: Any,
    found: Probe,
    islands: Mapping[str, Island],
    title: str,
    heat: Mapping[str, float] | None,
    checks: bool,
) -> View:
    mode = found.mode
    taps = dict(extractor.outputs[mode])
    nodes: dict[str, ViewNode] = {}
    edges: dict[tuple[str, str], None] = {}
    sequence: set[tuple[str, str]] = set()
    types: dict[str, str] = {p: f"{t} · forward not traced" for p, t in found.containers.items()}
    entry: dict[str, str] = {}
    exits: dict[str, str] = {"": "input"}
    nodes["input"] = ViewNode("input", "input", "placeholder", "input", "")
    extra = {"checks": 0, "opaque": 0, "mode_dependent": 0}
    drawn: list[ModuleCall] = []
    for call in found.calls:
        island = islands.get(call.path) if call.kind == "island" else None
        drawn.append(call)
        if island is None:
            nodes[call.path] = _call_node(extractor.model, call, taps)
            entry[call.path] = exits[call.path] = call.path
            continue
        local = _island_taps(taps, island)
        inner = build_view(
            _shaped(island, call, title),
            title=title,
            requested=local,
            opaque=island.traced.leaves,
            checks=checks,
        )
        for k in extra:
            extra[k] += inner.counts.get(k, 0)
        rename = {}
        for node in inner.nodes.values():
            new = unique(f"{call.path}.{node.id}", nodes)
            rename[node.id] = new
            nodes[new] = dataclasses.replace(
                node,
                id=new,
                module=f"{call.path}.{node.module}" if node.module else call.path,
                pruned=node.pruned or not call.ran,
                skipped=not call.ran,
            )
        edges.update({(rename[a], rename[b]): None for a, b in inner.edges})
        for path, kind in inner.module_types.items():
            types[f"{call.path}.{path}" if path else call.path] = kind
        times = f" · called {call.calls}×, traced graph on the first" if call.calls > 1 else ""
        types[call.path] = f"{call.module_type} · traced island{times}"
        places = [rename[n.id] for n in inner.nodes.values() if n.op == "placeholder"]
        outs = [rename[n.id] for n in inner.nodes.values() if n.op == "output"]
        entry[call.path] = places[0] if places else rename[next(iter(inner.nodes))]
        exits[call.path] = outs[-1] if outs else rename[list(inner.nodes)[-1]]
        tapped = _module_key(taps, call.path)
        if tapped is not None:  # a hook on the island's own output
            nodes[exits[call.path]].key = tapped
    before = "input"
    for call in drawn:
        sources_ = [exits[p] for p in call.inputs if p in exits]
        for src in sources_ or [before]:
            edges.setdefault((src, entry[call.path]), None)
            if not sources_:
                sequence.add((src, entry[call.path]))
        before = exits[call.path]
    out = unique("output", nodes)
    model_key = next((k for k, q in taps.items() if parse_query(q).port == "model"), None)
    stop = found.stopped_early and model_key is None
    nodes[out] = ViewNode(out, "output", "output", "output", "", key=model_key, pruned=stop)
    nodes[out].skipped = stop
    ends = [exits[p] for p in found.output_from if p in exits]
    for src in ends or [before]:
        edges.setdefault((src, out), None)
        if not ends:
            sequence.add((src, out))
    _container_taps(taps, found, drawn, nodes, edges, entry, exits)
    for name, value in scaled_heat(heat).items():
        if name in nodes:
            nodes[name].heat = value
    counts = {
        "untraced": sum(bool(n.untraced) for n in nodes.values()),
        "skipped": sum(n.skipped for n in nodes.values()),
        **extra,
    }
    return finish_view(
        title,
        mode,
        nodes,
        edges,
        types,
        counts,
        islands=tuple(c.path for c in drawn if c.kind == "island" and c.path in islands),
        sequence=frozenset(sequence),
    )


def _call_node(model: Any, call: ModuleCall, taps: Mapping[str, str]) -> ViewNode:
    """The box of a module call that is not a traced island (hatched: its forward ran eagerly)."""
    parent = call.path.rpartition(".")[0]
    return ViewNode(
        id=call.path,
        short=call.path[len(parent) + 1 :] if parent else call.path,
        op="call_module",
        target=call.module_type,
        module=parent,
        module_type=call.module_type,
        shape=call.shape,
        params=sum(p.numel() for p in model.get_submodule(call.path).parameters()),
        key=_module_key(taps, call.path),
        pruned=not call.ran,
        untraced=_WHY[call.kind] + (f", called {call.calls}×" if call.calls > 1 else ""),
        skipped=not call.ran,
    )


def _shaped(island: Island, call: ModuleCall, title: str) -> Any:
    """The island's trace with the shapes of its first call, when they can be propagated."""
    if call.first_args is None:
        return island.traced
    try:
        return with_shapes(island.traced, call.first_args, f"{title}.{call.path}")
    except (FxtapError, RuntimeError, TypeError, ValueError):
        return island.traced  # arguments the graph was not traced for (a None fixed)


def _module_key(taps: Mapping[str, str], path: str) -> str | None:
    """The output key of a tap on the output of the module call ``path``, if any."""
    return next((k for k, q in taps.items() if q == path), None)


def _island_taps(taps: Mapping[str, str], island: Island) -> dict[str, str]:
    """Requested node names inside ``island`` (relative to it) -> output key."""
    wanted: dict[str, str] = {}
    head = island.path + "."
    for key, query in taps.items():
        parsed = parse_query(query)
        base = parsed.path if parsed.port == "node" else query
        if parsed.port == "model" or not base.startswith(head):
            continue
        try:
            _, _, requested, _ = sources(
                island.traced, (island.traced.mode,), {query[len(head) :]: key}
            )
        except NodeNotFoundError:
            continue  # a module hook serves it (a module kept opaque inside the island)
        wanted.update(requested[island.traced.mode])
    return wanted


def _container_taps(
    taps: Mapping[str, str],
    found: Probe,
    drawn: list[ModuleCall],
    nodes: dict[str, ViewNode],
    edges: dict[tuple[str, str], None],
    entry: Mapping[str, str],
    exits: Mapping[str, str],
) -> None:
    """Tap nodes for inputs of calls and for module outputs that no drawn node stands for."""
    for key, query in taps.items():
        parsed = parse_query(query)
        path = parsed.path
        if parsed.port not in ("node", "input") or any(n.key == key for n in nodes.values()):
            continue  # the model's output, or a node already marked
        inside = [c.path for c in drawn if c.path == path or c.path.startswith(path + ".")]
        if not inside or (parsed.port == "node" and path not in found.containers):
            continue
        port = "input" if parsed.port == "input" else "output"
        tap = unique(f"{path}:{port}", nodes)
        module = path.rpartition(".")[0] if path in entry else path
        nodes[tap] = ViewNode(tap, port, "output", port, module, key=key)
        if port == "input":
            edges.setdefault((tap, entry[inside[0]]), None)
        else:
            edges.setdefault((exits[inside[-1]], tap), None)
