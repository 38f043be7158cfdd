"""Encode modules and values as the ``.fxtap`` manifest's JSON (tensors kept aside)."""

from __future__ import annotations

import enum
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx, nn

from fxtap._parametrized import base_class, is_parametrized
from fxtap.errors import InvalidArgumentError, LoadError
from fxtap.save._allowlist import resolve
from fxtap.save._hf import (
    ATTENTION,
    TAG,
    check_config,
    check_plain,
    installed_version,
    is_transformers_model,
    outside,
    rebuild,
)
from fxtap.save._state import arguments_of

__all__ = ["Tensors", "encode", "encode_module", "function_path", "unsavable"]

# Keys every fresh nn.Module has; the rest of a module's __dict__ is its configuration.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_SCALARS = (bool, int, float, str, type(None))


class Tensors:
    """Tensors to store, each object once; keys are ``t0``, ``t1``, ..."""

    def __init__(self) -> None:
        self.keys: dict[int, str] = {}
        self.data: dict[str, torch.Tensor] = {}
        self.info: dict[str, dict[str, bool]] = {}
        self.storages: set[int] = set()

    def add(self, tensor: torch.Tensor) -> str:
        key = self.keys.get(id(tensor))
        if key is None:
            key = f"t{len(self.keys)}"
            self.keys[id(tensor)] = key
            if tensor.is_meta:
                raise InvalidArgumentError(
                    "the extractor holds tensors on the meta device, which have no values to "
                    "save; build the model on a real device (e.g. torch.device('cpu')) or fill "
                    "it with model.load_state_dict(state, assign=True) before extracting"
                )
            value = tensor.detach().to("cpu").contiguous()
            storage = value.untyped_storage()
            # NOTE: safetensors refuses tensors that share storage; a clone owns its storage.
            if storage.data_ptr() in self.storages or storage.nbytes() != value.nbytes:
                value = value.clone()
            self.storages.add(value.untyped_storage().data_ptr())
            self.data[key] = value
            self.info[key] = {
                "parameter": isinstance(tensor, nn.Parameter),
                "requires_grad": bool(tensor.requires_grad),
            }
        return key


