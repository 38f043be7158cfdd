"""Model specs and example inputs shared by every command-line subcommand."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxtap.errors import InvalidArgumentError, ModelSpecError, ResourceError, format_choices

__all__ = [
    "DEFAULT_INPUT",
    "DTYPES",
    "InputSpec",
    "load_model",
    "load_spec",
    "make_inputs",
    "parse_input",
    "parse_model_args",
]

#: The example input used when none is given: one 224x224 RGB image.
DEFAULT_INPUT = "1x3x224x224"
#: dtype names accepted by ``--input SHAPE:DTYPE`` and ``--dtype``.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
    "int": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class InputSpec:
    """One example input: a shape and, optionally, a dtype (else ``--dtype``, else float32).

    >>> parse_input("1x3x64x64:float16")
    InputSpec(shape=(1, 3, 64, 64), dtype=torch.float16)
    """

    shape: tuple[int, ...]
    dtype: torch.dtype | None = None

    def __str__(self) -> str:
        text = "x".join(map(str, self.shape))
        return f"{text}:{str(self.dtype).removeprefix('torch.')}" if self.dtype else text


def parse_input(text: str) -> InputSpec:
    """Parse ``"1x3x224x224"`` or ``"1x3x224x224:float16"`` into an ``InputSpec``.

    Raises:
        InvalidArgumentError: not positive integers separated by ``x``, or an unknown dtype.
    """
    shape_text, _, dtype_text = text.strip().partition(":")
    parts = shape_text.lower().split("x")
    if not shape_text or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InvalidArgumentError(
            f"input shape {text!r} is not positive integers separated by 'x'; expected e.g. "
            f"{DEFAULT_INPUT} or {DEFAULT_INPUT}:float16"
        )
    dtype = None
    if dtype_text:
        dtype = parse_dtype(dtype_text)
    return InputSpec(tuple(int(p) for p in parts), dtype)


def parse_dtype(text: str) -> torch.dtype:
    """Parse a dtype name such as ``float16`` (``torch.`` prefix allowed)."""
    key = text.strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        close = difflib.get_close_matches(key, DTYPES, n=3)
        hint = f"; closest: {format_choices(close)}" if close else ""
        raise InvalidArgumentError(
            f"dtype {text!r} is not known{hint}. Expected one of {format_choices(DTYPES)}"
        )
    return DTYPES[key]


def make_inputs(
    specs: Sequence[InputSpec] | None = None, *, dtype: torch.dtype | None = None, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Build reproducible example inputs: normal noise for floats, zeros and ones for integers.

    Args:
        specs: one per model input (default: one ``1x3x224x224`` input).
        dtype: dtype of inputs whose spec names none (default: float32).
        seed: random seed, so two runs see the same inputs.
    """
    specs = list(specs) if specs else [parse_input(DEFAULT_INPUT)]
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        kind = spec.dtype or dtype or torch.float32
        _check_memory(spec, kind)
        if kind.is_floating_point:
            t = torch.randn(spec.shape, generator=generator).to(kind)
        elif kind == torch.bool:
            t = torch.randint(0, 2, spec.shape, generator=generator).bool()
        else:
            t = torch.randint(0, 2, spec.shape, generator=generator).to(kind)
        tensors.append(t)
    return tuple(tensors)


