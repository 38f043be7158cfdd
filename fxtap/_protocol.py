"""The extractor base class: what every stage reads from an extractor, pruned or captured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from fxtap.errors import InvalidArgumentError

__all__ = ["Extractor", "require_graphs"]


class Extractor(nn.Module):
    """What ``FeatureExtractor`` (pruned graphs) and ``CaptureExtractor`` (a real forward) share.

    ``compare``, ``render``, ``save`` and the command line take any ``Extractor``; what needs
    graphs of the whole model checks ``prunes`` with ``require_graphs``.

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

    def node_names(self, mode: str) -> list[str]:
        """The names of the nodes the extractor runs or can serve in ``mode``."""
        raise NotImplementedError


def require_graphs(extractor: Any, *, action: str, instead: str) -> None:
    """Raise ``InvalidArgumentError`` unless ``extractor`` runs pruned graphs.

    Args:
        extractor: any extractor.
        action: what was asked, in the interface's words (``"render(extractor)"``).
        instead: what works for a capture extractor, in the interface's words.
    """
    if not isinstance(extractor, Extractor):
        raise InvalidArgumentError(
            f"extractor is a {type(extractor).__name__}, not an fxtap extractor (FeatureExtractor "
            "or CaptureExtractor); pass what "
            "fxtap.create_feature_extractor returns"
        )
    if not extractor.prunes:
        islands = getattr(extractor, "islands", {}).get("eval", ())
        listed = f" (its traced submodules: {', '.join(map(repr, islands))})" if islands else ""
        raise InvalidArgumentError(
            f"{action} needs an extractor with traced graphs, and this "
            f"{type(extractor).__name__} has none: the root forward of its model cannot be "
            f"traced, so it captures values during a real forward; {instead}{listed}"
        )
