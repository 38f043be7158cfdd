"""Automatic leaf fallback: keep untraceable parts opaque and check graphs against eager runs."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from fxtap.errors import InputShapeError, MistraceError, TraceError
from fxtap.trace import (
    SCOPE_KEY,
    Traced,
    _failing_user_frame,
    restore_training,
    trace_with_options,
)

__all__ = [
    "Mismatch",
    "Opaque",
    "QualnameLeaves",
    "find_mistrace",
    "frozen_state",
    "is_root_failure",
    "trace_with_fallback",
    "warn_opaque",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Tolerances of the eager check: a faithful graph runs the very same ops, so any real
#: mis-trace shows up far above them.
RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Opaque:
    """One part of a model that the fallback kept opaque.

    Attributes:
        kind: ``"module"`` (kept as a leaf) or ``"function"`` (recorded as one node).
        name: module path, or ``module.function`` of the function.
        reason: why: torch.fx's message, or the mismatch found against eager execution.
        source: ``file:line`` of the code that failed, when known.
    """

    kind: str
    name: str
    reason: str
    source: str | None = None

    def describe(self) -> str:
        what = f"module {self.name!r}" if self.kind == "module" else f"function {self.name}"
        where = f" at {self.source}" if self.source else ""
        return f"{what} ({_short(self.reason)}{where})"


@dataclass(frozen=True)
class Mismatch:
    """The first module whose traced value differs from its eager value."""

    module_path: str
    reason: str


class QualnameLeaves:
    """``leaf_modules`` predicate matching exact qualified names (no glob characters apply)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def __call__(self, module: nn.Module, qualname: str) -> bool:
        return qualname in self.names

    def __repr__(self) -> str:
        return f"QualnameLeaves({sorted(self.names)!r})"


def trace_with_fallback(
    model: nn.Module,
    *,
    training: bool,
    options: Mapping[str, Any],
    concrete_args: dict[str, Any] | None,
    auto_leaf: bool = True,
    example_inputs: Any = None,
    warn: bool = True,
) -> Traced:
    """Trace ``model``; on failure keep the failing module or function opaque and retry.

    Each retry costs one trace: the failing module is the innermost one whose forward raised
    (``NodePathTracer.failed_module``), the failing function the plain function that touched
    the proxy. With ``example_inputs``, each successful trace is also run against the eager
    model (``find_mistrace``) and the first module whose value differs becomes a leaf.

    Returns:
        The ``Traced`` of the last attempt, with ``leaves`` and ``wrapped`` filled in. A
        ``UserWarning`` lists them when there are any.

    Raises:
        TraceError: the root forward itself cannot be traced (``is_root_failure``), or
            ``auto_leaf`` is off.
        MistraceError: the graph differs from eager execution and no leaf fixes it.
    """
    opaque: dict[str, Opaque] = {}
    leaves: set[str] = set()
    functions: dict[str, Callable[..., Any]] = {}
    attempts = sum(1 for _ in model.modules()) + 32
    for _ in range(attempts):
        opts = dict(options)
        opts["leaf_modules"] = (*options.get("leaf_modules", ()), QualnameLeaves(set(leaves)))
        opts["autowrap_functions"] = (
            *options.get("autowrap_functions", ()),
            *functions.values(),
        )
        try:
            traced = trace_with_options(
                model, training=training, options=opts, concrete_args=concrete_args
            )
        except TraceError as exc:
            if not auto_leaf:
                raise
            found = _next_opaque(exc, leaves, functions)
            if found is None:
                raise _final_error(model, exc, opaque) from exc
            opaque[found.name] = found
            if found.kind == "module":
                leaves.add(found.name)
            continue
        if example_inputs is not None:
            bad = find_mistrace(model, traced, example_inputs)
            if bad is not None:
                if not auto_leaf or bad.module_path == "" or bad.module_path in leaves:
                    raise _mistrace_error(model, traced, bad, auto_leaf)
                opaque[bad.module_path] = Opaque("module", bad.module_path, bad.reason)
                leaves.add(bad.module_path)
                continue
        traced = dataclasses.replace(
            traced,
            leaves=tuple(o.name for o in opaque.values() if o.kind == "module"),
            wrapped=tuple(o.name for o in opaque.values() if o.kind == "function"),
        )
        if opaque and warn:
            warn_opaque(type(model).__name__, traced.mode, list(opaque.values()))
        return traced
    raise TraceError(  # pragma: no cover - each attempt adds a module or function
        f"the automatic fallback gave up on {type(model).__name__} after {attempts} traces; "
        "pass leaf_modules= for the modules that fail, or auto_leaf=False to see the first error",
        reason="too many retries",
    )


def is_root_failure(exc: BaseException) -> bool:
    """True for a ``TraceError`` raised by the root forward itself, which no leaf can fix."""
    return (
        isinstance(exc, TraceError)
        and not isinstance(exc, MistraceError)
        and not bool(exc.module_path)
    )


