"""torch internals outside torch.fx: operators, dispatch, fake tensors, pytrees, hooks."""

from __future__ import annotations

import collections
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import nn

from fxtap._compat._switch import _no_public, use_private

__all__ = [
    "OpOverload",
    "fake_inputs",
    "fake_tensor_mode",
    "guard_limit",
    "is_op_overload",
    "is_op_packet",
    "load_pre_hooks",
    "op_parts",
    "op_recorder",
    "op_schema",
    "pytree",
    "register_load_pre_hook",
    "reparametrize",
    "tree_leaves",
    "tree_map",
    "version_mark",
    "weight_norm_class",
    "wrap_load_pre_hook",
]

# --- aten operators ---------------------------------------------------------------------------


def _op_types() -> tuple[type, type]:
    if use_private():
        return torch._ops.OpOverload, torch._ops.OpOverloadPacket
    # NOTE: the classes are public only through their instances
    return type(torch.ops.aten.add.Tensor), type(torch.ops.aten.add)


def is_op_overload(target: Any) -> TypeGuard[OpOverload]:
    """Whether ``target`` is an operator overload (``torch.ops.aten.add.Tensor``)."""
    return isinstance(target, _op_types()[0])


def is_op_packet(target: Any) -> bool:
    """Whether ``target`` is an operator packet (``torch.ops.aten.add``)."""
    return isinstance(target, _op_types()[1])


def op_schema(op: OpOverload) -> Any:
    """The schema of an overload: which arguments it writes, which results alias an input.

    Raises:
        CompatError: fallbacks forced; only graphs of ATen ops (the torch.export path) ask.
    """
    if not use_private():
        raise _no_public("reading an ATen op's schema (the torch.export path)")
    return op._schema


def op_parts(op: Any) -> tuple[str, str, str]:
    """``(namespace, name, overload)`` of an overload: ``('aten', 'add', 'Tensor')``.

    Fallback: parsed from the public ``name()`` (``aten::add.Tensor``; ``aten::abs`` for
    ``default``).
    """
    if use_private():
        return op.namespace, op._opname, op._overloadname
    name, _, overload = op.name().partition("::")[2].partition(".")
    return op.namespace, name, overload or "default"


class _Recorder(contextlib.AbstractContextManager["_Recorder"]):
    calls: Counter[Any]

    def __exit__(self, *exc: object) -> None:
        return None


def op_recorder() -> Any:
    """A context manager whose ``calls`` counts each aten op run inside it, by packet.

    Fallback (no public dispatch mode): counts nothing, so a cost report lists no uncounted
    ops; the FLOP counts themselves come from the public ``FlopCounterMode`` either way.
    """
    if not use_private():
        recorder = _Recorder()
        recorder.calls = Counter()
        return recorder
    from torch.utils._python_dispatch import TorchDispatchMode

    class _OpRecorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: Counter[Any] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.calls[func.overloadpacket] += 1
            return func(*args, **(kwargs or {}))

    return _OpRecorder()


# --- fake tensors -----------------------------------------------------------------------------


def fake_tensor_mode() -> Any:
    """A ``FakeTensorMode`` accepting real inputs, to run a model on shapes alone.

    Raises:
        CompatError: fallbacks forced (no public fake tensors); callers run real tensors then.
    """
    if not use_private():
        raise _no_public("running on fake tensors")
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


@contextlib.contextmanager
def fake_inputs() -> Iterator[Callable[[tuple[int, ...]], torch.Tensor]]:
    """Inside the block, ``make(shape)`` gives an input a model runs on without computing.

    Fallback: real zeros, run for real (slower; the same answer to "does it run").
    """
    if not use_private():
        yield torch.zeros
        return
    with fake_tensor_mode() as mode:
        yield lambda shape: mode.from_tensor(torch.empty(shape))


def version_mark(tensor: torch.Tensor) -> Any:
    """A value that changes when ``tensor`` is written in place (compare with ``!=``).

    Fallback: the bytes of its contents, so a write of the very same values goes unseen.
    """
    if use_private():
        return tensor._version
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


