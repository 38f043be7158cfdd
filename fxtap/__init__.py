"""fxtap: tap any intermediate value of a PyTorch model with torch.fx."""

from fxtap import render, trace  # callable stage packages: fxtap.trace(...), fxtap.render(...)
from fxtap._protocol import Extractor
from fxtap._version import __version__
from fxtap.capture import CaptureExtractor
from fxtap.cost import CostReport, compare
from fxtap.errors import (
    DotNotFoundError,
    FxtapError,
    InputShapeError,
    InvalidArgumentError,
    LoadError,
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


def __getattr__(name: str) -> object:
    # NOTE: the dataset stage needs the optional zarr; import it only when it is used.
    if name in ("extract_dataset", "open_features"):
        from fxtap import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'fxtap' has no attribute {name!r}")


__all__ = [
    "CaptureExtractor",
    "CostReport",
    "DotNotFoundError",
    "Extractor",
    "ExtractorInfo",
    "FeatureExtractor",
    "FxtapError",
    "InputShapeError",
    "InvalidArgumentError",
    "LoadError",
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
