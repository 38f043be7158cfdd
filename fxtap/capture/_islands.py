"""Islands: the largest traceable submodules of an untraceable model, run as their graphs."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import fx, nn

from fxtap import _compat
from fxtap._query import OutputKey, Request, resolve
from fxtap.capture._calls import Call, Channel, current_call, suspended
from fxtap.capture._reach import Dropped
from fxtap.errors import MistraceError, TraceError
from fxtap.prune import clone_tensors, prune
from fxtap.trace import (
    NodePathTracer,
    Traced,
    difference,
    is_root_failure,
    trace_with_fallback,
    tracer_options,
)

__all__ = [
    "OUTPUT_KEY",
    "Island",
    "IslandForward",
    "IslandRun",
    "capture_rows",
    "find_islands",
    "listing",
]

R = TypeVar("R")

#: Key of the island's own output in the dict its graph returns.
OUTPUT_KEY = "\0output"
#: Containers without a forward of their own: the search looks at their children.
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class Island:
    """A largest traceable submodule found by ``find_islands``.

    Attributes:
        path: module path of the submodule in the model.
        traced: its full trace; node names are relative to ``path``.
    """

    path: str
    traced: Traced


def find_islands(
    model: nn.Module, *, training: bool, tracer_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Island]:
    """The largest submodules that trace (with the automatic fallback), outermost first.

    Walks down from the root's children: a module that traces is an island and its subtree
    is not visited; one whose own forward fails is replaced by its children, and so are
    ``ModuleList`` and ``ModuleDict``, which have no forward (a layer stack's blocks become
    islands). Leaf modules (``nn.Conv2d``...) need no graph: hooks capture their outputs.
    """
    options = tracer_options(tracer_kwargs)
    judge = NodePathTracer(leaf_modules=options["leaf_modules"])
    islands: dict[str, Island] = {}
    todo = list(model.named_children())
    while todo:
        path, module = todo.pop(0)
        children = [(f"{path}.{n}", m) for n, m in module.named_children()]
        if isinstance(module, _CONTAINERS):
            todo[0:0] = children
            continue
        if judge.is_leaf_module(module, path):
            continue
        try:
            traced = _trace(module, training, options, None)
        except TraceError as exc:
            if not is_root_failure(exc):
                raise
            todo[0:0] = children
            continue
        islands[path] = Island(path, traced)
    return islands


def capture_rows(
    model: nn.Module,
    *,
    training: bool,
    tracer_kwargs: Mapping[str, Any] | None,
    module_row: Callable[[str, nn.Module], R],
    island_rows: Callable[[Island], list[R]],
) -> list[R]:
    """One row per servable module or island node, in module order (``node_table`` uses it)."""
    islands = find_islands(model, training=training, tracer_kwargs=tracer_kwargs)
    return listing(model, islands, module_row, island_rows)


def listing(
    model: nn.Module,
    islands: Mapping[str, Any],
    module_row: Callable[[str, nn.Module], R],
    island_rows: Callable[[Any], list[R]],
) -> list[R]:
    """``module_row`` of each module outside the islands, ``island_rows`` of each island."""
    rows: list[R] = []
    inside: str | None = None
    for path, module in model.named_modules():
        if not path or isinstance(module, (nn.ModuleList, nn.ModuleDict, Dropped)):
            continue
        if inside is not None and path.startswith(inside):
            continue
        inside = None
        if path in islands:
            rows += island_rows(islands[path])
            inside = path + "."
        else:
            rows.append(module_row(path, module))
    return rows


class IslandRun:
    """How one mode runs an island: a graph returning its output and the requested nodes.

    The graph is the island's full trace with the requested nodes as extra outputs, so the
    tapped values are the very tensors the rest of the model is computed from (gradients flow).
    A call that passes ``None`` for an argument gets a graph traced with that argument fixed to
    ``None`` (``concrete_args``), built on first use.
    """

    def __init__(
        self,
        island: Island,
        selected: Mapping[OutputKey, Any],
        queries: Mapping[OutputKey, str],
        tracer_kwargs: Mapping[str, Any] | None,
    ) -> None:
        self.path = island.path
        self.training = island.traced.training
        self.queries = dict(queries)
        self.tracer_kwargs = dict(tracer_kwargs or {})
        self.variants: dict[frozenset[str], fx.GraphModule] = {
            frozenset(): _graph(island.traced, selected)
        }
        self.checked: set[frozenset[str]] = set()

    @property
    def keys(self) -> frozenset[OutputKey]:
        return frozenset(self.queries)

    def graph(self, module: nn.Module, nones: frozenset[str]) -> fx.GraphModule:
        """The graph for a call whose arguments ``nones`` are ``None``."""
        found = self.variants.get(nones)
        if found is None:
            options = tracer_options(self.tracer_kwargs)
            traced = _trace(module, self.training, options, {n: None for n in nones})
            requests = [Request(q, k) for k, q in self.queries.items()]
            selected = resolve(requests, traced, model_name=f"{type(module).__name__}")
            found = self.variants.setdefault(nones, _graph(traced, selected))
        return found


class IslandForward:
    """Replaces an island's ``forward`` on the extractor's copy: runs the island's graph.

    Outside a call of the extractor, on a later call within one forward, or in a mode with no
    request inside the island, the module's own ``forward`` runs.
    """

    def __init__(self, channel: Channel, module: nn.Module, runs: Mapping[str, IslandRun]) -> None:
        self.channel = channel
        self.module = module
        self.runs = dict(runs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self.module
        eager = type(module).forward
        call = current_call(self.channel)
        run = self.runs.get(call.mode) if call is not None else None
        if call is None or run is None or not call.first(f"{run.path}:graph"):
            return eager(module, *args, **kwargs)
        bound = _bind(eager, module, args, kwargs)
        nones = (
            frozenset() if bound is None else frozenset(n for n, v in bound.items() if v is None)
        )
        gm = run.graph(module, nones)
        # NOTE: a forward with **kwargs is called as the model called it (its graph keeps them)
        positional = _signature(eager, keywords=False) is not None
        call_args = (
            (args, kwargs) if bound is None or not positional else (tuple(bound.values()), {})
        )
        if nones not in run.checked:
            _check(run, module, eager, gm, call_args, nones)
        out = dict(gm(*call_args[0], **call_args[1]))
        output = out.pop(OUTPUT_KEY)
        _store(call, out)
        return output


def _store(call: Call, values: Mapping[str, Any]) -> None:
    call.store.update(values)
    call.maybe_stop()


def _check(
    run: IslandRun,
    module: nn.Module,
    eager: Callable[..., Any],
    gm: fx.GraphModule,
    call_args: tuple[Any, Any],
    nones: frozenset[str],
) -> None:
    """Compare the island's graph with its eager forward on the arguments of a real call."""
    rng = torch.get_rng_state()
    buffers = [(b, b.detach().clone()) for b in module.buffers()] if module.training else []
    args, kwargs = call_args
    try:
        with suspended(), torch.no_grad():
            expected = eager(module, *clone_tensors(args), **clone_tensors(kwargs))
            _restored(buffers)
            torch.set_rng_state(rng)
            got = gm(*clone_tensors(args), **clone_tensors(kwargs))[OUTPUT_KEY]
    finally:
        _restored(buffers)
        torch.set_rng_state(rng)
    diff = difference(_detach(got), _detach(expected))
    if diff is not None:
        path = run.path
        raise MistraceError(
            f"the traced graph of submodule {path!r} differs from its eager run ({diff}) on "
            f"the arguments it received; keep it opaque with "
            f"tracer_kwargs={{'leaf_modules': [{path!r}]}} and request its output",
            module_path=path,
            reason=diff,
        )
    run.checked.add(nones)


