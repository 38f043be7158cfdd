"""Trace a model with torch.fx and give every node a dotted-path name.

``trace`` is the front door: one trace with ``NodePathTracer`` (``_tracer``), with options
checked first (``_options``), and on request the automatic leaf fallback (``_fallback``) and
the eager mis-trace check (``_mistrace``). ``tracer="export"`` traces with ``torch.export``
instead (``_export``), and ``tracer="auto"`` does so when torch.fx cannot trace the root.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import fx, nn

from fxtap._stage import make_callable
from fxtap.errors import FxtapError, InvalidArgumentError, TraceError, close_matches, format_choices
from fxtap.trace._example import implied_inputs
from fxtap.trace._export import export_trace, split_example_inputs
from fxtap.trace._export_inputs import check_batch, check_shapes
from fxtap.trace._export_modes import one_export
from fxtap.trace._fallback import (
    Opaque,
    QualnameLeaves,
    is_root_failure,
    names_with_fallback,
    trace_with_fallback,
    user_stacklevel,
    warn_opaque,
)
from fxtap.trace._mistrace import Mismatch, difference, find_mistrace, frozen_state
from fxtap.trace._options import (
    check_concrete_args,
    check_flags,
    check_model,
    default_autowrap_modules,
    default_leaf_modules,
    restore_training,
    tracer_options,
)
from fxtap.trace._tracer import (
    NAME_KEY,
    SCOPE_KEY,
    SOURCE_KEY,
    NodePathTracer,
    Traced,
    trace_error,
    trace_graph,
    trace_with_options,
)

__all__ = [
    "INPUT_CHECKS",
    "NAME_KEY",
    "SCOPE_KEY",
    "SOURCE_KEY",
    "TRACERS",
    "Mismatch",
    "NodePathTracer",
    "Opaque",
    "QualnameLeaves",
    "Traced",
    "check_concrete_args",
    "check_flags",
    "check_model",
    "check_tracer",
    "default_autowrap_modules",
    "default_leaf_modules",
    "difference",
    "export_trace",
    "find_mistrace",
    "frozen_state",
    "implied_inputs",
    "is_root_failure",
    "names_with_fallback",
    "restore_training",
    "split_example_inputs",
    "trace",
    "trace_error",
    "trace_graph",
    "trace_modes",
    "trace_names",
    "trace_or_export",
    "trace_with_fallback",
    "trace_with_options",
    "tracer_options",
    "user_stacklevel",
    "warn_opaque",
]


#: The export path's checks of input shapes: kept by the pruner as asserts on the inputs.
INPUT_CHECKS = (check_shapes, check_batch)

#: Values of the ``tracer`` option: torch.fx, torch.export, or torch.fx then torch.export.
TRACERS = ("fx", "export", "auto")


def trace(
    model: nn.Module,
    *,
    training: bool,
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    auto_leaf: bool = False,
    example_inputs: Any = None,
    tracer: str = "fx",
    dynamic_shapes: Any = None,
) -> Traced:
    """Trace ``model`` in one mode with a ``NodePathTracer``; the model is left as it was.

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
        example_inputs: a tensor or tuple of inputs; when given, the graph is checked against
            an eager run module by module, and a module whose traced value differs is made a
            leaf (``auto_leaf``) or reported with ``MistraceError``. On the export path, the
            inputs to export with (a tensor, a tuple, or a dict of keyword inputs).
        tracer: ``"fx"`` (``NodePathTracer``), ``"export"`` (``torch.export``, needs
            ``example_inputs`` or a model whose config implies them; docs/tracing.md) or
            ``"auto"``: torch.fx, and torch.export when torch.fx cannot trace the root forward
            and ``example_inputs`` are given or implied (``implied_inputs``).
        dynamic_shapes: on the export path, torch.export's ``dynamic_shapes``, keyed as
            ``example_inputs`` are; by default every input dimension is ``Dim.AUTO``.

    Returns:
        A ``Traced`` whose graph module shares submodules and parameters with ``model``;
        ``leaves`` and ``wrapped`` list what the fallback made opaque.

    Raises:
        TraceError: torch.fx could not trace the model.
        MistraceError: the graph computes something other than the model on ``example_inputs``.
        InvalidArgumentError: bad ``tracer_kwargs`` or ``concrete_args``.
    """
    check_model(model)
    check_flags(training=training, auto_leaf=auto_leaf)
    check_tracer(tracer)
    return _fx_else_export(
        lambda: _trace_fx(model, training, tracer_kwargs, concrete_args, auto_leaf, example_inputs),
        model,
        training=training,
        example_inputs=example_inputs,
        tracer_kwargs=tracer_kwargs,
        tracer=tracer,
        dynamic_shapes=dynamic_shapes,
    )


def trace_modes(model: nn.Module, **options: Any) -> dict[str, Traced]:
    """``trace`` in train mode, then in eval mode, with the same ``options``: what every stage
    that builds a two-mode module (an extractor, an edited model, a split) starts from.

    On the export path the model is exported once when its two modes' programs cannot differ
    (its code read no ``training`` flag while exporting: ``fxtap.trace._export_modes``).

    Raises:
        TraceError: from the first mode that cannot be traced, as ``trace`` raises it.
    """
    with one_export():
        return {
            mode: trace(model, training=mode == "train", **options) for mode in ("train", "eval")
        }


def trace_or_export(
    model: nn.Module,
    *,
    training: bool,
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    example_inputs: Any = None,
    tracer: str = "auto",
) -> Traced:
    """Trace ``model`` to list or draw it: ``tracer`` picks torch.fx or torch.export.

    Unlike ``trace``, ``example_inputs`` never run an eager check of the torch.fx graph; they
    are what ``torch.export`` traces with, for ``tracer="export"``, and for ``tracer="auto"``
    when torch.fx cannot trace the root forward (Hugging Face models). The node table, the
    renderer and the command line trace through here.

    Raises:
        TraceError: the model cannot be traced (with the export error attached for ``"auto"``).
        InvalidArgumentError: a bad ``tracer``, ``tracer_kwargs`` or ``concrete_args``; the
            export path without ``example_inputs``.
    """
    check_model(model)
    check_tracer(tracer)
    return _fx_else_export(
        lambda: trace(
            model, training=training, tracer_kwargs=tracer_kwargs, concrete_args=concrete_args
        ),
        model,
        training=training,
        example_inputs=example_inputs,
        tracer_kwargs=tracer_kwargs,
        tracer=tracer,
    )


def _fx_else_export(
    fx_trace: Callable[[], Traced],
    model: nn.Module,
    *,
    training: bool,
    example_inputs: Any,
    tracer_kwargs: Mapping[str, Any] | None,
    tracer: str,
    dynamic_shapes: Any = None,
) -> Traced:
    """torch.export for ``tracer="export"``; else ``fx_trace()``, and under ``"auto"``
    torch.export when torch.fx cannot trace the root and ``example_inputs`` are given or
    implied by the model's config (``implied_inputs``)."""
    if tracer == "export":
        return export_trace(
            model,
            training=training,
            example_inputs=_or_implied(model, example_inputs),
            tracer_kwargs=tracer_kwargs,
            dynamic_shapes=dynamic_shapes,
        )
    try:
        return fx_trace()
    except TraceError as exc:
        inputs = _or_implied(model, example_inputs)
        if tracer != "auto" or inputs is None or not is_root_failure(exc):
            raise
        try:
            return export_trace(
                model,
                training=training,
                example_inputs=inputs,
                tracer_kwargs=tracer_kwargs,
                dynamic_shapes=dynamic_shapes,
            )
        except FxtapError as second:
            exc.add_note(f"torch.export could not trace it either: {second}")
            raise exc from None


