"""``dynamic_shapes`` for ``torch.export``: every input dimension dynamic, or the user's own.

torch.export keys ``dynamic_shapes`` by forward parameter; fxtap's ``example_inputs`` are a
tensor, a tuple of positional inputs or a dict of keyword inputs, and ``dynamic_shapes=`` is
keyed the same way. Both are mapped onto the forward signature here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fxtap._compat import pytree
from fxtap.errors import InvalidArgumentError, close_matches, format_choices

__all__ = ["dynamic_shapes_for", "given_shapes"]


def dynamic_shapes_for(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    static: Mapping[int, set[int]] | None = None,
    batch_only: bool = False,
) -> Any:
    """``Dim.AUTO`` on every dim of every tensor input, keyed as ``torch.export`` expects.

    Batch, sequence length, audio time and image height and width all vary in normal use;
    with ``Dim.AUTO`` torch.export keeps each one dynamic unless the model's code needs it
    fixed (a reshape to a constant, a ``Conv2d``'s channels, a position table of fixed
    size), and then specializes it instead of failing. ``check_shapes`` holds calls to what
    was kept. ``static`` (``id(tensor) -> dims``) leaves those dims out: exported static.
    ``batch_only`` keeps only dim 0 of each tensor (``fxtap.trace._export_budget``).
    """
    fixed = static or {}

    def spec(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            dims = [d for d in range(value.dim()) if d not in fixed.get(id(value), ())]
            dims = [d for d in dims if d == 0] if batch_only else dims
            return dict.fromkeys(dims, torch.export.Dim.AUTO)
        return None

    return _by_parameter(model, args, kwargs, lambda _, value: pytree.tree_map(spec, value))


def _by_parameter(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    spec: Callable[[int | str, Any], Any],
) -> Any:
    """``spec(key, value)`` for each bound forward argument (``key``: its position in ``args``
    or its name in ``kwargs``), keyed by parameter name as torch.export expects."""
    try:
        signature = inspect.signature(model.forward)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    shapes: dict[str, Any] = {}
    position = 0
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            shapes[name] = {k: spec(k, v) for k, v in value.items()}
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            shapes[name] = tuple(spec(position + i, v) for i, v in enumerate(value))
            position += len(value)
        elif name in kwargs:
            shapes[name] = spec(name, value)
        else:
            shapes[name] = spec(position, value)
            position += 1
    return shapes


def given_shapes(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], given: Any
) -> Any:
    """The user's ``dynamic_shapes``, in the structure of their ``example_inputs``, keyed by
    forward parameter as torch.export expects; inputs they leave out are static.

    Raises:
        InvalidArgumentError: ``given`` does not follow ``example_inputs``.
    """
    if isinstance(given, Mapping) and not args:
        unknown = [k for k in given if k not in kwargs]
        if unknown:
            hint = close_matches(str(unknown[0]), [str(k) for k in kwargs])
            raise InvalidArgumentError(
                f"dynamic_shapes names {unknown[0]!r}, which is not one of the example_inputs "
                f"{format_choices(kwargs)}"
                + (f" (closest: {format_choices(hint)})" if hint else "")
                + "; key dynamic_shapes as example_inputs are keyed"
            )
        table: Mapping[Any, Any] = given
    elif isinstance(given, (tuple, list)) and not kwargs and len(given) == len(args):
        table = dict(enumerate(given))
    elif not isinstance(given, (tuple, list, Mapping)) or (len(args) == 1 and not kwargs):
        table = {0: given}  # one tensor input: the spec of its dims
    else:
        raise InvalidArgumentError(
            f"dynamic_shapes {given!r:.80} does not follow example_inputs; pass a dict keyed "
            "as a dict of example_inputs, or a tuple with one entry per positional input "
            "(None for a static one)"
        )
    return _by_parameter(model, args, kwargs, lambda key, _: table.get(key))
