"""fxtap: tap any intermediate value of a PyTorch model with torch.fx."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fxtap import render, trace
    from fxtap._protocol import Extractor
    from fxtap.capture import CaptureExtractor
    from fxtap.cost import CostReport, compare
    from fxtap.dataset import extract_dataset, open_features
    from fxtap.errors import (
        DotNotFoundError,
        DroppedModuleError,
        FxtapError,
        InputShapeError,
        InvalidArgumentError,
        LoadError,
        MissingExtraError,
        MistraceError,
        ModelSpecError,
        NodeNotFoundError,
        OutputPathError,
        ResourceError,
        TraceError,
    )
    from fxtap.extractor import ExtractorInfo, FeatureExtractor, create_feature_extractor
    from fxtap.names import NodeInfo, get_graph_node_names, node_table
    from fxtap.render import Rendering
    from fxtap.save import load, save
    from fxtap.trace import NodePathTracer, Traced

from fxtap._version import __version__

__all__ = [
    "CaptureExtractor",
    "CostReport",
    "DotNotFoundError",
    "DroppedModuleError",
    "Extractor",
    "ExtractorInfo",
    "FeatureExtractor",
    "FxtapError",
    "InputShapeError",
    "InvalidArgumentError",
    "LoadError",
    "MissingExtraError",
    "MistraceError",
    "ModelSpecError",
    "NodeInfo",
    "NodeNotFoundError",
    "NodePathTracer",
    "OutputPathError",
    "Rendering",
    "ResourceError",
    "TraceError",
    "Traced",
    "__version__",
    "compare",
    "create_feature_extractor",
    "extract_dataset",
    "get_graph_node_names",
    "load",
    "node_table",
    "open_features",
    "render",
    "save",
    "trace",
]

# NOTE: names load on first use (PEP 562), so that ``fxtap --help`` answers without importing
# torch. ``fxtap.render`` and ``fxtap.trace`` are callable stage packages.
_HOME = {
    "CaptureExtractor": "fxtap.capture",
    "CostReport": "fxtap.cost",
    "compare": "fxtap.cost",
    "Extractor": "fxtap._protocol",
    "ExtractorInfo": "fxtap.extractor",
    "FeatureExtractor": "fxtap.extractor",
    "create_feature_extractor": "fxtap.extractor",
    "NodeInfo": "fxtap.names",
    "get_graph_node_names": "fxtap.names",
    "node_table": "fxtap.names",
    "Rendering": "fxtap.render",
    "load": "fxtap.save",
    "save": "fxtap.save",
    "NodePathTracer": "fxtap.trace",
    "Traced": "fxtap.trace",
    # The dataset stage needs the optional zarr: it loads only when used.
    "extract_dataset": "fxtap.dataset",
    "open_features": "fxtap.dataset",
}
_PACKAGES = {"render", "trace"}


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        value: Any = importlib.import_module(f"fxtap.{name}")
    elif name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    elif name in __all__ and name != "__version__":  # the error classes
        value = getattr(importlib.import_module("fxtap.errors"), name)
    else:
        raise AttributeError(f"module 'fxtap' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The ``fxtap`` package: ``fxtap.save`` stays the function once ``fxtap.save`` is imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        # NOTE: importing a submodule binds it on the package; the function of the same name
        # (fxtap.save, in fxtap/save.py) is what ``fxtap.save`` means.
        if name == "save" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
