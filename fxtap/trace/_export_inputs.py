"""Inputs of an exported graph: one placeholder per forward argument, and dim-0 checks."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from fxtap._compat import pytree
from fxtap.errors import InputShapeError, TraceError

__all__ = ["UserInputs", "check_batch"]


def check_batch(value: Any, low: int, high: int | None, argument: str) -> Any:
    """Raise ``InputShapeError`` unless dim 0 of ``value`` lies in ``[low, high]``.

    Inserted by the export path after each input whose dim 0 the exported program fixes or
    bounds; a graph run outside the range it was exported for could compute wrong values.
    """
    if isinstance(value, fx.Proxy):
        # NOTE: unpickling re-traces the generated code with torch.fx: record the check again
        return value.tracer.create_proxy(
            "call_function", check_batch, (value, low, high, argument), {}
        )
    size = value.shape[0]
    if size >= low and (high is None or size <= high):
        return
    if high == low:
        why = f"the model fixed dim 0 to {low} when it was exported"
        fix = f"build the extractor with example_inputs of batch size {size}"
    else:
        why = f"the extractor was exported for dim 0 in [{low}, {high or 'inf'}]"
        fix = f"build the extractor with example_inputs of batch size {size}"
    raise InputShapeError(
        f"input {argument!r} has batch size {size}, but {why}; {fix} (on the command line: --input)"
    )


class UserInputs:
    """One placeholder per forward argument; nested inputs are read out with ``getitem``."""

    def __init__(
        self,
        graph: fx.Graph,
        model: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ep: ExportedProgram,
    ) -> None:
        in_spec = ep.call_spec.in_spec
        assert in_spec is not None
        order = list(in_spec.child(1).context or ()) if in_spec.num_children > 1 else []
        kwargs = {k: kwargs[k] for k in order if k in kwargs}
        names = _positional_names(model, len(args))
        flat, _ = pytree.tree_flatten_with_path((args, kwargs))
        self.leaves: list[Any] = []
        self.extra: set[fx.Node] = set()
        self.checks: set[fx.Node] = set()
        tops: dict[tuple[int, Any], fx.Node] = {}
        for name, value in (*zip(names, args), *kwargs.items()):
            has_tensor = any(isinstance(v, torch.Tensor) for v in pytree.tree_leaves(value))
            if has_tensor or name in names:
                side = 0 if name in names else 1
                key: Any = names.index(name) if side == 0 else name
                tops[(side, key)] = graph.placeholder(name)
        ranges = _batch_ranges(ep)
        user_nodes = [
            n for n in ep.graph.nodes if n.op == "placeholder" and n.name in _user_names(ep)
        ]
        for (path, value), ep_node in zip(flat, user_nodes):
            side, key = _key_value(path[0]), _key_value(path[1])
            top = tops.get((side, key))
            if top is None or not isinstance(value, torch.Tensor):
                self.leaves.append(value)
                continue
            node = top
            for entry in path[2:]:
                node = graph.call_function(_getter(entry), (node, _key_value(entry)))
                self.extra.add(node)
            self.leaves.append(node)
            low_high = _dim0_range(ep_node, ranges)
            if low_high is not None:
                argument = top.name + pytree.keystr(path[2:])
                check = graph.call_function(check_batch, (node, *low_high, argument))
                self.checks.add(check)
        self._next = iter(self.leaves)

    def next(self) -> Any:
        return next(self._next)


def _user_names(ep: ExportedProgram) -> set[str]:
    return {
        s.arg.name
        for s in ep.graph_signature.input_specs
        if s.kind is InputKind.USER_INPUT and hasattr(s.arg, "name")
    }


def _positional_names(model: nn.Module, count: int) -> list[str]:
    names = []
    for p in inspect.signature(model.forward).parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    names += [f"arg{i}" for i in range(len(names), count)]
    return names[:count]


def _getter(key: Any) -> Any:
    return getattr if isinstance(key, pytree.GetAttrKey) else operator.getitem


def _key_value(key: Any) -> Any:
    if isinstance(key, pytree.SequenceKey):
        return key.idx
    if isinstance(key, pytree.MappingKey):
        return key.key
    if isinstance(key, pytree.GetAttrKey):
        return key.name
    raise TraceError(f"unsupported input structure key {key!r}")  # pragma: no cover


def _batch_ranges(ep: ExportedProgram) -> dict[str, tuple[int, int | None]]:
    found = {}
    for sym, vr in ep.range_constraints.items():
        found[str(sym)] = (_finite(vr.lower) or 0, _finite(vr.upper))
    return found


def _finite(bound: Any) -> int | None:
    try:
        value = int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return value if abs(value) < 2**62 else None


def _dim0_range(node: fx.Node, ranges: Mapping[str, tuple[int, int | None]]) -> Any:
    """``(low, high)`` that dim 0 of a user input must lie in, or ``None`` when unbounded."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() == 0:
        return None
    size = val.shape[0]
    if isinstance(size, torch.SymInt) and size.node.maybe_as_int() is not None:
        size = size.node.maybe_as_int()  # a dim the exported program specialized
    if isinstance(size, int):
        return (size, size)
    low, high = ranges.get(str(size), (0, None))
    return None if low <= 1 and high is None else (low, high)
