"""torch.fx internals: a GraphModule's compiled code, node and graph details."""

from __future__ import annotations

import re
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from fxtap._compat._switch import use_private

__all__ = [
    "CallExplainer",
    "ModeCode",
    "copy_attr",
    "dropout_classes",
    "explain_calls",
    "format_import_block",
    "fx_reserved_globals",
    "graph_codegen",
    "is_assert",
    "is_assert_is_none",
    "is_erased",
    "is_vmap_nesting",
    "restore_mode_code",
    "save_mode_code",
    "target_to_str",
]

# --- GraphModule: the per-mode code of an extractor -------------------------------------------

#: What a ``GraphModule`` runs: its graph, and (private path) the code compiled from it.
ModeCode = tuple[Any, ...]


def save_mode_code(gm: fx.GraphModule) -> ModeCode:
    """The compiled state of ``gm`` after ``recompile()``, to select again without recompiling.

    NOTE: a mode switch swaps graphs many times a second (``model.eval()`` in a training loop);
    ``recompile()`` regenerates and compiles Python each time. GraphModule keeps its code in
    private fields. Fallback: keep the graph only; ``restore_mode_code`` then recompiles.
    """
    if use_private():
        return (gm._graph, gm._code, gm._lineno_map, gm._prologue_start, type(gm).forward)
    return (gm.graph,)


def restore_mode_code(gm: fx.GraphModule, saved: ModeCode) -> None:
    """Make ``gm`` run ``saved`` (from ``save_mode_code``); a no-op when it already does."""
    if gm.graph is saved[0]:
        return
    if len(saved) == 5:
        gm._graph, gm._code, gm._lineno_map, gm._prologue_start = saved[:4]
        type(gm).forward = saved[4]
    else:
        gm.graph = saved[0]  # the public setter recompiles, as torchvision switches graphs


def graph_codegen(graph: fx.Graph) -> Any:
    """The code generator of ``graph`` (how its forward takes and returns pytrees).

    ``fx.Graph.set_codegen`` is public, reading it back is not. Fallback: ``None``, torch.fx's
    default generator: a pickled extractor traced with pytree ``concrete_args`` then takes
    its inputs flat.
    """
    return graph._codegen if use_private() else None


def copy_attr(from_module: nn.Module, to_module: nn.Module, target: str) -> None:
    """Copy the submodule, parameter or buffer at dotted ``target``, creating empty parents.

    NOTE: ``GraphModule.__init__`` copies attributes this way; the private helper keeps fxtap
    in step with it. Fallback: the same steps through ``setattr`` and ``register_buffer``.
    """
    if use_private():
        fx.graph_module._copy_attr(from_module, to_module, target)
        return
    *prefix, field = target.split(".")
    for item in prefix:
        source, dest = getattr(from_module, item), getattr(to_module, item, None)
        if source is dest:
            return  # a parent is already installed, children included
        if dest is None:
            dest = nn.Module()
            setattr(to_module, item, dest)
        from_module, to_module = source, dest
    orig = getattr(from_module, field)
    if isinstance(orig, torch.Tensor) and not isinstance(orig, nn.Parameter):
        persistent = field in dict(from_module.state_dict(keep_vars=True)) or field not in dict(
            from_module.named_buffers(recurse=False)
        )
        to_module.register_buffer(field, orig, persistent=persistent)
    else:
        setattr(to_module, field, orig)


def format_import_block(globals_: dict[str, Any]) -> str:
    """The import lines that give generated fx code its globals (as ``GraphModule`` pickles).

    Fallback: the same lines written here, naming objects with ``torch.package``'s importer.
    """
    from torch.package import sys_importer

    if use_private():
        return fx.graph_module._format_import_block(globals_, sys_importer)
    lines = set()
    for name, obj in globals_.items():
        if isinstance(obj, str):
            lines.add(f"{name} = {obj!r}")
        elif isinstance(obj, types.ModuleType):
            lines.add(f"import {obj.__name__} as {name}")
        elif obj is type(None):
            lines.add(f"{name} = type(None)")
        elif isinstance(obj, float):
            lines.add(f"{name} = float({str(obj)!r})")
        else:
            module_name, attr = sys_importer.get_name(obj)
            lines.add(f"from {module_name} import {attr} as {name}")
    return "\n".join(sorted(lines))


#: ``(module, args, kwargs, error) -> clearer error or None``, for ``explain_calls``.
CallExplainer = Callable[
    [fx.GraphModule, tuple[Any, ...], dict[str, Any], Exception], Exception | None
]