def parse_model_args(items: Iterable[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are Python literals when they parse, else strings.

    >>> parse_model_args(["num_classes=10", "norm=batch", "dims=(1, 2)"])
    {'num_classes': 10, 'norm': 'batch', 'dims': (1, 2)}
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InvalidArgumentError(
                f"model argument {item!r} is not key=value with a Python identifier as key; "
                "expected e.g. --model-arg num_classes=10"
            )
        try:
            out[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = value
    return out


def load_model(spec: str, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the model a spec names, without downloading anything.

    Specs: ``torchvision:NAME`` (``weights=None``; ``weights_backbone=None`` for detection and
    segmentation models), ``timm:NAME`` (``pretrained=False``; needs timm),
    ``package.module:factory`` and ``path/to/file.py:factory``. ``factory`` is any callable
    returning an ``nn.Module`` (a class or a function); ``model_args`` are passed to it.

    Raises:
        ModelSpecError: the spec does not resolve; says what was tried and the closest names.
    """
    kwargs = dict(model_args or {})
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise ModelSpecError(
            f"model spec {spec!r} has no 'SOURCE:NAME' form; expected torchvision:resnet18, "
            "timm:resnet18, package.module:factory or path/to/file.py:factory"
            + _suggest_torchvision(spec)
        )
    if source == "torchvision":
        model = _torchvision(name, kwargs)
    elif source == "timm":
        model = _timm(name, kwargs)
    elif source.endswith(".py") or os.sep in source or "/" in source:
        model = _call(_from_file(source, name, spec), kwargs, spec)
    else:
        model = _call(_from_module(source, name, spec), kwargs, spec)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"model spec {spec!r} returned a {type(model).__name__}, not a torch.nn.Module; "
            "point it at a function or class that builds the model"
        )
    return model


def _torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision.models

    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = f"; closest: {format_choices(close)}" if close else ""
        raise ModelSpecError(
            f"model spec 'torchvision:{name}': torchvision has no model {name!r}{hint}. "
            "List them with: python -c 'import torchvision; print(torchvision.models.list_models())'"
        )
    builder = torchvision.models.get_model_builder(name)
    kwargs.setdefault("weights", None)
    if "weights_backbone" in _parameters(builder):
        kwargs.setdefault("weights_backbone", None)
    return _call(builder, kwargs, f"torchvision:{name}")


def _timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ModelSpecError(
            f"model spec 'timm:{name}' needs timm, which is not installed; install it with "
            "'pip install timm' or use a torchvision:NAME spec"
        ) from exc
    available = timm.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = f"; closest: {format_choices(close)}" if close else ""
        raise ModelSpecError(f"model spec 'timm:{name}': timm has no model {name!r}{hint}")
    kwargs.setdefault("pretrained", False)
    return _call(lambda **kw: timm.create_model(name, **kw), kwargs, f"timm:{name}")


def _from_module(module_name: str, attr: str, spec: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(
            f"model spec {spec!r}: cannot import module {module_name!r} ({exc}). Expected "
            "torchvision:NAME, timm:NAME, an importable package.module:factory or "
            "path/to/file.py:factory" + _suggest_torchvision(attr)
        ) from exc
    return _lookup(module, attr, spec, module_name)


def _from_file(path_text: str, attr: str, spec: str) -> Any:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ModelSpecError(
            f"model spec {spec!r}: file {str(path)!r} does not exist; expected "
            "path/to/file.py:factory relative to the current directory"
        )
    module_name = f"_fxtap_spec_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelSpecError(f"model spec {spec!r}: {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    # NOTE: registered before running so that dataclasses and pickling can find the module.
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ModelSpecError(
            f"model spec {spec!r}: running {str(path)!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return _lookup(module, attr, spec, str(path))


def _lookup(module: Any, attr: str, spec: str, where: str) -> Any:
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(attr, names, n=3)
            hint = f"; closest: {format_choices(close)}" if close else ""
            raise ModelSpecError(f"model spec {spec!r}: {where!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(
            f"model spec {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable that "
            "builds the model"
        )
    return obj


def _call(factory: Any, kwargs: dict[str, Any], spec: str) -> nn.Module:
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ModelSpecError(
            f"model spec {spec!r} rejected its arguments {kwargs!r}: {exc}. Check the "
            "--model-arg names against the factory's signature"
        ) from exc


def _parameters(fn: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return set()


def _suggest_torchvision(word: str) -> str:
    try:
        import torchvision.models
    except ImportError:  # pragma: no cover
        return ""
    close = difflib.get_close_matches(
        word.split(":")[-1], torchvision.models.list_models(), n=3, cutoff=0.6
    )
    if not close:
        return ""
    return "; did you mean " + ", ".join(f"'torchvision:{n}'" for n in close) + "?"


def _check_memory(spec: InputSpec, kind: torch.dtype) -> None:
    """Refuse an input that cannot fit in memory, before allocating anything."""
    numel = 1
    for size in spec.shape:
        numel *= int(size)
    need = numel * torch.empty((), dtype=kind).element_size()
    have = available_memory()
    if have is not None and need > have:
        shape = "x".join(str(s) for s in spec.shape)
        raise ResourceError(
            f"input {shape!r} ({str(kind).removeprefix('torch.')}) needs {_bytes(need)} but only "
            f"{_bytes(have)} of memory is available; pass a smaller --input, e.g. 1x3x224x224"
        )


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``), when known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} PB"


def load_spec(spec: str, model_args: Sequence[str] = (), *, trust: bool = False) -> nn.Module:
    """A model from a spec, or a saved extractor when ``spec`` is an existing file."""
    path = Path(spec)
    if path.suffix in (".fxtap", ".pt", ".pth") or (path.is_file() and path.suffix != ".py"):
        from fxtap.save import load

        return load(path, trust=trust)
    return load_model(spec, parse_model_args(model_args))
