"""A time budget for torch.export's reasoning on dynamic dimensions.

With every dimension ``Dim.AUTO``, torch.export reasons symbolically about each size the model
computes. Windowed attention (Swin, Swin2SR, MaskFormer's Swin backbone, Hiera, SAM 3's and
Gemma 3n's vision towers; LaraMini's chunked delta rule on the sequence length) pads a
dimension to a multiple of the window and cuts it into windows at every stage, and each stage
nests the last one's ``FloorDiv`` and ``Mod`` expressions: every new guard on such a symbol
re-simplifies all the facts known so far, and an export that takes 1 to 3 s with static height
and width runs for minutes (swinv2's tiny config: 130 s, and 450 s on a machine shared by
other jobs, with some 400 guards on height and width against at most 86 on any dimension of
the models ``make test`` samples).

``dynamic_budget`` lets an export run while it is cheap. Past ``DYNAMIC_BUDGET_S`` seconds,
the next guard on a symbol that already holds more than ``GUARDS`` guards stops the export
with ``OverBudget``; the export path then exports again with only the batch dimension dynamic
(``fxtap.trace._export``). Models whose symbols hold few guards (text models: 1 to 3) are never
stopped, however long their export takes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram

from fxtap._compat import guard_limit
from fxtap.trace._export_modes import batch_only, remember_batch_only
from fxtap.trace._export_shapes import dynamic_shapes_for

__all__ = ["DYNAMIC_BUDGET_S", "GUARDS", "OverBudget", "dynamic_budget", "export_within_budget"]

#: Seconds of a ``Dim.AUTO`` export after which a symbol with many guards stops it.
DYNAMIC_BUDGET_S = 20.0
#: Guards a symbol may hold past the budget before the export stops.
GUARDS = 16


class OverBudget(BaseException):
    """torch.export's symbolic reasoning ran past the budget.

    A ``BaseException``, as ``KeyboardInterrupt`` is: model and torch code that catches
    ``Exception`` around a size check must not swallow it.
    """


@contextlib.contextmanager
def dynamic_budget(seconds: float | None = None) -> Iterator[None]:
    """Within this context, a guard added ``seconds`` (default ``DYNAMIC_BUDGET_S``) after it
    opened, on a symbol that holds more than ``GUARDS`` guards, raises ``OverBudget`` from
    inside torch.export.

    >>> with dynamic_budget(30.0):
    ...     pass  # torch.export.export(model, args, kwargs, dynamic_shapes=...)
    """
    # NOTE: torch.export compares each symbol's guard count with the guard limit as it adds a
    # guard; that comparison is the one hook it offers between guards, so the limit is an
    # object that raises there. Raised between two guards, the exception unwinds the export
    # as any error of the model's code does. The setting is torch's, for the whole process,
    # as torch.export's other settings are: an export in another thread meanwhile shares it.
    with guard_limit(_Deadline(DYNAMIC_BUDGET_S if seconds is None else seconds)):
        yield


def export_within_budget(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], given: Any
) -> tuple[ExportedProgram, bool]:
    """``torch.export.export`` with the user's ``given`` shapes (no budget), else every dim
    ``Dim.AUTO`` within ``dynamic_budget``, and when that runs over, with only the batch dims
    dynamic; the other mode of the same build (``one_export``) then goes to the batch at once.

    Returns:
        The program, and whether only the batch dims were exported dynamic.
    """
    if given is not None:
        ep = torch.export.export(model, args, kwargs, dynamic_shapes=given, strict=False)
        return ep, False
    if not batch_only(model):
        shapes = dynamic_shapes_for(model, args, kwargs)
        try:
            with dynamic_budget():
                ep = torch.export.export(model, args, kwargs, dynamic_shapes=shapes, strict=False)
            return ep, False
        except OverBudget:
            remember_batch_only(model)  # the batch alone costs what static shapes do
    shapes = dynamic_shapes_for(model, args, kwargs, batch_only=True)
    return torch.export.export(model, args, kwargs, dynamic_shapes=shapes, strict=False), True


class _Deadline:
    """Compared with a symbol's guard count: never a limit, but stops the export when the
    count is high and the time is up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.perf_counter() + seconds

    def __lt__(self, count: int) -> bool:  # ``count > limit``
        if count > GUARDS and time.perf_counter() > self.end:
            raise OverBudget(f"over {self.seconds:g} s, {count} guards on one dimension")
        return False

    def __repr__(self) -> str:
        return f"_Deadline({self.seconds:g} s, {GUARDS} guards)"