def warn_opaque(model_name: str, mode: str, opaque: list[Opaque]) -> None:
    """Warn (``UserWarning``, at the user's call site) that parts of a model stayed opaque."""
    listed = "; ".join(o.describe() for o in opaque)
    warnings.warn(
        f"torch.fx could not trace all of {model_name} ({mode} mode); fxtap kept "
        f"{len(opaque)} part(s) opaque: {listed}. Their outputs can be requested, nodes inside "
        "them cannot. Pass auto_leaf=False to get the TraceError instead, or make them "
        "traceable (docs/tracing.md).",
        UserWarning,
        stacklevel=_user_stacklevel(),
    )


def find_mistrace(model: nn.Module, traced: Traced, example_inputs: Any) -> Mismatch | None:
    """Run ``model`` eagerly and ``traced`` on the same inputs; find the first module that differs.

    Modules are compared in the order their first call finishes (inner before outer). When a
    module's output differs but its input agrees, the module itself mis-traced; when the input
    differs too, the enclosing module's own code did, so the closest ancestor whose input still
    agrees is reported. Both runs start from the same RNG state and buffers, without gradients;
    buffers, RNG state and training flags are put back afterwards.

    Raises:
        InputShapeError: the eager model rejects ``example_inputs``.
    """
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    gm = traced.graph_module
    eager_in: dict[str, Any] = {}
    eager_out: dict[str, Any] = {}
    handles = []
    for path, module in model.named_modules():

        def hook(_m: nn.Module, args: Any, out: Any, path: str = path) -> None:
            if path not in eager_out:
                eager_in[path] = _detached(args[0]) if args else None
                eager_out[path] = _detached(out)

        handles.append(module.register_forward_hook(hook))
    with frozen_state(model), restore_training(model), torch.no_grad():
        model.train(traced.training)
        rng = torch.get_rng_state()
        try:
            final = _detached(model(*inputs))
        except Exception as exc:
            raise InputShapeError(
                f"example inputs do not fit {type(model).__name__}: {type(exc).__name__}: {exc}. "
                "Pass inputs the model accepts, e.g. (torch.randn(1, 3, 224, 224),)"
            ) from exc
        finally:
            for h in handles:
                h.remove()
    wanted = _nodes_in(traced)
    with frozen_state(model), restore_training(model), torch.no_grad():
        model.train(traced.training)
        torch.set_rng_state(rng)
        recorder = _Recorder(gm, wanted)
        try:
            recorder.run(*inputs)
        except Exception as exc:
            node = recorder.current
            scope = _scope_of(node) if node is not None else ""
            return Mismatch(scope, f"the graph raised {type(exc).__name__} where the model runs")
    values = recorder.values
    eager_out[""] = final
    outputs = dict(traced.module_outputs)
    outputs[""] = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0]
    for path, out in outputs.items():
        if path not in eager_out:
            continue
        diff = _difference(_fill(out, values), eager_out[path])
        if diff is None:
            continue
        if path and not _input_differs(path, traced, values, eager_in):
            return Mismatch(path, f"traced value differs from eager execution: {diff}")
        culprit = path.rpartition(".")[0] if path else ""
        while culprit and _input_differs(culprit, traced, values, eager_in):
            culprit = culprit.rpartition(".")[0]
        return Mismatch(
            culprit, f"traced value differs from eager execution in its own code: {diff}"
        )
    return None


