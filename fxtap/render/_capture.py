"""The capture extractor ``render`` draws for a model whose root forward cannot be traced."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from fxtap._query import MODEL_OUTPUT, Request, normalize_return_nodes
from fxtap.capture import CaptureExtractor, build_capture_extractor
from fxtap.errors import TraceError

__all__ = ["capture_of"]


def capture_of(
    model: nn.Module,
    nodes: Sequence[str] | Mapping[str, str] | None,
    error: TraceError,
    tracer_kwargs: Mapping[str, Any] | None,
) -> CaptureExtractor:
    """The capture extractor drawn for a model whose root forward raised ``error`` (``route``
    chose the capture path); it serves ``nodes`` (default: the model's output)."""
    wanted = (
        [Request(MODEL_OUTPUT, MODEL_OUTPUT)]
        if nodes is None
        else normalize_return_nodes(nodes, argument="nodes")
    )
    with warnings.catch_warnings():
        # NOTE: the drawing says what the warning says (islands, untraced calls)
        warnings.simplefilter("ignore", UserWarning)
        return build_capture_extractor(
            model, {"train": wanted, "eval": wanted}, error=error, tracer_kwargs=tracer_kwargs
        )
