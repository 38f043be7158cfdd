"""Automatic leaf fallback: keep the untraceable parts of a model opaque and trace the rest."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import fx, nn

from fxtap.errors import MistraceError, TraceError
from fxtap.trace._mistrace import Mismatch, find_mistrace, shorten
from fxtap.trace._tracer import (
    PACKAGE_DIR,
    Traced,
    failing_user_frame,
    trace_graph,
    trace_with_options,
)

__all__ = [
    "Opaque",
    "QualnameLeaves",
    "is_root_failure",
    "names_with_fallback",
    "trace_with_fallback",
    "user_stacklevel",
    "warn_opaque",
]

_T = TypeVar("_T")


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
        return f"{what} ({shorten(self.reason)}{where})"


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

    def check(traced: Traced, leaves: set[str]) -> Opaque | None:
        bad = find_mistrace(model, traced, example_inputs)
        if bad is None:
            return None
        if not auto_leaf or bad.module_path == "" or bad.module_path in leaves:
            raise _mistrace_error(model, traced, bad, auto_leaf)
        return Opaque("module", bad.module_path, bad.reason)

    def once(opts: dict[str, Any]) -> Traced:
        return trace_with_options(
            model, training=training, options=opts, concrete_args=concrete_args
        )

    traced, opaque = _retry(
        model, options, once, auto_leaf=auto_leaf, check=None if example_inputs is None else check
    )
    traced = dataclasses.replace(
        traced,
        leaves=tuple(o.name for o in opaque.values() if o.kind == "module"),
        wrapped=tuple(o.name for o in opaque.values() if o.kind == "function"),
    )
    if opaque and warn:
        warn_opaque(type(model).__name__, traced.mode, list(opaque.values()))
    return traced


def names_with_fallback(
    model: nn.Module,
    *,
    training: bool,
    options: Mapping[str, Any],
    concrete_args: dict[str, Any] | None,
    auto_leaf: bool = True,
) -> dict[fx.Node, str]:
    """The names ``trace_with_fallback`` gives, with its retries and warning, and no graph module.

    Raises:
        TraceError: as ``trace_with_fallback``.
    """

    def once(opts: dict[str, Any]) -> dict[fx.Node, str]:
        tracer = trace_graph(model, training=training, options=opts, concrete_args=concrete_args)
        return tracer.node_to_qualname

    names, opaque = _retry(model, options, once, auto_leaf=auto_leaf)
    if opaque:
        warn_opaque(type(model).__name__, "train" if training else "eval", list(opaque.values()))
    return names


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
        stacklevel=user_stacklevel(),
    )


def _retry(
    model: nn.Module,
    options: Mapping[str, Any],
    once: Callable[[dict[str, Any]], _T],
    *,
    auto_leaf: bool,
    check: Callable[[_T, set[str]], Opaque | None] | None = None,
) -> tuple[_T, dict[str, Opaque]]:
    """Call ``once`` with growing leaves and autowrapped functions until it traces.

    ``check`` looks at a successful result and returns a module to keep opaque next (or raises);
    returns the last result and what was kept opaque, in order.
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
            result = once(opts)
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
        if check is not None:
            found = check(result, leaves)
            if found is not None:
                opaque[found.name] = found
                leaves.add(found.name)
                continue
        return result, opaque
    raise TraceError(  # pragma: no cover - each attempt adds a module or function
        f"the automatic fallback gave up on {type(model).__name__} after {attempts} traces; "
        "pass leaf_modules= for the modules that fail, or auto_leaf=False to see the first error",
        reason="too many retries",
    )


def _next_opaque(
    exc: TraceError, leaves: set[str], functions: dict[str, Callable[..., Any]]
) -> Opaque | None:
    """What to keep opaque next: the failing plain function, else the failing module."""
    reason = exc.reason or str(exc)
    private = (exc.function or "").rpartition(".")[2].startswith("_")
    # NOTE: a private function is recorded as one node only where no module can take it in
    # (the root): torch.fx never autowraps it, NodePathTracer patches it itself (_private)
    if exc.function and exc.function not in functions and (not private or not exc.module_path):
        fn = _function_object(exc)
        if fn is not None:
            functions[exc.function] = fn
            return Opaque("function", exc.function, reason, exc.source)
    if exc.module_path and exc.module_path not in leaves:
        if private:
            # NOTE: torch.fx's autowrap skips globals whose name starts with '_', so the
            # function cannot be one node: the module calling it is kept opaque instead
            reason = (
                f"{reason}; torch.fx never autowraps {exc.function} (its name starts with "
                "'_'), so the module calling it is kept opaque; pass tracer_kwargs="
                f"{{'autowrap_functions': [{exc.function}]}} to record it as one node instead"
            )
        return Opaque("module", exc.module_path, reason, exc.source)
    return None


def _function_object(exc: TraceError) -> Callable[..., Any] | None:
    cause = exc.__cause__
    frame = failing_user_frame(cause.__traceback__) if cause is not None else None
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


def user_stacklevel() -> int:
    """``stacklevel`` of the first frame outside fxtap, counted from ``warn_opaque``'s caller."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
