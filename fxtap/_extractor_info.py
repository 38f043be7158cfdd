"""What a ``FeatureExtractor`` serves beside its graphs (shared by the stages that build one)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fxtap._fixed_to_none import FixedToNone
from fxtap._query import OutputKey
from fxtap.trace import Traced

__all__ = ["ExtractorInfo"]


@dataclass(frozen=True)
class ExtractorInfo:
    """What a ``FeatureExtractor`` serves, beside its graphs.

    Attributes:
        outputs: by mode, output key -> resolved node name (``":output"`` for the model's);
            empty when the forward returns what the model returns, not a dict (the tail of
            ``split``, a module built by ``edit``).
        opaque: module paths made opaque leaves by the automatic fallback.
        full: by mode, the unpruned traces; empty unless requested (``keep_traces=True``),
            since a full trace holds every module of the model, pruned or not.
        fixed_to_none: the graphs for calls that leave out root arguments defaulting to
            ``None`` that the graphs read (``fxtap._fixed_to_none``); ``None`` if there are none.
    """

    outputs: Mapping[str, Mapping[OutputKey, str]] = field(default_factory=dict)
    opaque: tuple[str, ...] = ()
    full: dict[str, Traced] = field(default_factory=dict)
    fixed_to_none: FixedToNone | None = None
