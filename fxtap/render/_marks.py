"""How a drawn node is marked: what fxtap rewrote (edits, a cut), and the viewer's SVG classes."""

from __future__ import annotations

from typing import Any

__all__ = ["MARKS", "node_classes", "style_mark"]

#: ``ViewNode.mark`` -> (border colour, the line the node's label gets); Okabe-Ito colours.
MARKS = {
    "edited": ("#CC79A7", "✎ edited"),
    "cut": ("#0072B2", "✂ cut here"),
    "boundary": ("#0072B2", "✂ crosses the cut"),
}


def style_mark(node: Any, attrs: dict[str, str], rows: list[str]) -> None:
    """Draw ``node``'s mark, if it has one: a thick border and a line saying what it is."""
    if node.mark not in MARKS:
        return
    colour, text = MARKS[node.mark]
    attrs.update(penwidth="3", color=colour)
    rows.append(f'<font color="{colour}" point-size="8"><b>{text}</b></font>')


def node_classes(node: Any) -> str:
    """SVG classes the HTML viewer filters on."""
    flags = [
        ("pruned", node.pruned),
        ("requested", node.key is not None),
        ("only", node.only is not None),
        ("folded", node.kind in ("module", "pruned")),
        ("untraced", bool(node.untraced)),
        ("skipped", node.skipped),
        (node.mark, bool(node.mark)),
    ]
    return " ".join(["kept"] * (not node.pruned) + [c for c, on in flags if on])