def explain_calls(gm: fx.GraphModule, explain: CallExplainer) -> None:
    """Pass every failing call of ``gm`` to ``explain``; raise the error it gives, if any.

    NOTE: GraphModule routes ``__call__`` through a private per-class ``_wrapped_call`` (which
    prints the generated code around a failing line); it is replaced with one that asks
    ``explain`` first and keeps torch.fx's printout for the failures it leaves alone. It
    survives ``recompile()``, which keeps a wrapper already there. Fallback: calls stay as
    torch.fx makes them, so such failures raise torch's own errors, unexplained.
    """
    if not use_private():
        return
    from torch.fx.graph_module import _WrappedCall

    class _ExplainedCall(_WrappedCall):
        def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                if self.cls_call is not None:
                    return self.cls_call(obj, *args, **kwargs)
                return super(self.cls, obj).__call__(*args, **kwargs)  # type: ignore[arg-type,misc]
            except Exception as exc:
                error = explain(obj, args, kwargs, exc)
                if error is not None:
                    raise error from exc
                frame = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__))[-1]
                if "eval_with_key" not in frame.filename:
                    raise
                print(_WrappedCall._generate_error_message(frame), file=sys.stderr)
                raise exc.with_traceback(None) from None

    cls = type(gm)
    cls._wrapped_call = _ExplainedCall(cls, cls._wrapped_call.cls_call)  # type: ignore[attr-defined]


# --- fx graphs and nodes ----------------------------------------------------------------------


def is_erased(node: fx.Node) -> bool:
    """Whether ``node`` was erased from its graph (read while dead code is eliminated).

    Fallback: look for it in the graph, O(nodes) instead of O(1).
    """
    if use_private():
        return bool(getattr(node, "_erased", False))
    return all(n is not node for n in node.graph.nodes)


def target_to_str(graph: fx.Graph, target: Any) -> str:
    """torch.fx's base name for a node calling ``target`` (``add``, ``relu``, ``pascal_case``).

    Fallback: the same rule written here (magic-method dunders stripped, snake case).
    """
    if use_private():
        return graph._target_to_str(target)
    op = target.__name__ if callable(target) else str(target)
    if not callable(target) and op.startswith("__") and op.endswith("__"):
        op = op[2:-2]
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", op).lower()


_ASSERT_NAMES = ("_assert", "_assert_async", "_assert_scalar")


def _asserts() -> frozenset[Any]:
    found = {getattr(torch, n) for n in _ASSERT_NAMES if hasattr(torch, n)}
    return frozenset(found | {fx._symbolic_trace._assert_is_none})


_ASSERTS = _asserts()


def is_assert(target: Any) -> bool:
    """Whether a ``call_function`` target is one of torch's input checks (``torch._assert``).

    NOTE: torch.fx records these checks (ViT's input size) as calls to private functions.
    Fallback: match the function's name and its torch module.
    """
    if use_private():
        return target in _ASSERTS
    name = getattr(target, "__name__", "")
    module = str(getattr(target, "__module__", ""))
    return module.startswith("torch") and name in (*_ASSERT_NAMES, "_assert_is_none")


_NESTING_NAMES = ("_vmap_increment_nesting", "_vmap_decrement_nesting")


def is_vmap_nesting(target: Any) -> bool:
    """Whether ``target`` enters or leaves a ``torch.vmap`` level (a call nothing reads).

    NOTE: torch.export records ``torch.vmap`` (transformers' mask functions) inline, as these
    calls around ``_add_batch_dim``/``_remove_batch_dim``; dropping one breaks the others.
    Fallback: match the function's name and its torch module.
    """
    name = getattr(target, "__name__", "")
    if name not in _NESTING_NAMES:
        return False
    if use_private():
        import torch._functorch.predispatch as predispatch

        return target is getattr(predispatch, name, None) or target is getattr(
            torch._C._functorch, name, None
        )
    return str(getattr(target, "__module__", "")).startswith("torch")


def is_assert_is_none(target: Any) -> bool:
    """Whether ``target`` is torch.fx's check that a ``concrete_args`` input is ``None``."""
    if use_private():
        return target is fx._symbolic_trace._assert_is_none
    return getattr(target, "__name__", "") == "_assert_is_none" and str(
        getattr(target, "__module__", "")
    ).startswith("torch.fx")


def dropout_classes() -> tuple[type[nn.Module], ...]:
    """The base of torch's dropout modules, whose output is their input in eval mode.

    Fallback: the public dropout classes themselves (a user subclass of the private base that
    is not a subclass of one of them is then not seen as dropout).
    """
    if use_private():
        return (nn.modules.dropout._DropoutNd,)
    return (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
            nn.FeatureAlphaDropout)  # fmt: skip


_FX_GLOBALS = ("inf", "nan", "NoneType", "torch", "device", "fx_pytree", "pytree")


def fx_reserved_globals() -> frozenset[str]:
    """Names torch.fx's generated code takes for its own globals (``torch``, ``inf`` ...).

    Fallback: the names torch.fx reserves today, written here.
    """
    if use_private():
        from torch.fx import graph as fx_graph

        return frozenset(fx_graph._custom_builtins)
    return frozenset(_FX_GLOBALS)