def encode(value: Any, tensors: Tensors | None = None) -> Any:
    """JSON for an fx argument; containers and torch values are tagged one-key objects.

    With ``tensors`` (a module's configuration), tensors, enum members, importable functions
    and plain objects (class path and attributes) are stored too.
    """
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, torch.Size):
        return {"size": list(value)}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [encode(v, tensors) for v in value]
    if isinstance(value, Mapping):
        return {"dict": [[encode(k), encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [encode(value.start), encode(value.stop), encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if tensors is not None:
        return _encode_object(value, tensors)
    raise unsavable(f"value {value!r:.60} of type {type(value).__name__}")


def _encode_object(value: Any, tensors: Tensors) -> Any:
    """A configuration value that is no plain data: tensor, enum, function or plain object."""
    if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
        return {"tensor": tensors.add(value)}
    if type(value) in (set, frozenset) and all(isinstance(v, _SCALARS) for v in value):
        tag = type(value).__name__
        return {tag: sorted((encode(v) for v in value), key=repr)}
    cls = type(value)
    if isinstance(value, enum.Enum) and resolve(cls.__module__, cls.__qualname__) is cls:
        return {"enum": {"class": f"{cls.__module__}:{cls.__qualname__}", "name": value.name}}
    if isinstance(value, types.FunctionType | types.BuiltinFunctionType):
        return {"function": function_path(value)}
    plain = (
        not isinstance(value, nn.Module | type)
        and cls.__reduce_ex__ is object.__reduce_ex__
        and getattr(cls, "__getstate__", object.__getstate__) is object.__getstate__
        and getattr(cls, "__setstate__", None) is None
        and "__slots__" not in vars(cls)
        and isinstance(getattr(value, "__dict__", None), dict)
        and resolve(cls.__module__, cls.__qualname__) is cls
    )
    if not plain:
        raise unsavable(f"value {value!r:.60} of type {cls.__name__}")
    state = {k: encode(v, tensors) for k, v in vars(value).items()}
    return {"object": {"class": f"{cls.__module__}:{cls.__qualname__}", "state": state}}


def encode_module(
    module: nn.Module, path: str, tensors: Tensors, memo: dict[int, str]
) -> dict[str, Any]:
    """The spec of ``module``: class, public attributes, tensors, children.

    Private attributes (``_name``) are never stored: those some torch and torchvision classes
    need are rebuilt on load (``fxtap.save._state``). A Hugging Face model is stored as its
    class, config and weights (``fxtap.save._hf``).
    """
    if id(module) in memo:
        return {"same_as": memo[id(module)]}
    memo[id(module)] = path
    if is_transformers_model(module):
        return _encode_transformers(module, path, tensors.add)
    parametrized = is_parametrized(module)
    cls = base_class(module)
    config = {}
    for key, value in vars(module).items():
        if key in _MODULE_INTERNALS or key.startswith("_"):
            continue
        try:
            config[key] = encode(value, tensors)
        except (InvalidArgumentError, RecursionError) as exc:  # a cycle of plain objects
            raise unsavable(
                f"module {path!r} ({cls.__name__}) attribute {key!r} is a {type(value).__name__}"
            ) from exc
    spec: dict[str, Any] = {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "training": module.training,
        "config": config,
        "parameters": {
            k: (tensors.add(v) if v is not None else None) for k, v in module._parameters.items()
        },
        "buffers": {
            k: (tensors.add(v) if v is not None else None) for k, v in module._buffers.items()
        },
        "non_persistent": sorted(module._non_persistent_buffers_set),
        "modules": {
            k: (encode_module(v, f"{path}.{k}", tensors, memo) if v is not None else None)
            for k, v in module._modules.items()
        },
    }
    arguments = arguments_of(module)
    if arguments:
        spec["arguments"] = {k: encode(v) for k, v in arguments.items()}
    if parametrized:  # the tensors under ``parametrizations`` are computed on access
        spec["parametrized"] = True
    return spec


def function_path(fn: Any) -> str:
    """``module:name`` such that importing it gives back ``fn`` itself."""
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", None) or ""
    qualname = getattr(fn, "__qualname__", None) or name
    candidates = [(module, qualname), (module, name)]
    candidates += [(home, name) for home in ("torch", "torch.nn.functional", "operator", "math")]
    for home, attr in candidates:
        if home and attr and resolve(home, attr) is fn:
            return f"{'operator' if home == '_operator' else home}:{attr}"
    raise unsavable(f"function {fn!r} (no importable module path)")


def unsavable(what: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{what} cannot be stored in the safe fxtap format, which keeps only torch values and "
        "plain data; save with fmt='pickle' (--format pickle) and load it with trust=True"
    )


# --- Hugging Face models (fxtap.save._hf) ------------------------------------------------------


def _encode_transformers(
    model: Any, path: str, add_tensor: Callable[[torch.Tensor], str]
) -> dict[str, Any]:
    """The spec of Hugging Face ``model``; its tensors go to ``add_tensor``.

    Raises:
        InvalidArgumentError: the model is not what its class and config rebuild (a module
            replaced or an attribute changed after construction), its config is not plain
            data, or it uses an attention implementation the safe loader does not rebuild.
    """
    from fxtap.capture._reach import Dropped

    cls = type(model)
    name = f"{cls.__module__}:{cls.__qualname__}"
    where = f"module {path!r} ({cls.__name__})"
    # NOTE: transformers keeps the attention implementation in a private config field that
    # to_dict leaves out; it changes the values (sdpa and eager round differently)
    attention = getattr(model.config, "_attn_implementation", None) or "eager"
    if attention not in ATTENTION:
        raise unsavable(f"{where} attention implementation {attention!r}")
    config = model.config.to_dict()
    try:
        check_config(config, type(model.config), where)
    except LoadError as exc:
        raise unsavable(f"{where} config ({exc})") from exc
    dropped = [p for p, m in model.named_modules() if isinstance(m, Dropped)]
    kept = outside(dropped)
    spec = {
        "class": name,
        "version": installed_version() or "",
        "config": encode(config),
        "attention": attention,
        "training": model.training,
        "parameters": {
            k: add_tensor(v) for k, v in model.named_parameters(remove_duplicate=False) if kept(k)
        },
        "buffers": {
            k: add_tensor(v) for k, v in model.named_buffers(remove_duplicate=False) if kept(k)
        },
        "dropped": dropped,
    }
    rebuilt = type(model.config).from_dict(config)
    if rebuilt.to_dict() != config:
        raise unsavable(f"{where} config (from_dict does not read its to_dict back)")
    fresh = rebuild(cls, rebuilt, attention)
    difference = _difference(model, fresh, kept)
    if difference:
        raise InvalidArgumentError(
            f"{where} is not what {cls.__name__}._from_config(model.config) builds: "
            f"{difference}; the safe format stores a Hugging Face model as its class, config "
            "and weights. Save with fmt='pickle' (--format pickle) and load it with trust=True"
        )
    return {TAG: spec}


def _difference(model: nn.Module, fresh: nn.Module, kept: Callable[[str], bool]) -> str:
    """The first way ``model`` differs from ``fresh`` (rebuilt from its config), or ''."""
    from fxtap.capture._reach import Dropped

    built = dict(fresh.named_modules(remove_duplicate=False))
    for path, module in model.named_modules(remove_duplicate=False):
        if not kept(path) or isinstance(module, Dropped):
            continue
        other = built.get(path)
        if type(other) is not type(module):
            return f"module {path!r} is a {type(module).__name__}, not {type(other).__name__}"
        for key, value in vars(module).items():
            if key.startswith("_") or key == "training" or not _is_plain(value):
                continue
            if key not in vars(other) or vars(other)[key] != value:
                return (
                    f"{path or 'the model'}.{key} = {value!r:.40}, not {vars(other).get(key)!r:.40}"
                )
    ours = {k: v.shape for k, v in model.state_dict(keep_vars=True).items() if kept(k)}
    theirs = {k: v.shape for k, v in fresh.state_dict(keep_vars=True).items() if kept(k)}
    if ours != theirs:
        changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        return f"its tensors differ at {changed[:3]}"
    return ""


def _is_plain(value: Any) -> bool:
    try:
        check_plain(value, "")
    except LoadError:
        return False
    return True
