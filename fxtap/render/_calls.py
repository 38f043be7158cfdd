"""How a capture extractor's module calls, islands and skipped part are drawn."""

from __future__ import annotations

import html

from fxtap.render._view import View, ViewNode

__all__ = ["ISLAND_COLOUR", "SKIPPED_TEXT", "UNTRACED_COLOUR", "call_legend", "style_call"]

#: Frame of a traced island's cluster (Okabe-Ito blue).
ISLAND_COLOUR = "#0072B2"
#: Hatched grey boxes: module calls that run eagerly, outside any traced graph.
UNTRACED_COLOUR = "#CCCCCC"
SKIPPED_TEXT = "not run: after the early exit"


def style_call(node: ViewNode, attrs: dict[str, str], rows: list[str]) -> None:
    """Add the marks of an untraced call or a skipped node to a drawn node's attributes."""
    if node.untraced:
        attrs.update(shape="box", style="filled,diagonals", fillcolor=UNTRACED_COLOUR)
        rows.append(_small(f"untraced: {node.untraced}"))
    if node.skipped:
        rows.append(_small(SKIPPED_TEXT))


def call_legend(view: View) -> list[tuple[int | None, str, str, str]]:
    """Legend rows (count, text, style, colour) for a capture extractor's drawing."""
    c = view.counts
    return [
        (c.get("untraced"), "untraced module call (runs eagerly)", "hatched", UNTRACED_COLOUR),
        (len(view.islands), "traced island (its graph)", "blue frame", ISLAND_COLOUR),
        (c.get("skipped"), SKIPPED_TEXT, "dashed grey", "#999999"),
    ]


def _small(text: str) -> str:
    return f'<font point-size="8">{html.escape(text, quote=True)}</font>'
