"""How a drawing marks what fxtap rewrote: nodes ``fxtap.edit`` inserted, values crossing a cut."""

from __future__ import annotations

from typing import Any

__all__ = ["MARKS", "style_mark"]

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