def _or_implied(model: nn.Module, example_inputs: Any) -> Any:
    """``example_inputs``, else the inputs the model's config implies (``implied_inputs``)."""
    return implied_inputs(model) if example_inputs is None else example_inputs


def check_tracer(tracer: Any) -> None:
    """Raise ``InvalidArgumentError`` unless ``tracer`` is one of ``TRACERS``."""
    if tracer not in TRACERS:
        hint = close_matches(str(tracer), TRACERS)
        raise InvalidArgumentError(
            f"tracer {tracer!r} is not a tracer; expected one of {format_choices(TRACERS)}"
            + (f" (closest: {format_choices(hint)})" if hint else "")
            + "; pass tracer='auto' to let fxtap choose"
        )


def _trace_fx(
    model: nn.Module,
    training: bool,
    tracer_kwargs: Mapping[str, Any] | None,
    concrete_args: Mapping[str, Any] | None,
    auto_leaf: bool,
    example_inputs: Any,
) -> Traced:
    options = tracer_options(tracer_kwargs)
    concrete = check_concrete_args(model, concrete_args)
    if auto_leaf or example_inputs is not None:
        return trace_with_fallback(
            model,
            training=training,
            options=options,
            concrete_args=concrete,
            auto_leaf=auto_leaf,
            example_inputs=example_inputs,
        )
    return trace_with_options(model, training=training, options=options, concrete_args=concrete)


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
    check_model(model)
    options = tracer_options(tracer_kwargs)
    concrete = check_concrete_args(model, concrete_args)
    if auto_leaf:
        return names_with_fallback(
            model, training=training, options=options, concrete_args=concrete
        )
    tracer = trace_graph(model, training=training, options=options, concrete_args=concrete)
    return tracer.node_to_qualname


make_callable(__name__, trace)
