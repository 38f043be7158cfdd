"""One ``torch.export.export`` of a model in one mode, as the export path runs it.

Around the call: every RNG put back and numpy and ``random`` seeded (``kept_rng``), the reads
of ``training`` flags recorded (``read_flags``), module arguments and tuple outputs marked
(``marked_calls``), the code that asks ``torch.compiler.is_exporting()`` recorded and, on
request, told ``False`` (``exporting_asked``), and the ``Dim.AUTO`` export under a time budget
(``export_within_budget``). The model's state is checked unchanged afterwards.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from fxtap._compat import version_mark
from fxtap.errors import TraceError
from fxtap.trace._eager_branches import exporting_asked
from fxtap.trace._export_budget import export_within_budget
from fxtap.trace._export_check import kept_rng
from fxtap.trace._export_errors import export_error
from fxtap.trace._export_marks import Marks, marked_calls
from fxtap.trace._export_modes import FlagReads, read_flags, sharing
from fxtap.trace._options import restore_training

__all__ = ["run_export"]


def run_export(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    training: bool,
    dynamic_shapes: Any = None,
    is_leaf: Callable[[nn.Module, str], bool],
    eager: bool,
) -> tuple[ExportedProgram, FlagReads, Marks, list[str], bool]:
    """``torch.export.export`` in the given mode, with ``dynamic_shapes`` when given, else
    every dim ``Dim.AUTO`` (only the batch dims past ``export_within_budget``'s budget: the
    last item) and, if that fails in a way static shapes may not, static shapes; with the
    reads of ``training`` flags made by the exports (inside ``one_export`` only: elsewhere
    nothing would use them), what the hooks marked (``_export_marks``; ``is_leaf``: which
    modules are named by their path), and the code outside torch that asked
    ``torch.compiler.is_exporting()`` (told ``False`` if ``eager``).
    """
    name = type(model).__name__
    mode = "train" if training else "eval"
    state = {k: version_mark(v) for k, v in model.state_dict(keep_vars=True).items()}
    asked: list[str] = []
    with restore_training(model):
        model.train(training)
        try:
            with exporting_asked(asked, eager=eager):
                ep, flags, marks, narrowed = _export_once(
                    model, args, kwargs, dynamic_shapes, is_leaf
                )
        except Exception as exc:
            raise export_error(name, mode, exc, model=model) from exc
    changed = [
        k for k, v in model.state_dict(keep_vars=True).items() if version_mark(v) != state[k]
    ]
    if changed:  # pragma: no cover - export runs on fake tensors
        raise TraceError(f"torch.export changed {name}'s state {changed[:3]} while tracing")
    return ep, flags, marks, asked, narrowed


def _export_once(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dynamic_shapes: Any,
    is_leaf: Callable[[nn.Module, str], bool],
) -> tuple[ExportedProgram, FlagReads, Marks, bool]:
    """One export of ``model`` in its current mode: ``Dim.AUTO`` (or ``dynamic_shapes``),
    then static shapes when a dynamic dim fails in a way they may not."""
    try:
        with _around_export(model, is_leaf) as (flags, marks):
            ep, narrowed = export_within_budget(model, args, kwargs, dynamic_shapes)
    except Exception as first:
        if isinstance(first, GuardOnDataDependentSymNode) or dynamic_shapes is not None:
            raise  # a branch on tensor values: static shapes fail the same way
        # a dynamic dim can fail in ways Dim.AUTO does not absorb: fall back to static
        with _around_export(model, is_leaf) as (flags, marks):
            ep, narrowed = torch.export.export(model, args, kwargs, strict=False), False
    return ep, flags, marks, narrowed


@contextlib.contextmanager
def _around_export(
    model: nn.Module, is_leaf: Callable[[nn.Module, str], bool]
) -> Iterator[tuple[FlagReads, Marks]]:
    """What every export attempt runs in: RNGs kept, flag reads recorded, calls marked, and
    torch.export's own noise swallowed."""
    # NOTE: on failure torch.export prints its partial graph (thousands of lines) to stderr;
    # the TraceError says what failed, so that print is swallowed. An RNN rebuilds its
    # ``_flat_weights`` list of its own parameters whenever export swaps them, and torch.export
    # warns that the list was assigned: that warning is silenced
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stderr(io.StringIO()),
        kept_rng(),
        read_flags(model, record=sharing()) as flags,
        marked_calls(model, is_leaf) as marks,
    ):
        warnings.filterwarnings(
            "ignore", message=r"The tensor attributes self\..*_flat_weights", category=UserWarning
        )
        yield flags, marks
