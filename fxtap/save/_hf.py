"""Hugging Face models in the safe format: class, config, transformers version and kept weights.

A ``transformers.PreTrainedModel`` is not stored as a module tree (its modules hold
transformers' private state, such as ``_kernel_funcs``, which changes between releases): the
file records what transformers itself needs to rebuild it, as ``save_pretrained`` does: the
model class (allowlisted), ``config.to_dict()`` as checked plain data, the attention
implementation, the transformers version, and the tensors it keeps by path. Loading rebuilds
the model with the class's ``_from_config`` on the ``meta`` device (no weights are
downloaded, nothing is initialised, nothing from the file becomes code), puts the stored
tensors in place and checks that every tensor the rebuilt model holds came from the file.

A file written under another transformers version is refused with a ``LoadError`` naming
both versions: the same class and config may build a model that computes other values.
``fxtap.save._encode`` writes the spec, after checking that the class and config rebuild the
model it describes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fxtap.errors import LoadError
from fxtap.save import _allowlist
from fxtap.save._schema import (
    CONSTANTS,
    as_bool,
    as_object,
    as_string,
    as_strings,
    check_keys,
    closest,
    decode,
    dotted_path,
)

__all__ = [
    "ATTENTION",
    "TAG",
    "TransformersSpec",
    "build_transformers",
    "check_config",
    "check_plain",
    "check_transformers",
    "installed_version",
    "is_transformers_model",
    "outside",
    "rebuild",
]

#: The key of a module spec that holds a Hugging Face model.
TAG = "transformers"
#: Attention implementations the safe loader rebuilds: transformers' own, never a hub kernel.
ATTENTION = frozenset({"eager", "sdpa"})
_KEYS = frozenset({"class", "version", "config", "attention", "training"})
_KEYS |= {"parameters", "buffers", "dropped"}
_CONFIG_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}|_name_or_path")
#: Config keys that make transformers fetch or run code from elsewhere, never written.
_REFUSED_KEYS = frozenset({"auto_map", "quantization_config", "attn_implementation"})
_PLAIN = (bool, int, float, str, type(None))
#: Tensor elements a rebuilt model may create beyond twice the file's (small constant buffers).
_SLACK = 1 << 20


@dataclass(frozen=True)
class TransformersSpec:
    """A checked Hugging Face model: everything ``_from_config`` and the weights need."""

    path: str
    cls: str
    version: str
    config: dict[str, Any]
    attention: str
    training: bool
    parameters: dict[str, str]
    buffers: dict[str, str]
    dropped: tuple[str, ...]


def is_transformers_model(module: nn.Module) -> bool:
    """Whether ``module`` is a ``transformers.PreTrainedModel`` (transformers not imported
    means it cannot be one)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def check_transformers(
    raw: Any, path: str, where: str, tensor: Callable[[Any, str, bool], str], *, trust: bool
) -> TransformersSpec:
    """Validate a Hugging Face model spec; ``tensor(ref, where, parameter)`` checks a key."""
    spec = as_object(raw, where)
    check_keys(spec, _KEYS, None, where)
    cls = as_string(spec["class"], f"{where}.class")
    if cls not in _allowlist.TRANSFORMERS and not trust:
        raise LoadError(
            f"{where}.class: {cls!r:.80} is not a Hugging Face model class the safe loader "
            f"allows{closest(cls, _allowlist.TRANSFORMERS)}. Pass trust=True (--trust) only if "
            "you trust the file"
        )
    version = as_string(spec["version"], f"{where}.version")
    installed = installed_version()
    if installed is None:
        raise LoadError(
            f"{where}: it holds a {cls.rpartition(':')[2]} saved with transformers {version}, "
            f"which is not installed. Install it with: pip install 'transformers=={version}'"
        )
    if version != installed:
        raise LoadError(
            f"{where}: it holds a {cls.rpartition(':')[2]} saved with transformers {version!r:.40}"
            f", but transformers {installed} is installed; a model rebuilt by another version "
            f"may compute other values. Install the saving version (pip install "
            f"'transformers=={version:.40}'), or build the extractor again under "
            f"transformers {installed} and save it again"
        )
    attention = as_string(spec["attention"], f"{where}.attention")
    if attention not in ATTENTION and not trust:
        raise LoadError(
            f"{where}.attention: {attention!r:.40} is not one of {sorted(ATTENTION)}; pass "
            "trust=True (--trust) only if you trust the file"
        )
    config = decode(spec["config"], f"{where}.config", _plain)
    if not isinstance(config, dict):
        raise LoadError(f"{where}.config: expected a dict")
    tensors: dict[str, dict[str, str]] = {}
    for kind in ("parameters", "buffers"):
        tensors[kind] = {}
        for name, ref in as_object(spec[kind], f"{where}.{kind}").items():
            field = f"{where}.{kind}.{name}"
            dotted_path(name, field, top_level=False)
            tensors[kind][name] = tensor(ref, field, kind == "parameters")
    dropped = as_strings(spec["dropped"], f"{where}.dropped")
    for i, item in enumerate(dropped):
        dotted_path(item, f"{where}.dropped[{i}]", top_level=False)
    return TransformersSpec(
        path=path,
        cls=cls,
        version=version,
        config=config,
        attention=attention,
        training=as_bool(spec["training"], f"{where}.training"),
        parameters=tensors["parameters"],
        buffers=tensors["buffers"],
        dropped=tuple(dropped),
    )