def _restored(buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write saved buffer values back (BatchNorm statistics of an extra train-mode run)."""
    with torch.no_grad():
        for b, saved in buffers:
            b.copy_(saved)


def _graph(traced: Traced, selected: Mapping[OutputKey, Any]) -> fx.GraphModule:
    """The island's graph returning its own output and the selected nodes, by output key."""
    output = traced.graph_module.graph.output_node().args[0]
    name = type(traced.graph_module).__name__
    gm = prune(traced, {**selected, OUTPUT_KEY: output}, class_name=name)
    # NOTE: a graph traced with an argument fixed to None checks it with torch.fx's
    # ``_assert_is_none``; its generated code then registers that function with
    # ``torch.fx.wrap`` when it is unpickled, in a namespace that lacks it, and every later
    # trace in the process fails. The graph only runs on calls that pass None, so it goes.
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and _compat.is_assert_is_none(node.target) and not node.users:
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


def _trace(module: nn.Module, training: bool, options: Mapping[str, Any], concrete: Any) -> Traced:
    """The island's trace; when its own code fails, once more with buffers as proxies.

    A call that leaves an argument ``None`` takes code the first trace skipped, such as
    distilbert's ``self.position_ids[:, :seq_length]``: a real buffer sliced by a traced
    length fails, a ``get_attr`` proxy of it does not.
    """
    try:
        return trace_with_fallback(
            module, training=training, options=options, concrete_args=concrete, warn=False
        )
    except TraceError as exc:
        if not is_root_failure(exc) or options.get("proxy_buffer_attributes"):
            raise
        proxied = {**options, "proxy_buffer_attributes": True}
        return trace_with_fallback(
            module, training=training, options=proxied, concrete_args=concrete, warn=False
        )


@functools.lru_cache(maxsize=256)
def _signature(fn: Callable[..., Any], *, keywords: bool = True) -> inspect.Signature | None:
    """``fn``'s signature when its parameters are named ones, and ``**kwargs`` if ``keywords``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = {p.kind for p in sig.parameters.values()}
    named = {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}
    if kinds - named - ({inspect.Parameter.VAR_KEYWORD} if keywords else set()):
        return None  # *args or keyword-only: the call is passed on as it is
    return sig


def _bind(
    fn: Callable[..., Any], module: nn.Module, args: Any, kwargs: Any
) -> dict[str, Any] | None:
    """The call's arguments by parameter name, defaults filled in (``None``: not bindable)."""
    sig = _signature(fn)
    if sig is None:
        return None
    try:
        bound = sig.bind(module, *args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    values = dict(bound.arguments)
    values.pop(next(iter(sig.parameters)))
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            values.pop(name, None)  # not a parameter the trace can fix to None
    return values


def _detach(value: Any) -> Any:
    return _compat.tree_map(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, value)
