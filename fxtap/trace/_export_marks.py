"""What each module call received and returned: marked while exporting, unmarked after.

An exported graph records ops and the module calls they ran in, not the arguments of those
calls. A module's ``:input`` tap is its first positional argument; guessing it as "the first
outside value the call reads" fails for a module that reads another argument first (Mistral
Large 4's ``softmax_scaling`` reads ``position_ids`` before the query it scales). While
``marked_inputs`` is active, a global forward pre-hook passes each module of the model its
first positional argument through ``fxtap::module_input``, an op that records the module's
path; ``take_marks`` then removes every mark from the copied graph and gives each module's
first argument by path. Nothing is registered on the model itself, and the hook marks only
the calls the exporting thread makes into that model's modules.

A leaf module's name is the last op of its call, which is its output when it returns one
tensor. ``nn.MultiheadAttention`` and ``nn.LSTM`` return tuples: a global forward hook passes
each tensor of a leaf's tuple through ``fxtap::module_output``, and ``take_marks`` puts one
``rebuild_output`` node after the first call, which holds the tuple as the module returned it
and which the naming rules then give the module's path (as the fx path's ``call_module`` node
holds it).

A leaf module that returns one of its arguments runs no op (``nn.Identity``), so nothing in the
program ran in its scope and no name would be its. The forward hook makes such a call return
``aten.alias`` of that tensor instead, an op recorded in the module's scope that the naming
rules give the module's path; every later op reads the alias, as every later op reads the
module's output. ``fxtap.trace._export_passthrough`` removes the aliases that name nothing.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx, nn

from fxtap._compat import pytree
from fxtap._fx import STACK_KEY

__all__ = ["Marks", "marked_calls", "take_marks"]

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


@functools.cache
def _output_op() -> Any:
    """``torch.ops.fxtap.module_output``: a copy of ``x`` that names ``path`` and the leaf
    index ``index`` of its module's output."""

    @torch.library.custom_op("fxtap::module_output", mutates_args=())
    def module_output(x: torch.Tensor, path: str, index: int) -> torch.Tensor:
        return x.clone()

    @module_output.register_fake
    def _(x: torch.Tensor, path: str, index: int) -> torch.Tensor:
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device)

    module_output.register_autograd(lambda ctx, grad: (grad, None, None))
    return torch.ops.fxtap.module_output.default


class Marks:
    """What the hooks saw while exporting: path -> output structure of a leaf's tuple, and
    the leaf modules (``id``) whose call returned one of its arguments (``passed``)."""

    def __init__(self, paths: dict[int, str], is_leaf: Callable[[nn.Module, str], bool]) -> None:
        self.paths = paths
        self.is_leaf = is_leaf
        self.specs: dict[str, str] = {}
        self.constants: dict[str, dict[int, Any]] = {}
        self.passed: set[int] = set()


def _pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    marks: Marks | None = getattr(_STATE, "marks", None)
    if marks is None or not args:
        return None
    path = marks.paths.get(id(module))
    first = args[0]
    if path is None or not isinstance(first, torch.Tensor) or isinstance(first, nn.Parameter):
        return None
    marked = _mark_op()(first, path)
    # NOTE: an argument passed twice stays one tensor (attention's ``query is key`` checks)
    return tuple(marked if a is first else a for a in args)


def _post_hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
    marks: Marks | None = getattr(_STATE, "marks", None)
    if marks is None or not isinstance(out, (tuple, list, torch.Tensor)):
        return None
    path = marks.paths.get(id(module))
    if not path or not marks.is_leaf(module, path):
        return None
    if isinstance(out, torch.Tensor):
        if not any(a is out for a in args):
            return None
        marks.passed.add(id(module))
        return torch.ops.aten.alias.default(out)
    leaves, spec = pytree.tree_flatten(out)
    if not any(isinstance(v, torch.Tensor) for v in leaves):
        return None
    if not all(isinstance(v, (torch.Tensor, int, float, bool, str, type(None))) for v in leaves):
        return None  # a number the graph computes (a SymInt): left unnamed
    try:
        text = pytree.treespec_dumps(spec)
    except Exception:  # a structure the spec text cannot hold: left unnamed
        return None
    marks.specs.setdefault(path, text)
    marks.constants.setdefault(
        path, {i: v for i, v in enumerate(leaves) if not isinstance(v, torch.Tensor)}
    )
    op = _output_op()
    marked = [op(v, path, i) if isinstance(v, torch.Tensor) else v for i, v in enumerate(leaves)]
    return pytree.tree_unflatten(marked, spec)


@contextlib.contextmanager
def marked_calls(model: nn.Module, is_leaf: Callable[[nn.Module, str], bool]) -> Iterator[Marks]:
    """Mark the first positional argument of every call into ``model``'s modules meanwhile,
    and each tensor of a tuple a leaf module (``is_leaf``) returns."""
    marks = Marks({id(m): p for p, m in model.named_modules(remove_duplicate=False)}, is_leaf)
    _mark_op()
    _output_op()
    saved = getattr(_STATE, "marks", None)
    _STATE.marks = marks
    # NOTE: torch types the global hooks as returning None; these return new values
    pre = torch.nn.modules.module.register_module_forward_pre_hook(_pre_hook)  # type: ignore[arg-type]
    post = torch.nn.modules.module.register_module_forward_hook(_post_hook)
    try:
        yield marks
    finally:
        pre.remove()
        post.remove()
        _STATE.marks = saved


def take_marks(
    graph: fx.Graph, marks: Marks, rebuild: Callable[[str, list[Any]], Any]
) -> dict[str, fx.Node]:
    """Remove the marks from ``graph``; module path -> the node its first call received.

    The tensors of a leaf's tuple become one node after its first call that calls
    ``rebuild(spec, leaves)`` (``fxtap.trace._export.rebuild_output``).
    """
    found: dict[str, fx.Node] = {}
    first_out: dict[str, dict[int, fx.Node]] = {}
    done: set[str] = set()
    last: dict[str, fx.Node] = {}
    taken: list[fx.Node] = []
    mark_op, output_op = _mark_op(), _output_op()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is mark_op:
            source, path = node.args[0], node.args[1]
            assert isinstance(source, fx.Node) and isinstance(path, str)
            found.setdefault(path, source)
        elif node.target is output_op:
            source, path, index = node.args
            assert isinstance(source, fx.Node) and isinstance(path, str)
            assert isinstance(index, int)
            seen = first_out.setdefault(path, {})
            if path not in done and index in seen:
                done.add(path)  # a second call of the module
            if path not in done:
                seen[index] = source
                last[path] = node
        else:
            continue
        node.replace_all_uses_with(source)
        taken.append(node)
    for path, seen in first_out.items():
        leaves = {**marks.constants[path], **seen}
        _pack(graph, last[path], marks.specs[path], leaves, rebuild)
    for node in taken:
        graph.erase_node(node)
    return found


def _pack(
    graph: fx.Graph,
    after: fx.Node,
    spec: str,
    seen: dict[int, Any],
    rebuild: Callable[[str, list[Any]], Any],
) -> None:
    """Insert ``rebuild(spec, leaves)`` after ``after``, in its module's scope."""
    tree = pytree.treespec_loads(spec)
    leaves: list[Any] = [seen.get(i) for i in range(tree.num_leaves)]
    with graph.inserting_after(after):
        node = graph.call_function(rebuild, (spec, leaves))
    node.meta[STACK_KEY] = after.meta.get(STACK_KEY)
    vals = [v.meta.get("val") if isinstance(v, fx.Node) else v for v in leaves]
    node.meta["val"] = pytree.tree_unflatten(vals, tree)
