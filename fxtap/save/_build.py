"""Build modules and configuration values from checked specs, resolving only allowed names.

Modules are created with ``cls.__new__`` plus ``nn.Module.__init__``, never the class's
constructor, and given their saved state; classes and functions come from the allowlist,
resolved by their exact names (or, with ``trust``, imported by the path the file gives).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fxtap._parametrized import add_weight_norm_hooks, restore
from fxtap.errors import LoadError
from fxtap.save._allowlist import resolve
from fxtap.save._config import build_value
from fxtap.save._hf import TransformersSpec, build_transformers
from fxtap.save._schema import ModuleSpec
from fxtap.save._state import restore_private

__all__ = ["build_module", "function", "module_class", "tensors_of"]


def tensors_of(
    listed: Mapping[str, tuple[bool, bool]], stored: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The tensors of a checked manifest (``listed``: key -> parameter, requires_grad), from
    those ``stored`` in the weights file (shared, not copied)."""
    absent = sorted(set(listed) - set(stored))
    if absent:
        raise LoadError(
            f"tensors {absent[:3]} are listed in fxtap.json but not in weights.safetensors"
        )
    tensors: dict[str, torch.Tensor] = {}
    for key, (parameter, requires_grad) in listed.items():
        value = stored[key]
        if requires_grad and not (value.is_floating_point() or value.is_complex()):
            raise LoadError(f"tensors.{key}.requires_grad: a {value.dtype} tensor has no gradient")
        tensors[key] = nn.Parameter(value, requires_grad=requires_grad) if parameter else value
    return tensors


def build_module(
    spec: ModuleSpec | TransformersSpec | str,
    tensors: Mapping[str, torch.Tensor],
    built: dict[str, nn.Module],
    *,
    trust: bool,
) -> nn.Module:
    """The module of a checked spec; ``built`` maps the paths built so far to their modules."""
    if isinstance(spec, str):  # ``same_as``: checked to be complete already
        return built[spec]
    if isinstance(spec, TransformersSpec):
        model = build_transformers(spec, tensors, lambda path: module_class(path, trust=trust))
        built[spec.path] = model
        return model
    cls = module_class(spec.cls, trust=trust)
    # NOTE: the constructor is not called: its arguments are unknown and it would allocate
    # what the file says; the module gets nn.Module's internals, then its saved state.
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in spec.config.items():
        object.__setattr__(module, key, build_value(value, tensors, _resolver(trust)))
    restore_private(module, spec.arguments, f"modules.{spec.path}.arguments")
    module.training = spec.training
    for key, ref in spec.parameters.items():
        module._parameters[key] = None if ref is None else tensors[ref]  # type: ignore[assignment]
    for key, ref in spec.buffers.items():
        module._buffers[key] = None if ref is None else tensors[ref]
    module._non_persistent_buffers_set = set(spec.non_persistent)
    for key, child in spec.children.items():
        module._modules[key] = (
            None if child is None else build_module(child, tensors, built, trust=trust)
        )
    if spec.parametrized:
        holder = module._modules["parametrizations"]  # checked by the schema
        names = list(holder._modules) if holder is not None else []
        clash = [n for n in names if hasattr(module, n)]
        if clash:
            raise LoadError(f"modules.{spec.path}: {clash[0]!r} is an attribute of {spec.cls}")
        restore(module, names)
        add_weight_norm_hooks(module)
    built[spec.path] = module
    return module


def function(path: str, *, trust: bool) -> Any:
    if path in _manifest_functions():
        return _exact(path)
    if not trust:  # checked by _manifest already
        raise AssertionError(f"unchecked function {path!r}")
    found = resolve(*path.partition(":")[::2])
    if not callable(found):
        raise LoadError(f"its graph calls {path!r}, which does not exist in this install")
    return found


def module_class(path: str, *, trust: bool) -> type[nn.Module]:
    from fxtap.save import _allowlist

    allowed = path in _allowlist.MODULES or path in _allowlist.TRANSFORMERS
    found = _exact(path) if allowed else None
    if found is None:
        if not trust:
            raise AssertionError(f"unchecked module class {path!r}")
        found = resolve(*path.partition(":")[::2])
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise LoadError(f"{path!r} is not a torch.nn.Module class in this install")
    return found


def _resolver(trust: bool) -> Any:
    def resolve_kind(path: str, kind: str) -> Any:
        if kind == "function":
            return function(path, trust=trust)
        from fxtap.save import _allowlist

        pool = _allowlist.ENUMS if kind == "enum" else _allowlist.OBJECTS
        found = _exact(path) if path in pool else None
        if found is None:
            if not trust:
                raise AssertionError(f"unchecked {kind} {path!r}")
            found = resolve(*path.partition(":")[::2])
        wanted = enum.Enum if kind == "enum" else object
        if not (isinstance(found, type) and issubclass(found, wanted)) or issubclass(
            found, nn.Module
        ):
            raise LoadError(f"{path!r} is not a plain {kind} class in this install")
        return found

    return resolve_kind


def _manifest_functions() -> frozenset[str]:
    from fxtap.save import _allowlist

    return _allowlist.FUNCTIONS


def _exact(path: str) -> Any:
    """The object an allowlisted ``module:qualname`` names (the name comes from the allowlist)."""
    found = resolve(*path.partition(":")[::2])
    if found is None:
        raise LoadError(f"{path!r} does not exist in this install of torch and torchvision")
    return found
