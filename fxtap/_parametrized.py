"""Parametrized modules (``weight_norm``, ``spectral_norm``, ``orthogonal``): describe, rebuild.

torch gives each parametrized module a class of its own, made at run time
(``ParametrizedConv1d``), which cannot be imported and refuses to be pickled. Its state is
plain: the base class's attributes plus a ``parametrizations`` ``ModuleDict`` of
``ParametrizationList`` (the original tensors and the parametrization modules). fxtap stores
the base class and that state, and rebuilds the module by giving it a fresh parametrized
class and one property per parametrized tensor, as ``register_parametrization`` does, without
recomputing the originals.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable, Mapping
from typing import IO, Any

from torch import nn
from torch.nn.utils import parametrize

from fxtap import _compat

__all__ = [
    "WeightNormCompat",
    "add_weight_norm_hooks",
    "base_class",
    "is_parametrized",
    "picklable",
    "restore",
]

# NOTE: weight_norm registers a local function (not picklable) that renames the keys of old
# checkpoints (``weight_g``, ``weight_v``) on load_state_dict; WeightNormCompat does the same.
_TORCH_COMPAT_HOOK = "weight_norm.<locals>._weight_norm_compat_hook"


class WeightNormCompat:
    """A ``load_state_dict`` pre-hook: checkpoint keys ``NAME_g``/``NAME_v`` of the old
    ``torch.nn.utils.weight_norm`` go to the originals of the parametrized ``NAME``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        g_key, v_key = f"{prefix}{self.name}_g", f"{prefix}{self.name}_v"
        if g_key in state_dict and v_key in state_dict:
            target = f"{prefix}parametrizations.{self.name}"
            state_dict[f"{target}.original0"] = state_dict.pop(g_key)
            state_dict[f"{target}.original1"] = state_dict.pop(v_key)


def add_weight_norm_hooks(module: nn.Module) -> None:
    """Register ``WeightNormCompat`` for each weight-normed tensor of a rebuilt ``module``."""
    weight_norm = _compat.weight_norm_class()
    for name, plist in _names_and_lists(module):
        if any(isinstance(p, weight_norm) for p in plist.children()):
            _compat.register_load_pre_hook(module, WeightNormCompat(name))


def is_parametrized(module: nn.Module) -> bool:
    """Whether torch's ``register_parametrization`` gave ``module`` its own class."""
    return parametrize.is_parametrized(module)


def base_class(module: nn.Module) -> type[nn.Module]:
    """The class ``module`` had before it was parametrized (its own class otherwise)."""
    return parametrize.type_before_parametrizations(module)


def restore(module: nn.Module, names: Iterable[str]) -> nn.Module:
    """Make ``module`` (an instance of its base class holding a ``parametrizations``
    ``ModuleDict``) parametrized again: the tensors ``names`` are computed from it on access."""
    # NOTE: torch's own two steps of register_parametrization, without its first step,
    # which would compute new originals from the current tensor (right_inverse)
    _compat.reparametrize(module, names)
    return module


def picklable(modules: Mapping[str, nn.Module | None]) -> dict[str, Any]:
    """``modules`` with each parametrized module (at any depth) replaced by a picklable
    description that unpickles as the module rebuilt; other modules are shared, not copied."""
    memo: dict[int, Any] = {}
    return {k: (_picklable(v, memo) if v is not None else None) for k, v in modules.items()}


def dumps(root: Any) -> bytes:
    """Pickle ``root`` (an object holding parametrized modules anywhere, also in plain
    objects), each parametrized module pickled as its description; ``loads`` reverses it."""
    buffer = io.BytesIO()
    _Pickler(buffer, root).dump(root)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    """The object ``dumps`` pickled, its parametrized modules rebuilt."""
    return pickle.loads(data)


class _Pickler(pickle.Pickler):
    def __init__(self, file: IO[bytes], root: Any) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.root = root

    def reducer_override(self, obj: Any) -> Any:
        if obj is self.root:  # the default reduction, not the root's own __reduce_ex__
            return object.__reduce_ex__(obj, 2)
        if isinstance(obj, nn.Module) and is_parametrized(obj):
            names = [name for name, _ in _names_and_lists(obj)]
            return _Parametrized(base_class(obj), _state(obj), names).__reduce__()
        return NotImplemented


class _Parametrized:
    """Pickles as the parametrized module it describes (base class, state, tensor names)."""

    def __init__(self, cls: type[nn.Module], state: dict[str, Any], names: list[str]) -> None:
        self.cls = cls
        self.state = state
        self.names = names

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.cls, self.names), self.state, None, None, _set_state)


def _rebuild(cls: type[nn.Module], names: list[str]) -> nn.Module:
    module = cls.__new__(cls)
    # the names travel with the object until its state arrives
    module.__dict__["_fxtap_parametrized"] = names
    return module


def _set_state(module: nn.Module, state: dict[str, Any]) -> None:
    names = module.__dict__.pop("_fxtap_parametrized")
    module.__setstate__(state)
    restore(module, names)


def _picklable(module: nn.Module, memo: dict[int, Any]) -> Any:
    if id(module) in memo:
        return memo[id(module)]
    if not _holds_parametrized(module):
        memo[id(module)] = module
        return module
    state = _state(module)
    children = dict(module._modules)
    if is_parametrized(module):
        names = [name for name, _ in _names_and_lists(module)]
        found: Any = _Parametrized(base_class(module), state, names)
    else:
        found = object.__new__(type(module))
        found.__dict__ = state
    memo[id(module)] = found
    state["_modules"] = {
        k: (_picklable(v, memo) if v is not None else None) for k, v in children.items()
    }
    return found


def _state(module: nn.Module) -> dict[str, Any]:
    state = dict(module.__dict__)
    state["_load_state_dict_pre_hooks"] = _compat_hooks(_compat.load_pre_hooks(module))
    return state


def _holds_parametrized(module: nn.Module) -> bool:
    return any(is_parametrized(m) for m in module.modules())


def _names_and_lists(module: nn.Module) -> list[tuple[str, nn.Module]]:
    holder = module._modules["parametrizations"]
    assert holder is not None  # torch sets it on every parametrized module
    return [(name, plist) for name, plist in holder._modules.items() if plist is not None]


def _compat_hooks(hooks: dict[int, Any]) -> Any:
    copied = type(hooks)(hooks)
    for key, wrapped in hooks.items():
        hook = getattr(wrapped, "hook", None)
        if hook is not None and getattr(hook, "__qualname__", None) == _TORCH_COMPAT_HOOK:
            cells = dict(zip(hook.__code__.co_freevars, hook.__closure__ or (), strict=True))
            name = cells["name"].cell_contents
            copied[key] = _compat.wrap_load_pre_hook(WeightNormCompat(name))
    return copied