# --- pytrees ----------------------------------------------------------------------------------


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """``tree`` with ``fn`` applied to every leaf (lists, tuples, dicts rebuilt).

    Fallback: containers are lists, tuples, named tuples and dicts; a type registered with
    torch's pytree (``ModelOutput``) is then one leaf.
    """
    if use_private():
        return torch.utils._pytree.tree_map(fn, tree)
    return _rebuild(tree, fn)


def tree_leaves(tree: Any) -> list[Any]:
    """The leaves of ``tree``, in order (``None`` is a leaf, as in torch's pytree)."""
    if use_private():
        return torch.utils._pytree.tree_leaves(tree)
    leaves: list[Any] = []
    _rebuild(tree, lambda leaf: leaves.append(leaf))
    return leaves


def _rebuild(tree: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(tree, dict):
        items = [(k, _rebuild(v, fn)) for k, v in tree.items()]
        if isinstance(tree, collections.defaultdict):
            return type(tree)(tree.default_factory, items)
        return type(tree)(items)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_rebuild(v, fn) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_rebuild(v, fn) for v in tree)
    return fn(tree)


class _Guarded:
    """A private torch module, imported on first use and refused when fallbacks are forced."""

    def __init__(self, name: str, what: str) -> None:
        self._name, self._what = name, what

    def __getattr__(self, attr: str) -> Any:
        if not use_private():
            raise _no_public(self._what)
        import importlib

        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    from torch._ops import OpOverload
    from torch.utils import _pytree as pytree
else:
    #: The class of operator overloads, for annotations and ``isinstance`` (public through an
    #: instance).
    OpOverload = type(torch.ops.aten.add.Tensor)
    #: torch's pytree module, for the torch.export path and the safe format's output specs.
    #: NOTE: torch.export hands back its input and output structure as pytree specs; reading
    #: and rebuilding them has no public API, so with fallbacks forced those paths raise
    #: ``CompatError`` (torch.fx tracing and the other stages keep working).
    pytree = _Guarded("torch.utils._pytree", "the torch.export path (pytree specs)")


# --- weight norm in a pickled extractor -------------------------------------------------------


def weight_norm_class() -> type:
    """The parametrization class ``torch.nn.utils.parametrizations.weight_norm`` installs.

    Fallback: the class of the one it installs on a throwaway layer.
    """
    from torch.nn.utils import parametrizations

    if use_private():
        return parametrizations._WeightNorm
    probe = parametrizations.weight_norm(nn.Linear(1, 1))
    return type(probe.parametrizations.weight[0])


class _ModuleFirst:
    """A ``(state_dict, prefix, ...)`` hook in the public ``(module, state_dict, ...)`` form."""

    def __init__(self, hook: Callable[..., None]) -> None:
        # NOTE: not named ``hook``: torch's wrapper copies this __dict__ onto itself
        # (functools.update_wrapper), which would put the unwrapped hook back in its place
        self.inner = hook

    def __call__(self, _module: nn.Module, *args: Any) -> None:
        self.inner(*args)


def reparametrize(module: nn.Module, names: Iterable[str]) -> None:
    """torch's two steps of ``register_parametrization`` after its first: a parametrized class
    for ``module`` and one property per name, computed from the existing ``parametrizations``.

    Raises:
        CompatError: fallbacks forced: the public ``register_parametrization`` would recompute
            the originals from the current tensor, so a loaded model could differ.
    """
    if not use_private():
        raise _no_public("rebuilding a parametrized (weight-normed) module")
    from torch.nn.utils import parametrize

    parametrize._inject_new_class(module)
    for name in names:
        parametrize._inject_property(module, name)


def register_load_pre_hook(module: nn.Module, hook: Callable[..., None]) -> None:
    """Register a ``(state_dict, prefix, ...)`` hook run before ``load_state_dict``.

    Fallback: the public registration, which also passes the module (dropped for ``hook``).
    """
    if use_private():
        module._register_load_state_dict_pre_hook(hook)
    else:
        module.register_load_state_dict_pre_hook(_ModuleFirst(hook))


