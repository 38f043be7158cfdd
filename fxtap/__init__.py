"""fxtap: tap any intermediate value of a PyTorch model with torch.fx."""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fxtap import edits
    from fxtap._protocol import Extractor
    from fxtap.capture import CaptureExtractor
    from fxtap.cost import CostReport, NodeCost, compare
    from fxtap.dataset import Features, JobResult, extract_dataset, open_features
    from fxtap.edit import edit
    from fxtap.errors import (
        CutError,
        DotNotFoundError,
        DroppedModuleError,
        FxtapError,
        InputShapeError,
        InputTypeError,
        InvalidArgumentError,
        LoadError,
        MissingExtraError,
        MistraceError,
        NodeNotFoundError,
        NotReachedError,
        OutputPathError,
        ResourceError,
        TraceError,
        UnsafeOutputError,
    )
    from fxtap.extractor import FeatureExtractor, create_feature_extractor
    from fxtap.names import NodeInfo, get_graph_node_names, node_table
    from fxtap.render import Drawing, Rendering, render
    from fxtap.save import load, save
    from fxtap.split import Split, split
    from fxtap.trace import NodePathTracer, Traced, trace

from fxtap._version import __version__

__all__ = [
    "CaptureExtractor",
    "CompatError",
    "CostReport",
    "CutError",
    "DotNotFoundError",
    "Drawing",
    "DroppedModuleError",
    "Extractor",
    "FeatureExtractor",
    "Features",
    "FxtapError",
    "InputShapeError",
    "InputTypeError",
    "InvalidArgumentError",
    "JobResult",
    "LoadError",
    "MissingExtraError",
    "MistraceError",
    "NodeCost",
    "NodeInfo",
    "NodeNotFoundError",
    "NodePathTracer",
    "NotReachedError",
    "OutputPathError",
    "Rendering",
    "ResourceError",
    "Split",
    "TraceError",
    "Traced",
    "UnsafeOutputError",
    "__version__",
    "compare",
    "create_feature_extractor",
    "edit",
    "edits",
    "extract_dataset",
    "get_graph_node_names",
    "load",
    "node_table",
    "open_features",
    "render",
    "save",
    "split",
    "trace",
]

# NOTE: names load on first use (PEP 562), so that ``fxtap --help`` answers without importing
# torch. Each stage name is a function; see ``_Package`` for the stages that are packages.
_HOME = {
    "CaptureExtractor": "fxtap.capture",
    "CompatError": "fxtap._compat",
    "CostReport": "fxtap.cost",
    "NodeCost": "fxtap.cost",
    "Drawing": "fxtap.render",
    "render": "fxtap.render",
    "compare": "fxtap.cost",
    "Extractor": "fxtap._protocol",
    "FeatureExtractor": "fxtap.extractor",
    "create_feature_extractor": "fxtap.extractor",
    "NodeInfo": "fxtap.names",
    "get_graph_node_names": "fxtap.names",
    "node_table": "fxtap.names",
    "Rendering": "fxtap.render",
    "load": "fxtap.save",
    "save": "fxtap.save",
    "Split": "fxtap.split",
    "split": "fxtap.split",
    "edit": "fxtap.edit",
    "NodePathTracer": "fxtap.trace",
    "Traced": "fxtap.trace",
    "trace": "fxtap.trace",
    # The dataset stage needs the optional zarr: it loads only when used.
    "extract_dataset": "fxtap.dataset",
    "Features": "fxtap.dataset",
    "JobResult": "fxtap.dataset",
    "open_features": "fxtap.dataset",
}
_PACKAGES = {"edits"}
#: Modules named like the function they hold: the name on the package is the function.
_FUNCTION_MODULES = {"edit", "render", "save", "split", "trace"}


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
    """The ``fxtap`` package: ``fxtap.trace``, ``fxtap.render``, ``fxtap.save``, ``fxtap.split``
    and ``fxtap.edit`` stay functions once their modules are imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        # NOTE: importing a submodule binds it on the package; the function of the same name
        # (fxtap.save, in fxtap/save/) is what ``fxtap.save`` means. Type checkers read the
        # functions from the imports under TYPE_CHECKING above.
        if name in _FUNCTION_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
