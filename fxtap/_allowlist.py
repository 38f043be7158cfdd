"""What the safe loader may name, read from ``_allowlist.json`` (generated, checked in).

``python tests/test_allowlist.py`` regenerates the JSON from what fxtap's saver writes for the
torchvision zoo, timm's smaller models (when installed) and the test suite's fixtures;
``tests/test_allowlist.py`` fails when the saver writes something it lacks.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["ATTRIBUTES", "FUNCTIONS", "METHODS", "MODULES", "PATH"]

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
