"""The exported graph at a second shape: dimensions it is only right at their example size.

torch.export keeps a dimension dynamic unless the model's code needs it fixed, and guards the
branches that depend on it; some branches it takes without a guard. ViT's
``interpolate_pos_encoding`` returns the position table as it is when the image has the
config's square size, so a graph exported from such an image skips the interpolation at every
size. ``check_at_second_shape`` runs the graph and the model on the example inputs cut (or
grown, by repeating them) along every dynamic dimension, so their values stay what the model
accepts. When they agree, that check stands for the check at the example shape; when they do
not, it names the dimensions at which the graph differs from the model, and the export path
exports again with those dimensions static, so that a call at another size raises
``InputShapeError`` naming the input and the dimension.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from fxtap._compat import pytree
from fxtap.errors import InputShapeError
from fxtap.trace._export_check import first_mismatch, leaf_outputs
from fxtap.trace._tracer import Traced

__all__ = ["check_at_second_shape"]

#: (position of a tensor among the flat inputs, dim) of each use of one symbol.
Uses = list[tuple[int, int]]


def check_at_second_shape(
    model: nn.Module,
    traced: Traced,
    ep: ExportedProgram,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> dict[int, set[int]] | None:
    """Check ``traced`` against ``model`` at a second shape of the example inputs.

    Every dynamic dimension gets another size (a quarter less where torch.export allows it,
    else a quarter more; a quarter more for all when the model refuses the smaller), and graph and model run side by side on inputs of that shape, as
    ``check_export`` runs them (a second seed only when the model draws random numbers).

    Returns:
        ``None`` when they agree: the graph is right at a shape it was not exported at.
        Otherwise ``id(input tensor) -> dims`` that must be exported static (the dims whose
        size alone makes them differ), or ``{}`` when no second shape could be tried (no
        dynamic dimension, or the model refuses it): then only the example shape can be
        checked.
    """
    compared = leaf_outputs(model, traced)
    flat, spec, uses = _symbol_uses(ep, args, kwargs)
    verdict = None
    for grow in (False, True):  # a larger shape where the model refuses the smaller one
        sizes = _second_sizes(ep, flat, uses, grow=grow)
        verdict = _agrees(model, compared, flat, spec, uses, sizes) if sizes else None
        if verdict is not None:
            break
    if verdict is None:
        return {}
    if verdict:
        return None
    bad = [s for s in sizes if _agrees(model, compared, flat, spec, uses, {s: sizes[s]}) is False]
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
            # NOTE: a size's expression is a sympy object (torch's dependency, not fxtap's);
            # ``is_Symbol`` says it is one free symbol, not an expression of several
            if getattr(expr, "is_Symbol", False):
                uses[str(expr)].append((index, dim))
            elif expr is not None:
                tangled |= {str(s) for s in expr.free_symbols}
    return flat, spec, {k: v for k, v in uses.items() if k not in tangled}


def _second_sizes(
    ep: ExportedProgram, flat: list[Any], uses: Mapping[str, Uses], *, grow: bool
) -> dict[str, int]:
    """A second size for each symbol: a quarter less (at least one less) where its range
    allows and not ``grow``, else a quarter more; a smaller shape keeps the check cheap."""
    ranges = {str(k): v for k, v in ep.range_constraints.items()}
    sizes = {}
    for symbol, where in uses.items():
        index, dim = where[0]
        old = int(flat[index].shape[dim])
        bound = ranges.get(symbol)
        low = max(_finite(getattr(bound, "lower", None)) or 0, 2)
        high = _finite(getattr(bound, "upper", None))
        step = max(1, old // 4)
        if not grow and old - step >= low:
            sizes[symbol] = old - step
        elif high is None or old + step <= high:
            sizes[symbol] = old + step
    return sizes


def _agrees(
    model: nn.Module,
    compared: Traced,
    flat: list[Any],
    spec: Any,
    uses: Mapping[str, Uses],
    sizes: Mapping[str, int],
) -> bool | None:
    """Whether graph and model agree on the inputs at ``sizes``; ``None``: the model refuses
    them."""
    grown = list(flat)
    for symbol, size in sizes.items():
        for index, dim in uses[symbol]:
            grown[index] = _grow(grown[index], dim, size)
    args, kwargs = pytree.tree_unflatten(grown, spec)
    # NOTE: some models set attributes from the input's size as they run (Swin shrinks its
    # window to a small image): each module's attributes are put back afterwards
    saved = [(m, dict(m.__dict__)) for m in model.modules()]
    try:
        return first_mismatch(model, compared, args, kwargs) is None
    except InputShapeError:
        return None  # the model refuses that shape: nothing to learn from it
    finally:
        for module, attributes in saved:
            now = module.__dict__
            if now.keys() != attributes.keys() or any(
                now[k] is not v for k, v in attributes.items()
            ):
                module.__dict__.clear()
                module.__dict__.update(attributes)


def _grow(value: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``value`` cut to ``size`` along ``dim``, or repeated first: values of the same kind."""
    copies = -(-size // value.shape[dim])
    return torch.cat([value] * copies, dim).narrow(dim, 0, size)


def _finite(bound: Any) -> int | None:
    try:
        value = int(bound)
    except (TypeError, ValueError, OverflowError, AttributeError):  # int_oo, None
        return None
    return value if abs(value) < 2**62 else None
