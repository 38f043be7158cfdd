"""The extractor protocol: what every later stage reads from an extractor, of any kind."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from torch import nn

from fxtap.errors import InvalidArgumentError
from fxtap.trace import TraceOptions

__all__ = [
    "CostJob",
    "DrawRequest",
    "Extractor",
    "Payload",
    "check_extractor",
    "is_extractor",
    "require_graphs",
]


@dataclass(frozen=True)
class DrawRequest:
    """What ``render`` asks an extractor to draw (``Extractor.views``)."""

    modes: tuple[str, ...]
    title: str | None  # None: the model's class name
    trace: TraceOptions = field(default_factory=TraceOptions)
    heat: Mapping[str, float] | None = None
    checks: bool = False

    @property
    def example_inputs(self) -> Any:
        """The inputs whose shapes are drawn (and a capture extractor's probe runs on)."""
        return self.trace.example_inputs


@dataclass(frozen=True)
class CostJob:
    """What ``compare`` asks an extractor to measure (``Extractor.measure``).

    ``options`` are the timing budgets (``min_run_time``, ``rounds``, ``warmup``,
    ``node_repeats``, ``profile_memory``), passed on to ``measure_variants`` as they are.
    """

    model: nn.Module
    mode: str
    inputs: tuple[Any, ...]
    device: Any
    threads: int
    return_nodes: Any
    progress: Any
    environment: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Payload:
    """What ``save`` writes for an extractor: its manifest and files for reading only."""

    manifest: dict[str, Any]
    files: Mapping[str, str] = field(default_factory=dict)


class Extractor(nn.Module, metaclass=abc.ABCMeta):
    """What ``FeatureExtractor`` (pruned graphs) and ``CaptureExtractor`` (a real forward) share.

    ``compare``, ``render``, ``save``, ``node_table``'s command and the dataset job take any
    ``Extractor`` and ask it, through these methods, for what they need; none checks which
    kind it holds. Where a kind cannot do something (a capture extractor has no graphs), its
    method raises ``InvalidArgumentError`` saying what would work.

    Attributes:
        prunes: ``True`` when the extractor runs pruned graphs (it has ``graph_for(mode)``),
            ``False`` when it runs the model itself and captures values on the way.
        outputs: by mode, output key -> resolved node name (``":output"`` for the model's).
        opaque: module paths kept opaque by the automatic fallback.
    """

    prunes = True
    #: properties torch.jit.script leaves alone (it would compile them with the module)
    __jit_unused_properties__ = ["return_nodes", "kept", "graph", "_boxed_call"]  # noqa: RUF012
    if TYPE_CHECKING:
        # NOTE: annotations only for type checkers; torch.jit.script reads class annotations
        # at run time and cannot parse these
        outputs: dict[str, dict[str | int, str]]
        opaque: tuple[str, ...]

    @property
    def return_nodes(self) -> dict[str, dict[str, str | int]]:
        """By mode, resolved node name -> output key (``outputs`` inverted)."""
        return {m: {n: k for k, n in outs.items()} for m, outs in self.outputs.items()}

    @abc.abstractmethod
    def node_names(self, mode: str) -> list[str]:
        """The names of the nodes the extractor runs or can serve in ``mode``."""

    @abc.abstractmethod
    def graph_for(self, mode: str) -> Any:
        """The ``fx.Graph`` run in ``mode``; a capture extractor raises (it has none)."""

    @abc.abstractmethod
    def node_rows(
        self, *, training: bool, example_inputs: Any = None, tracer: str = "auto"
    ) -> list[Any]:
        """The node table (``fxtap.names.NodeInfo`` rows) of what the extractor serves."""

    @abc.abstractmethod
    def views(self, request: DrawRequest) -> tuple[dict[str, Any], list[str]]:
        """One ``View`` per drawable mode, and a message for each mode that cannot be drawn."""

    @abc.abstractmethod
    def measure(self, job: CostJob) -> Any:
        """The ``CostReport`` of the extractor's variants against its model."""

    @abc.abstractmethod
    def payload(self, tensors: Any) -> Payload:
        """The safe archive's manifest; the tensors it names are added to ``tensors``."""

    @abc.abstractmethod
    def traced_code(self, mode: str) -> str:
        """The traced code the extractor runs in ``mode`` (``""`` when it runs the model's)."""

    @abc.abstractmethod
    def fallback(self) -> bool:
        """``True`` when the extractor is the capture path's, taken because tracing failed."""


def is_extractor(value: Any) -> TypeGuard[Extractor]:
    """Whether ``value`` is an fxtap extractor (of any kind)."""
    return isinstance(value, Extractor)


def check_extractor(value: Any, *, argument: str) -> Extractor:
    """``value``, or ``InvalidArgumentError`` naming ``argument`` when it is no extractor."""
    if not isinstance(value, Extractor):
        raise InvalidArgumentError(
            f"{argument} is a {type(value).__name__}, not an fxtap extractor (FeatureExtractor "
            "or CaptureExtractor); pass what fxtap.create_feature_extractor returns"
        )
    return value


def require_graphs(extractor: Any, *, action: str, instead: str) -> None:
    """Raise ``InvalidArgumentError`` unless ``extractor`` runs pruned graphs.

    Args:
        extractor: any extractor.
        action: what was asked, in the interface's words (``"render(extractor)"``).
        instead: what works for a capture extractor, in the interface's words.
    """
    check_extractor(extractor, argument="extractor")
    if not extractor.prunes:
        islands = getattr(extractor, "islands", {}).get("eval", ())
        listed = f" (its traced submodules: {', '.join(map(repr, islands))})" if islands else ""
        raise InvalidArgumentError(
            f"{action} needs an extractor with traced graphs, and this "
            f"{type(extractor).__name__} has none: the root forward of its model cannot be "
            f"traced, so it captures values during a real forward; {instead}{listed}"
        )
