"""Which value each module call received first: marked while exporting, unmarked after.

An exported graph records ops and the module calls they ran in, not the arguments of those
calls. A module's ``:input`` tap is its first positional argument; guessing it as "the first
outside value the call reads" fails for a module that reads another argument first (Mistral
Large 4's ``softmax_scaling`` reads ``position_ids`` before the query it scales). While
``marked_inputs`` is active, a global forward pre-hook passes each module of the model its
first positional argument through ``fxtap::module_input``, an op that records the module's
path; ``take_marks`` then removes every mark from the copied graph and gives each module's
first argument by path. Nothing is registered on the model itself, and the hook marks only
the calls the exporting thread makes into that model's modules.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

__all__ = ["marked_inputs", "take_marks"]

_STATE = threading.local()


@functools.cache
def _mark_op() -> Any:
    """``torch.ops.fxtap.module_input``: a copy of ``x`` (same strides) that names ``path``."""

    @torch.library.custom_op("fxtap::module_input", mutates_args=())
    def module_input(x: torch.Tensor, path: str) -> torch.Tensor:
        return x.clone()

    @module_input.register_fake
    def _(x: torch.Tensor, path: str) -> torch.Tensor:
        # NOTE: the same strides as ``x``, so views and reshapes trace as they do on ``x``
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device)

    module_input.register_autograd(lambda ctx, grad: (grad, None))
    return torch.ops.fxtap.module_input.default


def _pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    paths = getattr(_STATE, "paths", None)
    if not paths or not args:
        return None
    path = paths.get(id(module))
    first = args[0]
    if path is None or not isinstance(first, torch.Tensor) or isinstance(first, nn.Parameter):
        return None
    marked = _mark_op()(first, path)
    # NOTE: an argument passed twice stays one tensor (attention's ``query is key`` checks)
    return tuple(marked if a is first else a for a in args)


@contextlib.contextmanager
def marked_inputs(model: nn.Module) -> Iterator[None]:
    """Mark the first positional argument of every call into ``model``'s modules meanwhile."""
    paths = {id(m): p for p, m in model.named_modules(remove_duplicate=False)}
    _mark_op()
    saved = getattr(_STATE, "paths", None)
    _STATE.paths = paths
    # NOTE: torch types the global hook as returning None; one may return new arguments
    handle = torch.nn.modules.module.register_module_forward_pre_hook(_pre_hook)  # type: ignore[arg-type]
    try:
        yield
    finally:
        handle.remove()
        _STATE.paths = saved


def take_marks(graph: fx.Graph) -> dict[str, fx.Node]:
    """Remove the marks from ``graph``; module path -> the node its first call received."""
    found: dict[str, fx.Node] = {}
    op = _mark_op()
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not op:
            continue
        source, path = node.args[0], node.args[1]
        assert isinstance(source, fx.Node) and isinstance(path, str)
        found.setdefault(path, source)
        node.replace_all_uses_with(source)
        graph.erase_node(node)
    return found
