"""Stage 1: trace a model with torch.fx and give every node a dotted-path name.

``trace`` is the front door: one trace with ``NodePathTracer`` (``_tracer``), with options
checked first (``_options``), and on request the automatic leaf fallback (``_fallback``) and
the eager mis-trace check (``_mistrace``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fxtap._stage import make_callable
from fxtap.trace._fallback import (
    Opaque,
    QualnameLeaves,
    is_root_failure,
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
    trace_with_options,
)

__all__ = [
    "NAME_KEY",
    "SCOPE_KEY",
    "SOURCE_KEY",
    "Mismatch",
    "NodePathTracer",
    "Opaque",
    "QualnameLeaves",
    "Traced",
    "check_concrete_args",
    "check_flags",
    "check_model",
    "default_autowrap_modules",
    "default_leaf_modules",
    "difference",
    "find_mistrace",
    "frozen_state",
    "is_root_failure",
    "restore_training",
    "trace",
    "trace_error",
    "trace_with_fallback",
    "trace_with_options",
    "tracer_options",
    "user_stacklevel",
    "warn_opaque",
]


def trace(
    model: nn.Module,
    *,
    training: bool,
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    auto_leaf: bool = False,
    example_inputs: Any = None,
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
            leaf (``auto_leaf``) or reported with ``MistraceError``.

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


make_callable(__name__, trace)
