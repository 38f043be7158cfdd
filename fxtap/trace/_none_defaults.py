"""Root forward arguments that default to ``None``: a second graph with them fixed to ``None``.

torch.fx makes every root argument a placeholder, so ``if state is None`` sees a proxy, takes
the not-``None`` branch and the graph indexes ``state[0]``: that graph serves calls that pass
``state`` (torchvision's extractor serves those alone), and a call that leaves it out fails
deep in the graph (torchaudio's RNN-T, ``predictor_state``). When a graph reads such an
argument, ``trace_none_fixed`` traces the model again with the arguments it reads fixed to
``None`` (torch.fx's ``concrete_args``, which checks the value at every call). The extractor
keeps both graphs and picks one per call (``fxtap.extractor``): the second when every one of
these arguments is left out or ``None``, the first otherwise.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from fxtap.errors import FxtapError
from fxtap.trace._tracer import Traced

__all__ = ["NoneFixed", "none_default_args", "one_warning_each", "trace_none_fixed"]

#: ``(training, concrete_args, example_inputs) -> Traced``: one torch.fx trace of the model.
TraceFn = Callable[[bool, "dict[str, Any] | None", Any], Traced]


@dataclass(frozen=True)
class NoneFixed:
    """The traces of a model with root arguments that default to ``None`` fixed to ``None``.

    Attributes:
        args: the arguments fixed to ``None``, in the order of ``forward``'s signature.
        traces: by mode, the traces for calls that leave every one of ``args`` out (or
            ``None``); the ``Route``'s own traces take them as inputs.
    """

    args: tuple[str, ...]
    traces: dict[str, Traced]


def none_default_args(model: nn.Module, concrete_args: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Arguments of ``model.forward`` that default to ``None`` and ``concrete_args`` leaves open."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtin forwards
        return ()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    given = set(concrete_args or ())
    return tuple(
        p.name for p in params if p.kind in named and p.default is None and p.name not in given
    )


def trace_none_fixed(
    model: nn.Module,
    traces: Mapping[str, Traced],
    concrete_args: dict[str, Any] | None,
    example_inputs: Any,
    trace: TraceFn,
) -> NoneFixed | None:
    """The traces of ``model`` with the ``None``-default arguments ``traces`` read fixed to
    ``None``, or ``None`` when no graph reads one or the model cannot be traced that way.

    ``example_inputs`` (the mis-trace check's inputs) are passed with those arguments set to
    ``None``.
    """
    candidates = none_default_args(model, concrete_args)
    read = {
        str(node.target)
        for t in traces.values()
        for node in t.graph_module.graph.find_nodes(op="placeholder")
        if node.target in candidates and node.users
    }
    if not read:
        return None
    args = tuple(name for name in candidates if name in read)
    fixed = {**(concrete_args or {}), **dict.fromkeys(args)}
    inputs = _with_none(model, example_inputs, args)
    try:
        second = {m: trace(t.training, fixed, inputs) for m, t in traces.items()}
    except FxtapError:
        # e.g. the model asserts that the argument is given (detection targets in train mode):
        # calls then go to the graph that takes it, as torchvision's extractor does
        return None
    for t in second.values():
        _keep_argument_names(t.graph_module, args)
    return NoneFixed(args, second)


@contextmanager
def one_warning_each() -> Iterator[None]:
    """Show each warning raised inside once, in order (both traces warn of the same leaves)."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        seen: set[tuple[type[Warning], str]] = set()
        for w in caught:
            if (w.category, str(w.message)) not in seen:
                seen.add((w.category, str(w.message)))
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _keep_argument_names(gm: fx.GraphModule, args: tuple[str, ...]) -> None:
    """Name the inputs fixed to ``None`` as the model does: torch.fx calls ``state``'s
    placeholder ``state_1``, so ``forward(..., state=None)`` would be an unknown keyword."""
    renamed = {f"{name}_1": name for name in args}
    for node in gm.graph.find_nodes(op="placeholder"):
        if node.target in renamed:
            node.target = renamed[node.target]
    gm.recompile()


def _with_none(model: nn.Module, example_inputs: Any, args: tuple[str, ...]) -> Any:
    """``example_inputs`` (a tensor, a tuple or a dict of keyword inputs) with ``args`` None."""
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Mapping):
        return {k: None if k in args else v for k, v in example_inputs.items()}
    names = list(inspect.signature(model.forward).parameters)
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(
            None if i < len(names) and names[i] in args else v for i, v in enumerate(example_inputs)
        )
    return None if names[:1] and names[0] in args else example_inputs
