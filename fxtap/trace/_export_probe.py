"""The exported graph at a second shape: dimensions it is only right at their example size.

torch.export keeps a dimension dynamic unless the model's code needs it fixed, and guards the
branches that depend on it; some branches it takes without a guard. ViT's
``interpolate_pos_encoding`` returns the position table as it is when the image has the
config's square size, so a graph exported from such an image skips the interpolation at every
size. ``dims_to_fix`` runs the graph and the model once more, on the example inputs grown
along every dynamic dimension (each input repeated along it, so its values stay what the
model accepts), and names the dimensions at which the graph differs from the model; the
export path then exports again with those dimensions static, and a call at another size
raises ``InputShapeError`` naming the input and the dimension.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import sympy
import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from fxtap._compat import pytree
from fxtap.errors import InputShapeError
from fxtap.trace._mistrace import find_mistrace
from fxtap.trace._tracer import Traced

__all__ = ["dims_to_fix"]

#: (position of a tensor among the flat inputs, dim) of each use of one symbol.
Uses = list[tuple[int, int]]


def dims_to_fix(
    model: nn.Module,
    traced: Traced,
    ep: ExportedProgram,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    compared: Traced,
) -> dict[int, set[int]]:
    """``id(input tensor) -> dims`` that must be exported static; empty when the graph is
    right at the grown shape, or when the model itself refuses that shape.

    ``compared`` is ``traced`` with the module outputs ``check_export`` compares.
    """
    flat, spec, uses = _symbol_uses(ep, args, kwargs)
    sizes = _grown_sizes(ep, flat, uses)
    if not sizes:
        return {}
    if _agrees(model, compared, flat, spec, uses, sizes):
        return {}
    bad = [s for s in sizes if not _agrees(model, compared, flat, spec, uses, {s: sizes[s]})]
    fixed: dict[int, set[int]] = defaultdict(set)
    for symbol in bad or list(sizes):
        for index, dim in uses[symbol]:
            fixed[id(flat[index])].add(dim)
    return dict(fixed)


def _symbol_uses(
    ep: ExportedProgram, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[list[Any], Any, dict[str, Uses]]:
    """The flat user inputs in the program's order, their structure, and for each symbol that
    is a whole dimension of some input (and nothing else), where it is used."""
    in_spec = ep.call_spec.in_spec
    order = list(in_spec.child(1).context or ()) if in_spec is not None else []
    ordered = {k: kwargs[k] for k in order if k in kwargs}
    flat, spec = pytree.tree_flatten((args, ordered))
    users = {s.arg.name for s in ep.graph_signature.input_specs if s.kind is InputKind.USER_INPUT}
    nodes = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in users]
    uses: dict[str, Uses] = defaultdict(list)
    tangled: set[str] = set()
    for index, (value, node) in enumerate(zip(flat, nodes)):
        val = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or not isinstance(val, torch.Tensor):
            continue
        for dim, size in enumerate(val.shape):
            expr = getattr(getattr(size, "node", None), "expr", None)
            if isinstance(expr, sympy.Symbol):
                uses[str(expr)].append((index, dim))
            elif expr is not None:
                tangled |= {str(s) for s in expr.free_symbols}
    return flat, spec, {k: v for k, v in uses.items() if k not in tangled}


def _grown_sizes(ep: ExportedProgram, flat: list[Any], uses: Mapping[str, Uses]) -> dict[str, int]:
    """A second size for each symbol: a quarter more (at least one more), within its range."""
    ranges = {str(k): v for k, v in ep.range_constraints.items()}
    sizes = {}
    for symbol, where in uses.items():
        index, dim = where[0]
        old = int(flat[index].shape[dim])
        new = old + max(1, old // 4)
        upper = _finite(getattr(ranges.get(symbol), "upper", None))
        if upper is not None and new > upper:
            new = max(upper, old)
        if new != old:
            sizes[symbol] = new
    return sizes


def _agrees(
    model: nn.Module,
    compared: Traced,
    flat: list[Any],
    spec: Any,
    uses: Mapping[str, Uses],
    sizes: Mapping[str, int],
) -> bool:
    grown = list(flat)
    for symbol, size in sizes.items():
        for index, dim in uses[symbol]:
            grown[index] = _grow(grown[index], dim, size)
    args, kwargs = pytree.tree_unflatten(grown, spec)
    try:
        return find_mistrace(model, compared, args, keywords=kwargs, seed=0) is None
    except InputShapeError:
        return True  # the model refuses that shape too: nothing to learn from it


def _grow(value: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``value`` repeated along ``dim`` and cut to ``size``: values of the same kind."""
    copies = -(-size // value.shape[dim])
    return torch.cat([value] * copies, dim).narrow(dim, 0, size)


def _finite(bound: Any) -> int | None:
    try:
        value = int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):  # int_oo, None
        return None
    return value if abs(value) < 2**62 else None
