"""Custom autograd Functions: a trace records their forward's ops and loses their backward.

``torch.export`` (non-strict) and torch.fx both run a ``torch.autograd.Function``'s
``forward`` and record its ops; the Function's own ``backward`` is lost. The graph's values
are the model's, but a gradient through it is autograd's of the recorded ops, not the
Function's (bloom's GeLU has a backward of its own; a straight-through estimator or a gradient
reversal layer would give other gradients altogether).

On the fx path, a module whose ``forward`` applies such a Function is a leaf
(``calls_custom_function``), so the graph calls the module and the Function runs. The export
path cannot keep a module whole: ``check_custom_functions`` finds the recorded ops of such a
Function by the source lines of its ``forward`` in each node's stack trace, and refuses the
program.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch
from torch import nn

from fxtap.errors import TraceError
from fxtap.trace._export_regions import region_graphs

__all__ = ["calls_custom_function", "check_custom_functions"]

#: One frame of a node's ``stack_trace``: file, line and function name.
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<name>\S+)')


def check_custom_functions(ep: Any, model: nn.Module, mode: str) -> None:
    """Raise ``TraceError`` when ``ep`` holds ops of an autograd Function with its own backward.

    Functions defined in torch itself are left out (their frames are not in stack traces).
    A program whose nodes carry no stack trace passes.

    Raises:
        TraceError: a root failure naming the module and the Function, so that
            ``create_feature_extractor`` falls back to the capture path, which runs the
            model's own code and its backward.
    """
    lines = _forward_lines()
    if not lines:
        return
    for node, _ in region_graphs(ep.graph_module):
        trace = node.meta.get("stack_trace") or ""
        for frame in _FRAME.finditer(trace):
            cls = lines.get((frame["file"], int(frame["line"]), frame["name"]))
            if cls is None:
                continue
            stack = node.meta.get("nn_module_stack") or {}
            path = next(reversed(stack.values()))[0] if stack else ""
            where = f"module {path!r}" if path else f"the root {type(model).__name__}"
            name = f"{cls.__module__}.{cls.__qualname__}"
            raise TraceError(
                f"{where} of {type(model).__name__} ({mode} mode) calls the autograd Function "
                f"{name}, whose own backward torch.export does not record: the graph would "
                "hold its forward's ops, and gradients through it would be autograd's of "
                "those ops, not the Function's. Fix: use tracer='fx' to take the capture path "
                "(create_feature_extractor does so by default)",
                module_path="",
                reason=f"custom autograd Function {cls.__qualname__}",
            )


def calls_custom_function(module: nn.Module) -> bool:
    """Whether ``type(module).forward`` applies an autograd Function with its own backward.

    Looks for ``SomeFunction.apply`` in the code of ``forward``, ``SomeFunction`` being a
    global of its module (bloom: ``return GeLUFunction.apply(x)``); a Function reached
    through a helper function or an attribute is not seen.

    >>> class Reverse(torch.autograd.Function):
    ...     forward = staticmethod(lambda ctx, x: x.clone())
    ...     backward = staticmethod(lambda ctx, g: -g)
    >>> class Flip(nn.Module):
    ...     def forward(self, x):
    ...         return Reverse.apply(x)
    >>> calls_custom_function(Flip())
    True
    """
    forward = getattr(type(module), "forward", None)
    if not callable(forward):
        return False
    forward = inspect.unwrap(forward)
    code = getattr(forward, "__code__", None)
    if code is None or "apply" not in code.co_names:
        return False
    scope = getattr(forward, "__globals__", {})
    return any(
        isinstance(value, type) and issubclass(value, torch.autograd.Function) and _own(value)
        for value in (scope.get(name) for name in code.co_names)
    )


def _own(cls: type) -> bool:
    """Whether a Function defines its own backward (``backward`` or ``vjp``)."""
    base = torch.autograd.Function
    return getattr(cls, "backward", None) is not base.backward or getattr(
        cls, "vjp", None
    ) is not getattr(base, "vjp", None)


def _forward_lines() -> dict[tuple[str, int, str], type]:
    """``(file, line, function name)`` of every line of the ``forward`` of each autograd
    Function outside torch that defines its own backward, mapped to the Function."""
    found: dict[tuple[str, int, str], type] = {}
    for cls in _subclasses(torch.autograd.Function):
        if cls.__module__.split(".")[0] == "torch" or not _own(cls):
            continue
        forward = getattr(cls, "forward", None)
        # NOTE: a decorated forward (torch.amp.custom_fwd) runs the Function's own code inside
        code = getattr(inspect.unwrap(forward), "__code__", None) if callable(forward) else None
        if code is None:
            continue
        for _, _, line in code.co_lines():
            if line is not None:
                found[(code.co_filename, line, code.co_name)] = cls
    return found


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    stack: list[type] = list(cls.__subclasses__())
    while stack:
        sub = stack.pop()
        found.append(sub)
        stack.extend(sub.__subclasses__())
    return found
