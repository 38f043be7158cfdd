"""Tracer options: validation of ``tracer_kwargs`` and ``concrete_args``, torchvision's defaults."""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from fxtap.errors import InvalidArgumentError, format_choices, unknown_choice

__all__ = [
    "check_concrete_args",
    "check_flags",
    "check_model",
    "default_autowrap_modules",
    "default_leaf_modules",
    "restore_training",
    "trace_fixes",
    "tracer_options",
]

_TRACER_KWARGS = (
    "leaf_modules",
    "autowrap_modules",
    "autowrap_functions",
    "param_shapes_constant",
    "record_source",
    "proxy_buffer_attributes",
)


def default_leaf_modules() -> tuple[type[nn.Module], ...]:
    """Every ``nn.Module`` class exported by ``torchvision.ops``."""
    import torchvision.ops

    return tuple(
        obj
        for _, obj in inspect.getmembers(torchvision.ops)
        if inspect.isclass(obj) and issubclass(obj, nn.Module)
    )


def default_autowrap_modules() -> tuple[types.ModuleType, ...]:
    """``math`` and ``torchvision.ops`` (torchvision's defaults)."""
    import torchvision.ops

    return (math, torchvision.ops)


def check_model(model: Any) -> None:
    """Raise ``InvalidArgumentError`` unless ``model`` is an eager ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"model {model!r:.80} is a {type(model).__name__}; expected a torch.nn.Module. "
            "Wrap a function in a module whose forward calls it."
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise InvalidArgumentError(
            f"model {type(model).__name__} ({getattr(model, 'original_name', '?')}) is a "
            "TorchScript module (torch.jit.script or torch.jit.trace); torch.fx cannot trace "
            "scripted models. Pass the eager nn.Module it was scripted from instead"
        )


def check_flags(**flags: Any) -> None:
    """Raise ``InvalidArgumentError`` for a flag argument that is not ``True`` or ``False``.

    >>> check_flags(auto_leaf=True, training=False)
    """
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise InvalidArgumentError(
                f"{name}={value!r} is a {type(value).__name__}; expected a bool: pass "
                f"{name}=True or {name}=False"
            )


def tracer_options(tracer_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``tracer_kwargs`` and merge torchvision's defaults; never mutates the input."""
    if tracer_kwargs is None:
        user: dict[str, Any] = {}
    elif isinstance(tracer_kwargs, Mapping):
        user = dict(tracer_kwargs)
    else:
        raise InvalidArgumentError(
            f"tracer_kwargs {tracer_kwargs!r:.80} is a {type(tracer_kwargs).__name__}; expected a "
            f"dict with keys among {format_choices(_TRACER_KWARGS)}"
        )
    for key in user:
        if key not in _TRACER_KWARGS:
            raise unknown_choice(
                "tracer_kwargs key",
                key,
                _TRACER_KWARGS,
                fix="Pass only NodePathTracer options in tracer_kwargs.",
            )
    for key in ("leaf_modules", "autowrap_modules", "autowrap_functions"):
        value = user.get(key, ())
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise InvalidArgumentError(
                f"tracer_kwargs[{key!r}] is {value!r:.80}; expected a list or tuple"
            )
        user[key] = tuple(value)
    for fn in user["autowrap_functions"]:
        if not callable(fn):
            raise InvalidArgumentError(
                f"tracer_kwargs['autowrap_functions'] item {fn!r} is not callable; expected "
                "functions such as my_module.my_helper"
            )
    for mod in user["autowrap_modules"]:
        if not isinstance(mod, types.ModuleType):
            raise InvalidArgumentError(
                f"tracer_kwargs['autowrap_modules'] item {mod!r} is not a Python module; expected "
                "modules such as math"
            )
    user["leaf_modules"] = tuple(dict.fromkeys(user["leaf_modules"] + default_leaf_modules()))
    user["autowrap_modules"] = tuple(
        dict.fromkeys(user["autowrap_modules"] + default_autowrap_modules())
    )
    return user


def check_concrete_args(
    model: nn.Module, concrete_args: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Check that every ``concrete_args`` key is an argument of ``model.forward``."""
    if concrete_args is None:
        return None
    if not isinstance(concrete_args, Mapping):
        raise InvalidArgumentError(
            f"concrete_args {concrete_args!r:.80} is a {type(concrete_args).__name__}; expected a "
            "dict mapping forward() argument names to fixed values"
        )
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtin forwards
        return dict(concrete_args)
    for key in concrete_args:
        if key not in params:
            raise unknown_choice(
                "concrete_args key",
                key,
                params,
                fix=f"Keys of concrete_args name arguments of {type(model).__name__}.forward.",
            )
    return dict(concrete_args)


class restore_training:
    """Context manager restoring the ``training`` flag of every submodule on exit.

    ``model.train(was_training)`` would flatten a model whose submodules are in mixed modes;
    this puts each flag back as it was.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags = [(m, m.training) for m in model.modules()]

    def __enter__(self) -> restore_training:
        return self

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.flags:
            # NOTE: nn.Module.__setattr__ is slow; most flags did not change.
            if m.training is not flag:
                m.training = flag


#: Words of torch.fx failures that fixing an argument's value (``concrete_args``) can cure.
_DATA_DEPENDENT = ("control flow", "cannot be iterated", "len(", "__bool__", "__index__")


def trace_fixes(path: str, type_name: str, function: str | None, reason: str) -> list[str]:
    """The options that can fix one trace failure, in the words of the interface.

    Only fixes that apply are offered: ``autowrap_functions=`` for a plain function (one
    whose name starts with ``_`` too: ``NodePathTracer`` records those, torch.fx does not),
    ``concrete_args=`` only for data-dependent control flow.
    """
    fixes = []
    if path:
        fixes.append(
            f"keep the module opaque with tracer_kwargs={{'leaf_modules': [{path!r}]}} "
            f"(or its class {type_name})"
        )
    if function and not function.rpartition(".")[2].startswith("_"):
        fixes.append(f"record the function as one node with autowrap_functions=[{function}]")
    elif function:
        fixes.append(
            f"record the function as one node with autowrap_functions=[{function}] (torch.fx "
            "never autowraps names starting with '_'; fxtap's NodePathTracer does)"
        )
    if any(marker in reason for marker in _DATA_DEPENDENT):
        fixes.append("fix data-dependent arguments with concrete_args={'name': value}")
    if not fixes:
        fixes.append("move the failing code into a submodule and pass it in leaf_modules=")
    return fixes