class frozen_state:
    """Context manager putting buffers and the CPU RNG state back on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.rng = torch.get_rng_state()

    def __enter__(self) -> frozen_state:
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        torch.set_rng_state(self.rng)


def _next_opaque(
    exc: TraceError, leaves: set[str], functions: dict[str, Callable[..., Any]]
) -> Opaque | None:
    """What to keep opaque next: the failing plain function, else the failing module."""
    reason = exc.reason or str(exc)
    if exc.function and exc.function not in functions:
        fn = _function_object(exc)
        if fn is not None:
            functions[exc.function] = fn
            return Opaque("function", exc.function, reason, exc.source)
    if exc.module_path and exc.module_path not in leaves:
        return Opaque("module", exc.module_path, reason, exc.source)
    return None


def _function_object(exc: TraceError) -> Callable[..., Any] | None:
    cause = exc.__cause__
    frame = _failing_user_frame(cause.__traceback__) if cause is not None else None
    if frame is not None:
        fn = frame.f_globals.get(frame.f_code.co_name)
        if callable(fn) and getattr(fn, "__code__", None) is frame.f_code:
            return fn
    module_name, _, name = (exc.function or "").rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return fn if callable(fn) else None


def _final_error(model: nn.Module, exc: TraceError, opaque: Mapping[str, Opaque]) -> TraceError:
    kept = "; ".join(o.describe() for o in opaque.values()) or "nothing"
    message = (
        f"{exc} The automatic leaf fallback cannot help: the failure is in the root "
        f"{type(model).__name__}.forward itself (it had kept opaque: {kept}). "
        "create_feature_extractor still serves nodes inside traceable submodules and module "
        "outputs by capturing them during a normal forward (CaptureExtractor); otherwise fix the "
        "root with concrete_args= or move the failing code into a submodule or a plain function."
    )
    return TraceError(
        message,
        module_path=exc.module_path,
        source=exc.source,
        reason=exc.reason,
        function=exc.function,
    )


def _mistrace_error(
    model: nn.Module, traced: Traced, bad: Mismatch, auto_leaf: bool
) -> MistraceError:
    where = f"module {bad.module_path!r}" if bad.module_path else f"the root {type(model).__name__}"
    if bad.module_path and not auto_leaf:
        fix = f"keep it opaque with tracer_kwargs={{'leaf_modules': [{bad.module_path!r}]}} or "
        fix += "pass auto_leaf=True"
    elif bad.module_path:
        fix = "it is already a leaf, so the module itself does not repeat its result; "
        fix += "check it for randomness or state"
    else:
        fix = (
            "no leaf can fix the root; look in its forward for code that branches on "
            "torch.fx's is_fx_tracing(), creates random tensors, or reads tensor values"
        )
    return MistraceError(
        f"the {traced.mode} graph of {type(model).__name__} computes something other than the "
        f"model: {where}: {bad.reason}. Fix: {fix}.",
        module_path=bad.module_path,
        reason=bad.reason,
    )


class _Recorder(fx.Interpreter):
    """Run a graph, keeping a detached copy of each wanted node's value as it is produced."""

    def __init__(self, gm: fx.GraphModule, wanted: set[fx.Node]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.wanted = wanted
        self.values: dict[fx.Node, Any] = {}
        self.current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        out = super().run_node(n)
        if n in self.wanted:
            self.values[n] = _detached(out)
        return out


def _nodes_in(traced: Traced) -> set[fx.Node]:
    found: set[fx.Node] = set(traced.module_inputs.values())

    def visit(node: fx.Node) -> fx.Node:
        found.add(node)
        return node

    for out in traced.module_outputs.values():
        fx.node.map_arg(out, visit)
    # NOTE: the graph output's own nodes too: code of the root forward outside any submodule
    # (``self.lin(x) * random.random()``) has no module output to compare it by.
    output = next(n for n in reversed(traced.graph_module.graph.nodes) if n.op == "output")
    fx.node.map_arg(output.args[0], visit)
    return found


def _fill(structure: Any, values: Mapping[fx.Node, Any]) -> Any:
    return fx.node.map_aggregate(
        structure, lambda a: values.get(a, _MISSING) if isinstance(a, fx.Node) else a
    )


def _input_differs(
    path: str, traced: Traced, values: Mapping[fx.Node, Any], eager_in: Mapping[str, Any]
) -> bool:
    node = traced.module_inputs.get(path)
    if node is None or eager_in.get(path) is None or node not in values:
        return False
    return _difference(values[node], eager_in[path]) is not None


_MISSING = object()


def _difference(traced: Any, eager: Any) -> str | None:
    """A short description of how ``traced`` differs from ``eager``, or ``None`` when equal."""
    if traced is _MISSING or isinstance(traced, fx.Proxy):
        return None
    if isinstance(eager, torch.Tensor) or isinstance(traced, torch.Tensor):
        if not (isinstance(eager, torch.Tensor) and isinstance(traced, torch.Tensor)):
            return f"{type(traced).__name__} instead of {type(eager).__name__}"
        if traced.shape != eager.shape or traced.dtype != eager.dtype:
            return f"shape {tuple(traced.shape)} instead of {tuple(eager.shape)}"
        if traced.is_floating_point() or traced.is_complex():
            if torch.allclose(traced, eager, rtol=RTOL, atol=ATOL, equal_nan=True):
                return None
            gap = (traced - eager).abs().nan_to_num(0).max().item()
            return f"max abs diff {gap:.3g}"
        return None if torch.equal(traced, eager) else "integer values differ"
    if isinstance(eager, Mapping) and isinstance(traced, Mapping):
        if list(eager) != list(traced):
            return f"keys {list(traced)[:4]} instead of {list(eager)[:4]}"
        return next((d for k in eager if (d := _difference(traced[k], eager[k]))), None)
    if isinstance(eager, (list, tuple)) and isinstance(traced, (list, tuple)):
        if len(eager) != len(traced):
            return f"{len(traced)} items instead of {len(eager)}"
        return next((d for a, b in zip(traced, eager) if (d := _difference(a, b))), None)
    if isinstance(eager, (int, float, bool, str, type(None))):
        try:
            same = bool(traced == eager)
        except Exception:  # pragma: no cover - exotic comparisons
            return None
        return None if same else f"{traced!r:.40} instead of {eager!r:.40}"
    return None


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_detached(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _scope_of(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    return str(node.meta.get(SCOPE_KEY, ("", None))[0])


def _short(text: str, limit: int = 160) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _user_stacklevel() -> int:
    """``stacklevel`` of the first frame outside fxtap, counted from ``warn_opaque``'s caller."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
