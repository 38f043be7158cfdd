"""What the safe loader may name, read from ``_allowlist.json`` (generated, checked in).

``python tests/test_allowlist.py`` regenerates the JSON from what fxtap's saver writes for the
torchvision zoo, timm's smaller models (when installed), the test suite's fixtures and the
export path's zoo (ATen ops and output types), plus the ATen ops tagged ``torch.Tag.core``;
``tests/test_allowlist.py`` fails when the saver writes something it lacks.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

__all__ = [
    "ATTRIBUTES",
    "ENUMS",
    "FUNCTIONS",
    "METHODS",
    "MODULES",
    "OBJECTS",
    "OPS",
    "OUTPUT_TYPES",
    "PATH",
    "TRANSFORMERS",
    "resolve",
]

PATH = Path(__file__).with_name("_allowlist.json")
_DATA = json.loads(PATH.read_text(encoding="utf-8"))

#: ``module:name`` of every function a graph may call.
FUNCTIONS: frozenset[str] = frozenset(_DATA["functions"])
#: Tensor methods a graph may call.
METHODS: frozenset[str] = frozenset(_DATA["methods"])
#: Attribute names ``getattr`` may read.
ATTRIBUTES: frozenset[str] = frozenset(_DATA["attributes"])
#: ``module:qualname`` of each module class -> (configuration keys every instance holds, keys
#: some instances hold, parameter and buffer names).
MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    cls: (tuple(spec["config"]), tuple(spec["optional"]), tuple(spec["tensors"]))
    for cls, spec in _DATA["modules"].items()
}

#: ``module:qualname`` of each plain (non-module) class a configuration may hold -> (attribute
#: names every instance holds, names some instances hold).
OBJECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    cls: (tuple(spec["config"]), tuple(spec["optional"]))
    for cls, spec in _DATA.get("objects", {}).items()
}
#: ``module:qualname`` of each Hugging Face model class a file may rebuild from its config.
TRANSFORMERS: frozenset[str] = frozenset(_DATA.get("transformers", ()))
#: ``module:qualname`` of each enum whose members a configuration may hold.
ENUMS: frozenset[str] = frozenset(_DATA.get("enums", ()))
#: ``ns::name.overload`` of every operator an exported graph may call -> its three name parts.
OPS: dict[str, tuple[str, str, str]] = {}
for _key in _DATA.get("ops", ()):
    _namespace, _, _rest = _key.partition("::")
    _name, _, _overload = _rest.partition(".")
    OPS[_key] = (_namespace, _name, _overload)
#: pytree serialized type name of each output structure an extractor may rebuild ->
#: ``module:qualname`` of its class.
OUTPUT_TYPES: dict[str, str] = dict(_DATA.get("output_types", {}))


def resolve(module_name: str, qualname: str) -> Any:
    """The object at ``module_name:qualname``, or ``None``.

    The saver asks it whether a name gives back a function; the loader asks it only for names
    that already matched the allowlist exactly, so no name read from a file is walked.
    """
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
