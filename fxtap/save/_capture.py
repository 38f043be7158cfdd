"""Capture extractors in the safe format: the model's module tree, the requests, the options.

A ``CaptureExtractor`` runs its model's own code, so the archive stores no graph: it holds
the model as a module tree (allowlisted classes, plain configuration, tensors), the requested
queries by mode and the tracer options. Loading builds the module tree from the checked specs
(``fxtap.save._build``) and hands it to fxtap's capture builder, which traces the islands of
those installed, allowlisted classes again: nothing in the file becomes code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fxtap._query import Request
from fxtap.capture import CaptureExtractor, build_capture_extractor
from fxtap.capture._reach import Dropped
from fxtap.errors import FxtapError, LoadError, TraceError
from fxtap.save import _allowlist
from fxtap.save._build import build_module, function, module_class
from fxtap.save._config import Modules
from fxtap.save._hf import TransformersSpec
from fxtap.save._manifest import MODES, header, tensor_list
from fxtap.save._outputs import check_outputs
from fxtap.save._pack import KIND
from fxtap.save._schema import (
    ModuleSpec,
    as_bool,
    as_object,
    as_string,
    as_strings,
    check_code_names,
    check_keys,
    closest,
    dotted_path,
    identifier,
)

__all__ = ["KIND", "CheckedCapture", "build_capture", "check_capture"]

_TOP_KEYS = frozenset(
    {"format", "version", "torch", "kind", "class_name", "training", "model", "tensors"}
    | {"outputs", "reason", "tracer"}
)
_TRACER_KEYS = frozenset(
    {"leaf_modules", "autowrap_modules", "autowrap_functions"}
    | {"param_shapes_constant", "record_source"}
)
#: Modules whose functions the tracer may wrap without trust (torch.fx's default).
_AUTOWRAP_MODULES = frozenset({"math"})


@dataclass(frozen=True)
class CheckedCapture:
    """A capture manifest that passed every check."""

    class_name: str
    training: bool
    model: ModuleSpec | TransformersSpec
    tensors: dict[str, tuple[bool, bool]]
    outputs: dict[str, dict[str | int, str]]
    reason: str
    tracer: dict[str, Any]


def check_capture(data: Any, *, trust: bool) -> CheckedCapture:
    """Validate a parsed capture manifest; ``LoadError`` names the first field at fault."""
    top = header(data, _TOP_KEYS)
    if top["kind"] != KIND:
        raise LoadError(f"kind: {top['kind']!r:.40} is not {KIND!r}")
    tensors = tensor_list(top["tensors"])
    modules = Modules(tensors, trust=trust)
    modules.add_top("model", top["model"], "model")
    model = modules.top["model"]
    if not isinstance(model, (ModuleSpec, TransformersSpec)):
        raise LoadError("model: the model is a module spec, not a reference")
    outputs = check_outputs(top["outputs"], MODES, required=True)
    return CheckedCapture(
        class_name=identifier(top["class_name"], "class_name"),
        training=as_bool(top["training"], "training"),
        model=model,
        tensors=tensors,
        outputs=outputs,
        reason=as_string(top["reason"], "reason"),
        tracer=_check_tracer(top["tracer"], trust=trust),
    )


def build_capture(
    checked: CheckedCapture, tensors: Mapping[str, torch.Tensor], *, trust: bool
) -> CaptureExtractor:
    """The extractor of a checked capture manifest, built by fxtap's capture builder."""
    model = build_module(checked.model, tensors, {}, trust=trust)
    check_code_names(model, ())  # the capture builder traces it: fx writes these names
    options = _build_tracer(checked.tracer, trust=trust)
    requests = {
        mode: [Request(query, key) for key, query in checked.outputs[mode].items()]
        for mode in MODES
    }
    error = TraceError(checked.reason, module_path="", reason=checked.reason)
    try:
        extractor = build_capture_extractor(
            model, requests, error=error, tracer_kwargs=options, warn=False
        )
    except FxtapError as exc:
        raise LoadError(
            f"the stored requests cannot be served by the stored {checked.class_name}: {exc}"
        ) from exc
    # NOTE: the stubs of modules the build-time probe never reached were stored as such
    extractor.dropped = tuple(
        path for path, module in extractor.model.named_modules() if isinstance(module, Dropped)
    )
    return extractor.train(checked.training)


# --- tracer options ----------------------------------------------------------------------------


def _check_tracer(raw: Any, *, trust: bool) -> dict[str, Any]:
    options = as_object(raw, "tracer")
    check_keys(options, set(), _TRACER_KEYS, "tracer")
    checked: dict[str, Any] = {}
    for key, value in options.items():
        where = f"tracer.{key}"
        if key in ("param_shapes_constant", "record_source"):
            checked[key] = as_bool(value, where)
            continue
        items = as_strings(value, where)
        pool = {
            "leaf_modules": _allowlist.MODULES,
            "autowrap_functions": _allowlist.FUNCTIONS,
            "autowrap_modules": _AUTOWRAP_MODULES,
        }[key]
        for i, item in enumerate(items):
            if key == "autowrap_modules":
                dotted_path(item, f"{where}[{i}]", top_level=False)
            if item not in pool and not trust:
                raise LoadError(
                    f"{where}[{i}]: {item!r:.80} is not allowed by the safe loader"
                    f"{closest(item, pool)}. Pass trust=True (--trust) only if you trust the file"
                )
        checked[key] = items
    return checked


def _build_tracer(checked: Mapping[str, Any], *, trust: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in checked.items():
        if key == "leaf_modules":
            options[key] = [module_class(path, trust=trust) for path in value]
        elif key == "autowrap_functions":
            options[key] = [function(path, trust=trust) for path in value]
        elif key == "autowrap_modules":
            # the names were checked: allowlisted, or trusted
            options[key] = [importlib.import_module(name) for name in value]
        else:
            options[key] = value
    return options
