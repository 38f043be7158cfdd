"""fxtap: tap any intermediate value of a PyTorch model with torch.fx."""

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
from fxtap.save import load, save
from fxtap.trace import NodePathTracer, Traced, trace

__version__ = "0.1.0"

__all__ = [
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
    "ResourceError",
    "TraceError",
    "Traced",
    "create_feature_extractor",
    "get_graph_node_names",
    "load",
    "node_table",
    "save",
    "trace",
]
