"""fxtap: tap any intermediate value of a PyTorch model with torch.fx."""

from fxtap import render, trace  # callable stage packages: fxtap.trace(...), fxtap.render(...)
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
from fxtap.extractor import FeatureExtractor, create_feature_extractor
from fxtap.names import NodeInfo, get_graph_node_names, node_table
from fxtap.render import Rendering
from fxtap.save import load, save
from fxtap.trace import NodePathTracer, Traced

__version__ = "0.1.0"

__all__ = [
    "CaptureExtractor",
    "CostReport",
    "DotNotFoundError",
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
    "compare",
    "create_feature_extractor",
    "get_graph_node_names",
    "load",
    "node_table",
    "render",
    "save",
    "trace",
]