def load_pre_hooks(module: nn.Module) -> dict[int, Any]:
    """The ``load_state_dict`` pre-hooks of ``module``, by handle id.

    Raises:
        CompatError: fallbacks forced (no public way to read hooks); pickling a weight-normed
            model then fails with it, while the safe format works.
    """
    if not use_private():
        raise _no_public("pickling a module with weight norm")
    return module._load_state_dict_pre_hooks


def wrap_load_pre_hook(hook: Callable[..., None]) -> Any:
    """``hook`` in the wrapper ``load_pre_hooks`` holds (no module passed)."""
    if not use_private():
        raise _no_public("pickling a module with weight norm")
    from torch.nn.modules.module import _WrappedHook

    return _WrappedHook(hook)


# --- private attributes torch's own constructors derive ------------------------------------


def restore_derived_state(module: nn.Module) -> None:
    """Set what a torch module's constructor derives into private attributes and ``forward``
    reads, from its public state: a loaded module is built with ``cls.__new__`` (its constructor
    never runs), and the safe format never stores a private attribute.

    Convolutions read ``_reversed_padding_repeated_twice`` (from ``padding``, ``kernel_size`` and
    ``dilation``); ``nn.MultiheadAttention`` reads ``_qkv_same_embed_dim``. Fallback: none, torch
    has no public setter for either (``CompatError``).
    """
    convolutions: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    convolutions += (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    is_conv = isinstance(module, convolutions)
    if not (is_conv or isinstance(module, nn.MultiheadAttention)):
        return
    if not use_private():
        raise _no_public(f"rebuilding a loaded {type(module).__name__}'s derived state")
    if is_conv:
        object.__setattr__(module, "_reversed_padding_repeated_twice", _reversed_padding(module))
    else:
        mha: Any = module
        same = mha.kdim == mha.embed_dim and mha.vdim == mha.embed_dim
        object.__setattr__(module, "_qkv_same_embed_dim", same)


def _reversed_padding(conv: Any) -> Any:
    kernel, dilation = conv.kernel_size, conv.dilation
    if isinstance(conv.padding, str):
        padding = [0, 0] * len(kernel)
        if conv.padding == "same":
            for d, k, i in zip(dilation, kernel, range(len(kernel) - 1, -1, -1), strict=True):
                total = d * (k - 1)
                padding[2 * i] = total // 2
                padding[2 * i + 1] = total - total // 2
        return padding
    return tuple(x for x in reversed(conv.padding) for _ in range(2))


def symbolic_check(condition: Any) -> None:
    """Record ``condition`` on symbolic sizes as a torch.export constraint (``torch._check``).

    Fallback: the condition is tested in Python, which is exact for concrete sizes; under
    torch.export it guards on the example's value, so a dynamic dimension checked this way is
    exported static (documented degradation: re-exporting with dynamic shapes then refuses).
    """
    if use_private():
        torch._check(condition)
    elif not bool(condition):
        raise RuntimeError(f"shape check failed: {condition}")


def distribution_checks() -> bool:
    """Whether ``torch.distributions`` validates arguments by default (its class default).

    Fallback: Python's ``__debug__``, which is how torch sets that default.
    """
    if use_private():
        return bool(torch.distributions.Distribution._validate_args)
    return __debug__


def guard_limit(limit: Any) -> contextlib.AbstractContextManager[Any]:
    """Within the block, torch.export compares each symbol's guard count with ``limit``
    (``count > limit``) as it adds a guard, and specializes the symbol when that is true
    (``symbol_guard_limit_before_specialize``).

    Fallback: no limit; the comparison never happens, so an export that reasons for minutes
    on a dimension runs to its end (documented degradation: fxtap.trace._export_budget).
    """
    if use_private():
        from torch.fx.experimental import _config

        # NOTE: patch() is added to the config module when it is installed: mypy sees no
        # attribute
        return _config.patch(symbol_guard_limit_before_specialize=limit)  # type: ignore[attr-defined]
    return contextlib.nullcontext()
