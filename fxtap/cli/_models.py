"""Model specs shared by every command-line subcommand (example inputs: ``_examples``)."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from fxtap.cli._examples import DTYPES, make_inputs, parse_input, suggest_input
from fxtap.cli._inputs import DEFAULT_INPUT, InputSpec
from fxtap.errors import FxtapError, InvalidArgumentError, format_choices

__all__ = [
    "DEFAULT_INPUT",
    "DTYPES",
    "InputSpec",
    "ModelSpecError",
    "load_model",
    "load_spec",
    "make_inputs",
    "parse_input",
    "parse_model_args",
    "suggest_input",
]


class ModelSpecError(InvalidArgumentError):
    """A command-line model spec such as ``torchvision:resnet18`` does not resolve.

    Only the command line builds models from specs, so the error lives with it
    (``fxtap.cli.ModelSpecError``); it is an ``InvalidArgumentError`` like the library's.
    """


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


def load_model(
    spec: str, model_args: Mapping[str, Any] | None = None, *, allow_download: bool = False
) -> nn.Module:
    """Build the model a spec names, without downloading anything.

    Specs: ``torchvision:NAME`` (``weights=None``; ``weights_backbone=None`` for detection and
    segmentation models), ``timm:NAME`` (``pretrained=False``; needs timm),
    ``package.module:factory`` and ``path/to/file.py:factory``. ``factory`` is any callable
    returning an ``nn.Module`` (a class or a function); ``model_args`` are passed to it.
    Arguments that ask torchvision or timm for pretrained weights (``weights=``,
    ``weights_backbone=``, ``pretrained=True``) are refused unless ``allow_download``.

    Raises:
        ModelSpecError: the spec does not resolve, or asks for a download that is not allowed;
            says what was tried and the closest names.
    """
    kwargs = dict(model_args or {})
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise ModelSpecError(
            f"model spec {spec!r} has no 'SOURCE:NAME' form; expected torchvision:resnet18, "
            "timm:resnet18, package.module:factory or path/to/file.py:factory"
            + _suggest_torchvision(spec)
        )
    if source in ("torchvision", "timm") and not allow_download:
        _refuse_download(spec, kwargs)
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


#: Factory arguments that make torchvision or timm fetch pretrained weights, and their offline value.
_DOWNLOADS = {"weights": None, "weights_backbone": None, "pretrained": False}


def _refuse_download(spec: str, kwargs: Mapping[str, Any]) -> None:
    for key, offline in _DOWNLOADS.items():
        if key in kwargs and kwargs[key] not in (offline, "None", False):
            raise ModelSpecError(
                f"--model-arg {key}={kwargs[key]!r} for {spec!r} downloads pretrained weights "
                "from the internet; pass --allow-download to fetch them (or use the copy already "
                f"in torch's cache), or drop --model-arg {key}= to build with random weights"
            )


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
    except (Exception, SystemExit) as exc:
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
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins and some C extensions have none
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise ModelSpecError(
                f"model spec {spec!r} rejected its arguments {kwargs!r}: {exc}. Check the "
                "--model-arg names against the factory's signature"
            ) from exc
    try:
        return factory(**kwargs)
    except SystemExit as exc:
        raise ModelSpecError(
            f"model spec {spec!r} called sys.exit({exc.code!r}) while building the model instead "
            "of returning it; make the factory return an nn.Module"
        ) from exc
    except Exception as exc:
        if isinstance(exc, TypeError) and signature is None:
            raise ModelSpecError(
                f"model spec {spec!r} rejected its arguments {kwargs!r}: {exc}. Check the "
                "--model-arg names against the factory's signature"
            ) from exc
        if isinstance(exc, FxtapError):
            raise
        raise ModelSpecError(
            f"model spec {spec!r} failed while building the model: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())}. Fix the factory, or its --model-arg values"
        ) from exc


def _parameters(fn: Any) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return set()


def _suggest_torchvision(word: str) -> str:
    import torchvision.models

    close = difflib.get_close_matches(
        word.split(":")[-1], torchvision.models.list_models(), n=3, cutoff=0.6
    )
    if not close:
        return ""
    return "; did you mean " + ", ".join(f"'torchvision:{n}'" for n in close) + "?"


def load_spec(
    spec: str, model_args: Sequence[str] = (), *, trust: bool = False, allow_download: bool = False
) -> nn.Module:
    """A model from a spec, or a saved extractor when ``spec`` is an existing file."""
    path = Path(spec)
    if path.suffix in (".fxtap", ".pt", ".pth") or (path.is_file() and path.suffix != ".py"):
        from fxtap.save import load

        return load(path, trust=trust)
    return load_model(spec, parse_model_args(model_args), allow_download=allow_download)
