"""The capture extractor ``render`` draws for a model whose root forward cannot be traced."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from fxtap._query import MODEL_OUTPUT, Request, normalize_return_nodes
from fxtap.capture import CaptureExtractor, build_capture_extractor
from fxtap.errors import TraceError
from fxtap.trace import is_root_failure

__all__ = ["capture_of"]


def capture_of(
    model: Any,
    nodes: Sequence[str] | Mapping[str, str] | None,
    error: TraceError,
    tracer_kwargs: Mapping[str, Any] | None,
) -> CaptureExtractor | None:
    """The capture extractor drawn for a model whose root forward raised ``error``.

    It serves ``nodes`` (default: the model's output); ``None`` when ``error`` is not a
    failure of the root forward itself (a submodule's own error is the user's to fix).
    """
    if not isinstance(model, nn.Module) or not is_root_failure(error):
        return None
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
