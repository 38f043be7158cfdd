"""A second graph per mode, for calls that leave out root arguments that default to ``None``.

torch.fx traces ``if state is None`` on a placeholder as the not-``None`` branch, so the graph
it makes serves calls that pass ``state`` and fails on calls that leave it out
(``fxtap.trace._none_defaults``). An extractor then holds both graphs, compiled once, and its
``forward`` picks one per call from the call's own arguments: nothing is switched on the
extractor, so calls from many threads each run the graph of their own arguments.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import fx

from fxtap._edit_pass import apply_edits
from fxtap._graph_state import GraphState, graph_state, rebuild_graph
from fxtap._query import OutputKey, Request, output_name, resolve_in_mode
from fxtap.errors import FxtapError
from fxtap.prune import prune
from fxtap.trace._none_defaults import NoneFixed

__all__ = [
    "FixedState",
    "FixedToNone",
    "PrunedFixed",
    "dispatching_forward",
    "graph_forward",
    "mode_forwards",
    "prune_fixed_to_none",
]

Forward = Callable[..., Any]
#: What pickles a ``FixedToNone``: its arguments, and by mode its graph's state.
FixedState = tuple[tuple[str, ...], Mapping[str, GraphState]]


@dataclass(frozen=True)
class FixedToNone:
    """The graphs for calls that leave ``args`` out (or pass them as ``None``).

    Attributes:
        args: root arguments that default to ``None``, fixed to ``None`` in ``graphs``.
        graphs: by mode, the pruned graph traced with ``args`` fixed to ``None``.
    """

    args: tuple[str, ...]
    graphs: Mapping[str, fx.Graph]

    def copy(self, memo: dict[int, Any]) -> FixedToNone:
        """A deep copy (``memo`` is ``copy.deepcopy``'s)."""
        return FixedToNone(self.args, {m: copy.deepcopy(g, memo) for m, g in self.graphs.items()})

    def state(self) -> FixedState:
        """What pickles it (``rebuilt`` makes it again)."""
        return self.args, {mode: graph_state(graph) for mode, graph in self.graphs.items()}

    @classmethod
    def rebuilt(cls, state: FixedState) -> FixedToNone:
        """It again, from ``state()``."""
        args, graphs = state
        return cls(tuple(args), {mode: rebuild_graph(g) for mode, g in graphs.items()})


@dataclass(frozen=True)
class PrunedFixed:
    """``NoneFixed`` traces pruned for an extractor's requests (``prune_fixed_to_none``).

    Attributes:
        args: the arguments fixed to ``None``.
        pruned: by mode, the pruned graph module.
        leaves: modules the automatic fallback made opaque in these traces.
    """

    args: tuple[str, ...]
    pruned: dict[str, fx.GraphModule]
    leaves: tuple[str, ...] = ()

    def fixed_to_none(self) -> FixedToNone:
        """The pruned graphs, for the extractor."""
        return FixedToNone(self.args, {mode: gm.graph for mode, gm in self.pruned.items()})


def prune_fixed_to_none(
    none_fixed: NoneFixed | None,
    requests: Mapping[str, list[Request]],
    edits: Mapping[str, Any] | None,
    outputs: Mapping[str, Mapping[OutputKey, str]],
    *,
    model_name: str,
) -> PrunedFixed | None:
    """The traces with arguments fixed to ``None``, edited and pruned for the same requests.

    Returns ``None`` when there are none, or when a request does not resolve to a node of
    the same name there (``outputs`` are the names in the graphs that take the arguments):
    calls that leave the arguments out then run the graph that takes them, as in
    torchvision's extractor.
    """
    if none_fixed is None:
        return None
    traces = none_fixed.traces
    pruned = {}
    try:
        if edits is not None:
            traces = apply_edits(traces, edits, model_name=model_name)
        for mode, traced in traces.items():
            selected = resolve_in_mode(requests, traces, mode, model_name=model_name)
            if {k: output_name(v, traced) for k, v in selected.items()} != outputs[mode]:
                return None
            pruned[mode] = prune(traced, selected, class_name=model_name)
    except FxtapError:
        return None
    leaves = tuple(leaf for t in traces.values() for leaf in t.leaves)
    return PrunedFixed(none_fixed.args, pruned, leaves)


def mode_forwards(
    gm: fx.GraphModule, graphs: Mapping[str, fx.Graph], fixed: FixedToNone
) -> dict[bool, Forward]:
    """By training flag, the ``forward`` of ``gm`` that runs ``graphs[mode]`` for calls that
    pass one of ``fixed.args`` and ``fixed.graphs[mode]`` for the others; each graph's code is
    compiled here, once. ``gm`` runs the last graph compiled: select a mode afterwards."""
    names = [str(n.target) for n in graphs["train"].find_nodes(op="placeholder")]
    forwards = {}
    for flag, mode in ((True, "train"), (False, "eval")):
        none = graph_forward(gm, fixed.graphs[mode])
        given = graph_forward(gm, graphs[mode])
        forwards[flag] = dispatching_forward(given, none, fixed.args, names)
    return forwards


def graph_forward(gm: fx.GraphModule, graph: fx.Graph) -> Forward:
    """The ``forward`` torch.fx compiles for ``graph`` as code of ``gm`` (which runs it now)."""
    gm.graph = graph  # the public setter recompiles type(gm).forward
    return type(gm).forward


def dispatching_forward(
    given: Forward, fixed: Forward, args: tuple[str, ...], placeholders: list[str]
) -> Forward:
    """A ``forward`` that runs ``fixed`` when every one of ``args`` is left out or ``None``,
    and ``given`` otherwise; ``placeholders`` are ``given``'s inputs in order (positions).

    >>> pick = dispatching_forward(lambda s, x, state=None: "given",
    ...                            lambda s, x, state=None: "fixed", ("state",), ["x", "state"])
    >>> pick(None, 1), pick(None, 1, None), pick(None, 1, 2), pick(None, 1, state=2)
    ('fixed', 'fixed', 'given', 'given')
    """
    positions = {name: placeholders.index(name) for name in args if name in placeholders}

    @functools.wraps(given)
    def forward(self: Any, *call_args: Any, **call_kwargs: Any) -> Any:
        if any(_passed(name, positions, call_args, call_kwargs) is not None for name in args):
            return given(self, *call_args, **call_kwargs)
        return fixed(self, *call_args, **call_kwargs)

    return forward


def _passed(
    name: str, positions: Mapping[str, int], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Any:
    """The value a call gives argument ``name``, by keyword or by position; else ``None``."""
    if name in kwargs:
        return kwargs[name]
    position = positions.get(name, len(args))
    return args[position] if position < len(args) else None
