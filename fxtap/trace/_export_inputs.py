"""Inputs of an exported graph: one placeholder per forward argument, and their shape checks."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from fxtap._compat import pytree, symbolic_check
from fxtap.errors import InputShapeError, TraceError

__all__ = ["UserInputs", "check_batch", "check_shapes"]

#: One input's expected shape: per dim, its size (fixed by the exported program), the name of
#: its symbol (dynamic), or ``None`` (an expression of other dims, left to the graph).
Dims = tuple[int | str | None, ...]

_FIX = (
    "build the extractor with example_inputs of the shapes you will use, or pass "
    "dynamic_shapes= (handed to torch.export) to make that dimension dynamic (on the command "
    "line: --input)"
)


def check_shapes(
    spec: tuple[tuple[tuple[str, Dims], ...], tuple[tuple[str, int, int | None], ...]],
    *values: Any,
) -> Any:
    """Raise ``InputShapeError`` unless every input has a shape the exported program runs.

    Inserted by the export path after the inputs, before any op, so that a call the graph
    was not exported for fails here with the input's name, not deep inside the graph with a
    raw ``RuntimeError`` or, worse, with a tensor of the wrong shape. ``spec`` is
    ``(inputs, ranges)``: for each input its name and ``Dims``, and for each symbol of a
    dynamic dim the range torch.export allows (``high`` ``None`` for no bound). Dims that share
    a symbol must be equal, as they were when the extractor was built.

    Traced again by ``torch.export`` (an extractor, a half or an edited module exported with
    ``dynamic_shapes``), the sizes are symbols: the same conditions become constraints of the
    new program (``torch._check``) instead of comparisons that would fix each dimension to the
    example's size.
    """
    inputs, ranges = spec
    if any(isinstance(v, fx.Proxy) for v in values):
        # NOTE: unpickling re-traces the generated code with torch.fx: record the check again
        proxy = next(v for v in values if isinstance(v, fx.Proxy))
        return proxy.tracer.create_proxy("call_function", check_shapes, (spec, *values), {})
    bounds = {name: (low, high) for name, low, high in ranges}
    seen: dict[str, tuple[str, int, int]] = {}
    symbols: dict[str, torch.SymInt] = {}
    for (argument, dims), value in zip(inputs, values):
        if not isinstance(value, torch.Tensor):
            continue
        if value.dim() != len(dims):
            raise InputShapeError(
                f"input {argument!r} has {value.dim()} dims (shape {tuple(value.shape)}), but "
                f"the extractor was built for {len(dims)}; pass a tensor of that rank"
            )
        for dim, (size, want) in enumerate(zip(value.shape, dims)):
            if isinstance(size, torch.SymInt):
                _constrain_dim(size, want, bounds, symbols)
            else:
                _check_dim(argument, dim, int(size), want, bounds, seen)


def check_batch(value: Any, low: int, high: int | None, argument: str) -> Any:
    """Raise ``InputShapeError`` unless dim 0 of ``value`` lies in ``[low, high]``.

    The check of extractors exported before ``check_shapes`` checked every dimension; their
    safe files name this function, so it stays.
    """
    if isinstance(value, fx.Proxy):
        return value.tracer.create_proxy(
            "call_function", check_batch, (value, low, high, argument), {}
        )
    if isinstance(value.shape[0], torch.SymInt):  # torch.export traces it again
        _constrain_dim(value.shape[0], low if low == high else "batch", {"batch": (low, high)}, {})
        return None
    _check_dim(argument, 0, int(value.shape[0]), "batch", {"batch": (low, high)}, {})
    if low == high:
        _check_dim(argument, 0, int(value.shape[0]), low, {}, {})
    return None


def _check_dim(
    argument: str,
    dim: int,
    size: int,
    want: int | str | None,
    bounds: Mapping[str, tuple[int, int | None]],
    seen: dict[str, tuple[str, int, int]],
) -> None:
    where = f"input {argument!r} has size {size} in dim {dim}"
    if isinstance(want, int):
        if size != want:
            raise InputShapeError(
                f"{where}, but the extractor was built for size {want} there and that "
                f"dimension is fixed (the model's code fixes it, the model took a branch that "
                f"holds only at that size, it was 0 or 1 in the example, or torch.export's "
                f"reasoning on it ran past its time budget); {_FIX}"
            )
        return
    if want is None:
        return
    low, high = bounds.get(want, (0, None))
    if size < low or (high is not None and size > high):
        allowed = f"[{low}, {'inf' if high is None else high}]"
        raise InputShapeError(
            f"{where}, but the extractor was exported for sizes in {allowed} there; {_FIX}"
        )
    first = seen.setdefault(want, (argument, dim, size))
    if first[2] != size:
        raise InputShapeError(
            f"{where}, but it must equal dim {first[1]} of input {first[0]!r} ({first[2]}), as "
            "when the extractor was built (torch.export found the model needs them equal); "
            "pass inputs whose sizes agree"
        )


def _constrain_dim(
    size: torch.SymInt,
    want: int | str | None,
    bounds: Mapping[str, tuple[int, int | None]],
    symbols: dict[str, torch.SymInt],
) -> None:
    """``_check_dim`` for a symbolic size: the conditions as torch.export constraints.

    NOTE: ``int(size)`` or ``size != want`` in Python would guard on the example's size and
    specialize a dimension the caller exported as dynamic; ``symbolic_check`` (``torch._check``) records the
    condition instead (a fixed dim still fixes it, and torch.export says so).
    """
    if isinstance(want, int):
        symbolic_check(size == want)
        return
    if want is None:
        return
    low, high = bounds.get(want, (0, None))
    symbolic_check(size >= low)
    if high is not None:
        symbolic_check(size <= high)
    first = symbols.setdefault(want, size)
    if first is not size:
        symbolic_check(size == first)


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
        user_nodes = [
            n for n in ep.graph.nodes if n.op == "placeholder" and n.name in _user_names(ep)
        ]
        checked: list[tuple[str, Dims]] = []
        nodes: list[fx.Node] = []
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
            dims = _dims(ep_node)
            if dims is not None:
                checked.append((top.name + pytree.keystr(path[2:]), dims))
                nodes.append(node)
        if checked:
            symbols = {d for _, dims in checked for d in dims if isinstance(d, str)}
            ranges = tuple(r for r in _ranges(ep) if r[0] in symbols)
            check = graph.call_function(check_shapes, ((tuple(checked), ranges), *nodes))
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


def _ranges(ep: ExportedProgram) -> list[tuple[str, int, int | None]]:
    """``(symbol, low, high)`` of every dynamic dim, as torch.export bounded it."""
    return [
        (str(sym), _finite(vr.lower) or 0, _finite(vr.upper))
        for sym, vr in ep.range_constraints.items()
    ]


def _finite(bound: Any) -> int | None:
    try:
        value = int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return value if abs(value) < 2**62 else None


def _dims(node: fx.Node) -> Dims | None:
    """Per dim of a user input: its fixed size, its symbol's name, or ``None`` (an expression)."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    dims: list[int | str | None] = []
    for size in val.shape:
        if is_concrete_int(size):
            dims.append(int(size))  # a dim the exported program specialized
        elif str(size).isidentifier():
            dims.append(str(size))  # a symbol of its own, such as s53
        else:
            dims.append(None)  # an expression of other dims
    return tuple(dims)
