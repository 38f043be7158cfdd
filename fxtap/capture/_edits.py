"""Edits on the capture path: forward hooks on the module outputs they change."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from fxtap._query import parse_query
from fxtap.errors import InvalidArgumentError, close_matches, format_choices

__all__ = ["EditHook", "hook_edits"]


class EditHook:
    """A forward hook that returns ``edit(output)``: the module's users get the edited value."""

    def __init__(self, edit: Callable[[Any], Any]) -> None:
        self.edit = edit

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        return self.edit(output)


def hook_edits(model: nn.Module, edits: Mapping[str, Any], *, model_name: str) -> tuple[str, ...]:
    """Register one ``EditHook`` per edit on ``model``'s modules (the capture path's own clone).

    Hooks reach module outputs only: a query must name a module, and ``Input`` edits, which
    need a graph to add an argument to, are refused.

    Returns:
        The module paths edited, in the order given.

    Raises:
        InvalidArgumentError: a query that names no module, or an ``Input`` edit.
    """
    from fxtap.edits import Input

    modules = dict(model.named_modules())
    paths = []
    for query, change in edits.items():
        parsed = parse_query(query)
        if isinstance(change, Input):
            raise InvalidArgumentError(
                f"edits[{query!r}] is an Input edit, which adds an argument to a graph; the root "
                f"forward of {model_name} cannot be traced, so its edits run as forward hooks. "
                "Patch with Replace(tensor) instead, or make the model traceable (docs/editing.md)"
            )
        if parsed.port != "node" or not parsed.path or parsed.path not in modules:
            hint = close_matches(parsed.path, [p for p in modules if p])
            raise InvalidArgumentError(
                f"edits[{query!r}] names no module of {model_name}; its root forward cannot be "
                "traced, so edits run as forward hooks, which reach module outputs only. "
                f"Closest modules: {format_choices(hint)}"
            )
        modules[parsed.path].register_forward_hook(EditHook(change))
        paths.append(parsed.path)
    return tuple(paths)