def build_transformers(
    spec: TransformersSpec,
    tensors: Mapping[str, torch.Tensor],
    model_class: Callable[[str], type[nn.Module]],
) -> nn.Module:
    """The model of a checked spec: rebuilt by its class's ``_from_config``, then given the
    stored tensors; ``model_class(path)`` resolves the allowlisted (or trusted) class."""
    from fxtap.capture._reach import Dropped

    where = f"modules.{spec.path}"
    cls = model_class(spec.cls)
    config_class = getattr(cls, "config_class", None)
    if not (isinstance(cls, type) and _is_model_class(cls)) or config_class is None:
        raise LoadError(f"{where}.class: {spec.cls} is not a Hugging Face model class")
    check_config(spec.config, config_class, f"{where}.config")
    # NOTE: transformers' own validation raises its own types (huggingface_hub's
    # StrictDataclassFieldValidationError): any failure to read the config refuses the file
    try:
        config = config_class.from_dict(spec.config)
    except Exception as exc:
        raise LoadError(
            f"{where}.config: {config_class.__name__} refuses it: {_first_line(exc)}"
        ) from exc
    if config.to_dict() != spec.config:
        raise LoadError(f"{where}.config: {config_class.__name__} does not read it back as stored")
    keys = {*spec.parameters.values(), *spec.buffers.values()}
    budget = _Budget(2 * sum(tensors[k].numel() for k in keys) + _SLACK, 64 * len(keys) + 10_000)
    try:
        model = rebuild(cls, config, spec.attention, budget)
    except LoadError as exc:
        raise LoadError(f"{where}.config: {exc}") from exc
    except Exception as exc:  # as above: the library refuses the config
        raise LoadError(
            f"{where}: {cls.__name__} cannot be built from the stored config: {_first_line(exc)}"
        ) from exc
    for path in spec.dropped:
        parent, _, name = path.rpartition(".")
        try:
            owner = model.get_submodule(parent)
            replaced = owner.get_submodule(name)
        except AttributeError as exc:
            raise LoadError(f"{where}.dropped: {path!r} is not a module of {cls.__name__}") from exc
        setattr(owner, name, Dropped(path, type(replaced).__name__, cls.__name__))
    kept = outside(list(spec.dropped))
    for kind, stored, held in (
        ("parameters", spec.parameters, dict(model.named_parameters(remove_duplicate=False))),
        ("buffers", spec.buffers, dict(model.named_buffers(remove_duplicate=False))),
    ):
        held = {k: v for k, v in held.items() if kept(k)}
        if set(held) != set(stored):
            extra, absent = sorted(set(stored) - set(held)), sorted(set(held) - set(stored))
            raise LoadError(
                f"{where}.{kind}: {cls.__name__} holds {absent[:3]} but the file does not, and "
                f"the file holds {extra[:3]} but the model does not"
            )
        for name, ref in stored.items():
            value = tensors[ref]
            if value.shape != held[name].shape:
                raise LoadError(
                    f"{where}.{kind}.{name}: a tensor of shape {list(value.shape)}, but "
                    f"{cls.__name__} holds {list(held[name].shape)} there"
                )
            owner_path, _, field = name.rpartition(".")
            setattr(model.get_submodule(owner_path), field, value)
    return model.train(spec.training)


