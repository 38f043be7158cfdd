"""Trace a model with torch.fx or torch.export and give every node a dotted-path name.

``trace`` is the front door for one mode. ``route`` (``_route``) decides how a model is traced,
for ``trace`` and every other stage: torch.fx (``_tracer``, with options checked in
``_options``, the automatic leaf fallback in ``_fallback`` and the eager mis-trace check in
``_mistrace``), torch.export (``_export``), or the capture path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import fx, nn

from fxtap.trace._export import export_trace, split_example_inputs
from fxtap.trace._export_inputs import check_batch, check_shapes
from fxtap.trace._fallback import is_root_failure, trace_with_fallback
from fxtap.trace._mistrace import difference
from fxtap.trace._options import check_flags, check_model, restore_training, tracer_options
from fxtap.trace._route import (
    MODES,
    TRACERS,
    Route,
    TraceOptions,
    check_tracer,
    export_notes,
    first_line,
    route,
    warn_capture,
)
from fxtap.trace._tracer import NAME_KEY, SCOPE_KEY, SOURCE_KEY, NodePathTracer, Traced

__all__ = [
    "INPUT_CHECKS",
    "MODES",
    "NAME_KEY",
    "SCOPE_KEY",
    "SOURCE_KEY",
    "TRACERS",
    "NodePathTracer",
    "Route",
    "TraceOptions",
    "Traced",
    "check_flags",
    "check_model",
    "check_tracer",
    "difference",
    "export_notes",
    "export_trace",
    "first_line",
    "is_root_failure",
    "restore_training",
    "route",
    "split_example_inputs",
    "trace",
    "trace_names",
    "trace_with_fallback",
    "tracer_options",
    "warn_capture",
]


#: The export path's checks of input shapes: kept by the pruner as asserts on the inputs.
INPUT_CHECKS = (check_shapes, check_batch)


def trace(
    model: nn.Module,
    *,
    training: bool,
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    auto_leaf: bool = False,
    example_inputs: Any = None,
    tracer: str = "auto",
    dynamic_shapes: Any = None,
) -> Traced:
    """Trace ``model`` in one mode; the model is left as it was.

    The tracer is chosen by ``route`` (``fxtap.trace._route``), as for every other stage; the
    capture path is not one here, since it builds no graph.

    Args:
        model: the model to trace.
        training: trace in train mode (``True``) or eval mode (``False``).
        tracer_kwargs: keyword arguments of ``NodePathTracer``; ``leaf_modules`` and
            ``autowrap_modules`` are added to torchvision's defaults.
        concrete_args: torch.fx's ``concrete_args``.
        auto_leaf: when tracing fails inside a submodule, keep that module as a leaf, and when
            it fails in a plain function, record the function as one node; trace again until
            the model traces, and warn with what became opaque (``fxtap.trace._fallback``). Off here,
            on in ``create_feature_extractor`` and ``get_graph_node_names``.
        example_inputs: one forward's inputs (a tensor, a tuple, or a dict of keyword inputs).
            The torch.fx graph is checked against an eager run module by module, and a module
            whose traced value differs is made a leaf (``auto_leaf``) or reported with
            ``MistraceError``; torch.export traces with them.
        tracer: ``"auto"`` (torch.fx; torch.export when torch.fx cannot trace the root forward
            and ``example_inputs`` are given or implied by the model's config), ``"fx"``
            (``NodePathTracer``) or ``"export"`` (``torch.export``; docs/tracing.md).
        dynamic_shapes: on the export path, torch.export's ``dynamic_shapes``, keyed as
            ``example_inputs`` are; by default every input dimension is ``Dim.AUTO``.

    Returns:
        A ``Traced`` whose graph module shares submodules and parameters with ``model``;
        ``leaves`` and ``wrapped`` list what the fallback made opaque.

    Raises:
        TraceError: the model could not be traced.
        MistraceError: the graph computes something other than the model on ``example_inputs``.
        InvalidArgumentError: bad ``tracer_kwargs`` or ``concrete_args``.
    """
    check_flags(training=training)
    options = TraceOptions(
        tracer,
        tracer_kwargs,
        concrete_args,
        auto_leaf,
        example_inputs,
        dynamic_shapes=dynamic_shapes,
    )
    mode = "train" if training else "eval"
    return route(model, options, modes=(mode,), capture=False).traces[mode]


def trace_names(
    model: nn.Module,
    *,
    training: bool,
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    auto_leaf: bool = False,
) -> dict[fx.Node, str]:
    """``trace(...).names`` without building the graph module: the same names, checks and errors.

    For callers that only list names (``get_graph_node_names``): compiling the graph module's
    code is about a third of a trace's cost.

    Raises:
        TraceError: torch.fx could not trace the model.
        InvalidArgumentError: bad ``tracer_kwargs`` or ``concrete_args``.
    """
    options = TraceOptions(
        tracer="fx", tracer_kwargs=tracer_kwargs, concrete_args=concrete_args, auto_leaf=auto_leaf
    )
    mode = "train" if training else "eval"
    return route(model, options, modes=(mode,), capture=False, names_only=True).names[mode]
