"""Choose how a model is traced: torch.fx, torch.export or the capture path, in one place.

Every entry point (``trace``, ``get_graph_node_names``, ``node_table``,
``create_feature_extractor``, ``render``, ``compare``, ``split``, ``edit``, the command line)
passes its options as one ``TraceOptions`` to ``route``, which applies one order:

1. ``tracer="export"``: torch.export on ``example_inputs`` (or the inputs the model's config
   implies, ``implied_inputs``), and nothing else.
2. Otherwise torch.fx, with the automatic leaf fallback (``auto_leaf``) and, when the stage asks
   for it (``check``), the eager mis-trace check on ``example_inputs``.
3. ``tracer="auto"``, torch.fx fails in the root forward itself (``is_root_failure``) and inputs
   are given or implied: torch.export on them.
4. Both fail in the root forward, ``auto_leaf`` is on and the stage can serve it: the capture
   path (the caller builds a ``CaptureExtractor``, its rows or its drawing from ``Route.error``).

Anything else raises torch.fx's ``TraceError``, with torch.export's failure attached as a note.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from fxtap.errors import FxtapError, InvalidArgumentError, TraceError, close_matches, format_choices
from fxtap.trace._example import implied_inputs
from fxtap.trace._export import export_trace
from fxtap.trace._export_modes import one_export
from fxtap.trace._fallback import (
    is_root_failure,
    names_with_fallback,
    trace_with_fallback,
    user_stacklevel,
)
from fxtap.trace._none_defaults import (
    NoneFixed,
    none_default_args,
    one_warning_each,
    trace_none_fixed,
)
from fxtap.trace._options import check_concrete_args, check_flags, check_model, tracer_options
from fxtap.trace._tracer import Traced, trace_graph, trace_with_options

__all__ = [
    "MODES",
    "TRACERS",
    "Route",
    "TraceOptions",
    "check_tracer",
    "export_notes",
    "first_line",
    "route",
    "warn_capture",
]

#: Values of the ``tracer`` option: torch.fx then torch.export, torch.fx, torch.export.
TRACERS = ("auto", "fx", "export")
MODES = ("train", "eval")


@dataclass(frozen=True)
class TraceOptions:
    """How to trace a model: what every entry point passes to ``route``.

    The first five fields are the entry points' own keyword arguments, in this order
    (``TraceOptions(tracer, tracer_kwargs, concrete_args, auto_leaf, example_inputs)``).

    Attributes:
        tracer: ``"auto"``, ``"fx"`` or ``"export"`` (the order in the module docstring).
        tracer_kwargs: ``NodePathTracer`` options; ``leaf_modules`` and ``autowrap_modules``
            are added to torchvision's defaults.
        concrete_args: torch.fx's ``concrete_args``.
        auto_leaf: keep untraceable submodules and functions opaque (with a warning), and take
            the capture path when the root forward cannot be traced.
        example_inputs: one forward's inputs (a tensor, a tuple, or a dict of keyword inputs).
            torch.export traces with them; torch.fx graphs are checked against eager on them
            when ``check`` is on; the stages that list or draw also show their shapes.
        check: run the model on ``example_inputs`` at build time: the eager mis-trace check of
            torch.fx graphs, and the probe run after which a capture extractor drops what no
            call reached (on for the stages that build a module from Python; off where the
            inputs only show shapes or are timed, and on the command line unless
            ``--check-trace``).
        dynamic_shapes: torch.export's ``dynamic_shapes``, keyed as ``example_inputs`` are.
    """

    tracer: str = "auto"
    tracer_kwargs: Mapping[str, Any] | None = None
    concrete_args: Mapping[str, Any] | None = None
    auto_leaf: bool = True
    example_inputs: Any = None
    check: bool = field(default=True, kw_only=True)
    dynamic_shapes: Any = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        check_tracer(self.tracer)
        check_flags(auto_leaf=self.auto_leaf)

    @property
    def checked_inputs(self) -> Any:
        """The inputs to run at build time: ``example_inputs`` when ``check`` is on."""
        return self.example_inputs if self.check else None

    def recording_source(self) -> TraceOptions:
        """These options with ``record_source`` on (the node table and the renderer show it)."""
        kwargs = dict(self.tracer_kwargs or {})
        kwargs.setdefault("record_source", True)
        tracer_options(kwargs)
        return dataclasses.replace(self, tracer_kwargs=kwargs)


@dataclass(frozen=True)
class Route:
    """What ``route`` chose, and what it traced.

    Attributes:
        path: ``"fx"``, ``"export"`` or ``"capture"``.
        traces: by mode, the traces (empty on the capture path, and when only names were
            asked for).
        names: by mode, node -> dotted name (empty on the capture path).
        error: on the capture path, why the root forward cannot be traced (torch.fx's
            ``TraceError``, torch.export's failure in its notes); else ``None``.
        none_fixed: on the torch.fx path, when asked for and a graph reads a root argument
            that defaults to ``None``: the traces with such arguments fixed to ``None``
            (``fxtap.trace._none_defaults``); else ``None``.
    """

    path: str
    traces: dict[str, Traced] = field(default_factory=dict)
    names: dict[str, dict[fx.Node, str]] = field(default_factory=dict)
    error: TraceError | None = None
    none_fixed: NoneFixed | None = None


def route(
    model: nn.Module,
    options: TraceOptions,
    *,
    modes: tuple[str, ...] = MODES,
    capture: bool = True,
    names_only: bool = False,
    none_fixed: bool = False,
) -> Route:
    """Trace ``model`` in each of ``modes`` the one way ``options`` and the model allow.

    Args:
        model: the model; left as it was.
        options: the tracer, its options and the example inputs.
        modes: the modes to trace, ``"train"`` and/or ``"eval"``.
        capture: the caller can serve the capture path (``trace`` cannot: it returns a graph).
        names_only: torch.fx traces build no graph module (``Route.names`` only): compiling
            its code costs a third of a trace.
        none_fixed: on the torch.fx path, also trace with the root arguments that default to
            ``None`` and that a graph reads fixed to ``None`` (``Route.none_fixed``).

    Returns:
        A ``Route``: the path taken, and the traces (or the root failure, for capture).

    Raises:
        TraceError: the model cannot be traced and the capture path is not taken.
        MistraceError: a graph differs from eager execution and no leaf fixes it.
        InvalidArgumentError: a bad model, ``tracer_kwargs`` or ``concrete_args``; the export
            path without inputs.
    """
    check_model(model)
    if options.tracer == "export":
        return _exported(model, options, modes, _or_implied(model, options.example_inputs))
    try:
        if names_only:
            names = {m: _fx_names(model, options, m == "train") for m in modes}
            return Route("fx", names=names)
        if none_fixed and none_default_args(
            model, check_concrete_args(model, options.concrete_args)
        ):
            return _with_none_fixed(model, options, modes)
        return _traced("fx", {m: _fx_trace(model, options, m == "train") for m in modes})
    except TraceError as exc:
        if not is_root_failure(exc):
            raise
        failure = exc
    inputs = _or_implied(model, options.example_inputs)
    if options.tracer == "auto" and inputs is not None:
        try:
            return _exported(model, options, modes, inputs)
        except FxtapError as second:
            failure.add_note(f"torch.export could not trace it either: {second}")
    if not (capture and options.auto_leaf):
        raise failure from None
    return Route("capture", error=failure)


def check_tracer(tracer: Any) -> None:
    """Raise ``InvalidArgumentError`` unless ``tracer`` is one of ``TRACERS``."""
    if tracer not in TRACERS:
        hint = close_matches(str(tracer), TRACERS)
        raise InvalidArgumentError(
            f"tracer {tracer!r} is not a tracer; expected one of {format_choices(TRACERS)}"
            + (f" (closest: {format_choices(hint)})" if hint else "")
            + "; pass tracer='auto' to let fxtap choose"
        )


def warn_capture(model_name: str, error: TraceError, detail: str) -> None:
    """The one warning that says the capture path was taken, and why (``route``'s choice);
    ``detail`` says what the capture extractor serves."""
    warnings.warn(
        f"torch.fx cannot trace the root {model_name}.forward ({first_line(error.reason)}); fxtap "
        f"serves the requested values by capturing them during a normal forward of the "
        f"model (CaptureExtractor: nothing is pruned, the model runs up to the last tap). "
        f"{detail}{export_notes(error)}Pass auto_leaf=False to get the TraceError.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def export_notes(error: TraceError) -> str:
    """What torch.export said when ``route`` tried it after torch.fx, if it did."""
    notes = [n for n in getattr(error, "__notes__", ()) if n.startswith("torch.export")]
    return "".join(f"{n.rstrip('.')}. " for n in notes)


def first_line(text: str) -> str:
    """``text`` on one line of at most 120 characters."""
    line = " ".join(text.split())
    return line if len(line) <= 120 else line[:117] + "..."


def _traced(path: str, traces: dict[str, Traced]) -> Route:
    return Route(path, traces, {m: t.names for m, t in traces.items()})


def _exported(
    model: nn.Module, options: TraceOptions, modes: tuple[str, ...], inputs: Any
) -> Route:
    # NOTE: inside one_export, a model whose two modes' programs cannot differ is exported
    # once (fxtap.trace._export_modes)
    with one_export():
        traces = {
            m: export_trace(
                model,
                training=m == "train",
                example_inputs=inputs,
                tracer_kwargs=options.tracer_kwargs,
                dynamic_shapes=options.dynamic_shapes,
            )
            for m in modes
        }
    return _traced("export", traces)


def _or_implied(model: nn.Module, example_inputs: Any) -> Any:
    """``example_inputs``, else the inputs the model's config implies (``implied_inputs``)."""
    return implied_inputs(model) if example_inputs is None else example_inputs


def _with_none_fixed(model: nn.Module, options: TraceOptions, modes: tuple[str, ...]) -> Route:
    """The torch.fx traces, and those with the ``None``-default arguments they read fixed to
    ``None``; the two traces' warnings (the same leaves, mostly) are shown once each."""

    def trace(training: bool, concrete: dict[str, Any] | None, checked: Any) -> Traced:
        return _fx_trace(model, options, training, concrete=concrete, checked=checked)

    with one_warning_each():
        traces = {m: _fx_trace(model, options, m == "train") for m in modes}
        concrete = check_concrete_args(model, options.concrete_args)
        fixed = trace_none_fixed(model, traces, concrete, options.checked_inputs, trace)
    return dataclasses.replace(_traced("fx", traces), none_fixed=fixed)


def _fx_trace(
    model: nn.Module,
    options: TraceOptions,
    training: bool,
    *,
    concrete: dict[str, Any] | None = None,
    checked: Any = None,
) -> Traced:
    """One torch.fx trace with ``options`` (``concrete`` and ``checked``, when given, in place
    of its ``concrete_args`` and the inputs of its mis-trace check)."""
    tracer_kwargs = tracer_options(options.tracer_kwargs)
    if concrete is None:
        concrete = check_concrete_args(model, options.concrete_args)
    if checked is None:
        checked = options.checked_inputs
    if options.auto_leaf or checked is not None:
        return trace_with_fallback(
            model,
            training=training,
            options=tracer_kwargs,
            concrete_args=concrete,
            auto_leaf=options.auto_leaf,
            example_inputs=checked,
        )
    return trace_with_options(
        model, training=training, options=tracer_kwargs, concrete_args=concrete
    )


def _fx_names(model: nn.Module, options: TraceOptions, training: bool) -> dict[fx.Node, str]:
    tracer_kwargs = tracer_options(options.tracer_kwargs)
    concrete = check_concrete_args(model, options.concrete_args)
    if options.auto_leaf:
        return names_with_fallback(
            model, training=training, options=tracer_kwargs, concrete_args=concrete
        )
    traced = trace_graph(model, training=training, options=tracer_kwargs, concrete_args=concrete)
    return traced.node_to_qualname