def _is_model_class(cls: type) -> bool:
    transformers = sys.modules.get("transformers")
    return transformers is not None and issubclass(cls, transformers.PreTrainedModel)


# --- helpers -----------------------------------------------------------------------------------


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def rebuild(cls: Any, config: Any, attention: str, budget: Any = None) -> nn.Module:
    # NOTE: on the meta device nothing is allocated or initialised (no RNG draw): the stored
    # tensors replace every tensor the model holds
    with (
        torch.random.fork_rng(devices=[]),
        torch.device("meta"),
        budget or contextlib.nullcontext(),
    ):
        model: nn.Module = cls._from_config(config, attn_implementation=attention)
    return model


class _Budget(TorchFunctionMode):
    """Bounds what building a model from a config may create: a config asking for a million
    layers is refused once the tensors it creates outgrow the file's, not built to the end."""

    def __init__(self, elements: int, calls: int) -> None:
        super().__init__()
        self.elements, self.calls = elements, calls

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls -= 1
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor):
            self.elements -= result.numel()
        if self.calls < 0 or self.elements < 0:
            raise LoadError("its config builds a model far larger than the weights the file holds")
        return result


def outside(dropped: list[str]) -> Callable[[str], bool]:
    return lambda name: not any(name.startswith(p + ".") or name == p for p in dropped)


def _plain(value: Any, where: str) -> Any:
    """Plain data only: scalars, lists, tuples and dicts of them."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) not in ("tuple", "dict"):
        raise LoadError(f"{where}: a config holds plain data only")
    return decode(value, where, _plain)


def check_config(config: Mapping[str, Any], config_class: type, where: str) -> None:
    """Keys are plain names that run no setter code but transformers' own, values plain."""
    for key, value in config.items():
        field = f"{where}.{key}"
        if not (isinstance(key, str) and _CONFIG_KEY.fullmatch(key)) or key in _REFUSED_KEYS:
            raise LoadError(f"{field}: {key!r:.60} is not a config key fxtap stores")
        default = inspect.getattr_static(config_class, key, None)
        if isinstance(default, property):
            # NOTE: setting one runs its setter: only those to_dict itself writes
            if default.fset is None or key not in _default_keys(config_class):
                raise LoadError(f"{field}: {key!r} names a property of {config_class.__name__}")
        elif callable(default) or hasattr(type(default), "__get__"):
            raise LoadError(f"{field}: {key!r} names a method of {config_class.__name__}")
        dtype = key in ("dtype", "torch_dtype") and value is not None
        if dtype and not (isinstance(value, str) and value in CONSTANTS["dtype"]):
            raise LoadError(f"{field}: {value!r:.40} is not a torch dtype name")
        check_plain(value, field)


def _first_line(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= 200 else line[:197] + "..."


@functools.cache
def _default_keys(config_class: type) -> frozenset[str]:
    return frozenset(config_class().to_dict())


def check_plain(value: Any, where: str) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise LoadError(f"{where}: a key of type {type(key).__name__}")
            check_plain(item, f"{where}.{key}")
    else:
        raise LoadError(f"{where}: a {type(value).__name__} is not plain data")
