"""Fit a drawing to a screen: wrap long chains into columns, shorten labels."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import networkx as nx

from fxtap.render._fold import members
from fxtap.render._view import View

__all__ = ["MAX_COLUMNS", "MIN_WRAP_RANKS", "WRAP_RATIO", "column_stubs", "shorten", "wrap"]

#: Rough size of a drawn node in points (dot's default layout), to plan wrapping.
_RANK_HEIGHT, _NODE_WIDTH = 52.0, 150.0
#: Estimated height / width above which a drawing's long chain is wrapped into columns.
WRAP_RATIO = 2.5
MAX_COLUMNS = 12
#: Drawings with fewer ranks than this are never wrapped (they fit a screen's height).
MIN_WRAP_RANKS = 24


def wrap(view: View) -> View:
    """Split a long chain into side-by-side columns so the drawing is not a thin strip.

    Ranks are longest-path depths (networkx) over the edges that go forward in graph order
    (a collapsed module can close a cycle; dot reverses such edges too). When the estimated
    height is more than
    ``WRAP_RATIO`` times the width, the module holding most nodes has its children dealt
    into columns by rank; ``to_dot`` draws each column as an invisible cluster and lets the
    edges between columns leave the ranking alone (``constraint=false``).
    """
    order = {k: i for i, k in enumerate(view.nodes)}
    g = nx.DiGraph()
    g.add_nodes_from(view.nodes)
    g.add_edges_from(
        (a, b) for a, b in view.edges if order[a] < order[b] and view.nodes[a].kind != "ref"
    )
    rank: dict[str, int] = {}
    for k in nx.topological_sort(g):
        rank[k] = max((rank[p] + 1 for p in g.predecessors(k)), default=0)
    for a, b in view.edges:
        if view.nodes[a].kind == "ref":  # a reference sits just above its user, not at the top
            rank[a] = max(rank[b] - 1, 0)
    if not rank:
        return view
    ranks = max(rank.values()) + 1
    per_rank = sorted(Counter(rank.values()).values())
    width = per_rank[int(len(per_rank) * 0.75)] if per_rank else 1
    ratio = ranks * _RANK_HEIGHT / (width * _NODE_WIDTH)
    if ratio <= WRAP_RATIO or ranks < MIN_WRAP_RANKS:
        return view
    columns = min(MAX_COLUMNS, math.ceil(math.sqrt(ratio / WRAP_RATIO * 1.6)))
    chain = _chain(view)
    # Pick the module whose columns give the shortest drawing: its chain split into columns
    # (no column shorter than its tallest child), plus the ranks it does not cover.
    best: tuple[float, str, list[tuple[int, int, list[str]]]] | None = None
    for at in chain:
        items = _items(view, at, rank)
        if len(items) < 2:
            continue
        widest = max(hi - lo + 1 for lo, hi, _ in items)
        covered = max(hi for _, hi, _ in items) - items[0][0] + 1
        height = max(widest, covered / min(columns, len(items))) + ranks - covered
        if best is None or height < best[0]:
            best = (height, at, items)
    if best is None:
        return view
    _, at, items = best
    low, high = items[0][0], max(hi for _, hi, _ in items)
    target = (high - low + 1) / min(columns, len(items))
    placed: dict[str, int] = {}
    column, start = 0, low
    for lo, hi, group in items:
        if hi - start + 1 > target * 1.15 and lo > start and column < columns - 1:
            column, start = column + 1, lo
        for m in group:
            placed[m] = column
    if column == 0:
        return view
    return dataclasses.replace(view, columns=placed, wrap_at=at)


def _chain(view: View) -> list[str]:
    """Candidate modules to wrap: the root, then always into the child holding most nodes."""
    inside = members(view)
    chain, at = [""], ""
    while True:
        kids = [p for p in inside if p and p.rpartition(".")[0] == at and p != at]
        big = max(kids, key=lambda p: len(inside[p]), default=None)
        if big is None or big in view.folds:
            return chain
        chain.append(big)
        at = big


def column_stubs(
    view: View,
) -> tuple[dict[int, list[tuple[str, str]]], list[tuple[str, str, tuple[str, str]]]]:
    """The stubs standing for edges between wrapped columns, and the edges to draw.

    An edge between two columns lets dot's crossing minimisation reorder the columns
    (GoogLeNet's parts came out 1, 3, 2), so it is drawn as two stubs: ``→ name`` under its
    tail, in the tail's column, and ``↪ name`` over its head, in the head's.

    Returns:
        column -> ``(stub id, label)``, and ``(tail, head, edge of the view)`` per edge to draw:
        the view's edges within a column, and the two halves of each edge between columns.
    """
    stubs: dict[int, list[tuple[str, str]]] = {}
    edges: list[tuple[str, str, tuple[str, str]]] = []
    for a, b in view.edges:
        ca, cb = view.columns.get(a), view.columns.get(b)
        if ca is not None and cb is not None and ca != cb:
            out, into = f"fxtap:to:{a}>{b}", f"fxtap:from:{a}>{b}"
            stubs.setdefault(ca, []).append((out, f"→ {view.nodes[b].short or b}"))
            stubs.setdefault(cb, []).append((into, f"↪ {view.nodes[a].short or a}"))
            edges += [(a, out, (a, b)), (into, b, (a, b))]
        else:
            edges.append((a, b, (a, b)))
    return stubs, edges


def _items(view: View, at: str, rank: dict[str, int]) -> list[tuple[int, int, list[str]]]:
    """The direct nodes and child modules of ``at``: (first rank, last rank, nodes), in order."""
    groups: dict[str, list[str]] = {}
    depth = len(at.split(".")) if at else 0
    for k, node in view.nodes.items():
        if node.module == at:
            groups[k] = [k]
        elif not at or node.module.startswith(at + "."):
            child = ".".join(node.module.split(".")[: depth + 1])
            groups.setdefault("module:" + child, []).append(k)
    items = [(min(rank[m] for m in g), max(rank[m] for m in g), g) for g in groups.values()]
    return sorted(items, key=lambda item: (item[0], item[1]))


def shorten(view: View) -> View:
    """Label each node with the shortest suffix of its dotted name that is unique in view."""
    named = [n for n in view.nodes.values() if n.kind in ("op", "module")]
    seen: dict[tuple[str, ...], int] = {}
    parts = {n.id: tuple(n.id.split(".")) for n in named}
    for p in parts.values():
        for i in range(len(p)):
            seen[p[i:]] = seen.get(p[i:], 0) + 1
    nodes = dict(view.nodes)
    for n in named:
        p = parts[n.id]
        k = next((i for i in range(len(p) - 1, -1, -1) if seen[p[i:]] == 1), 0)
        nodes[n.id] = dataclasses.replace(n, short=".".join(p[k:]))
    return dataclasses.replace(view, nodes=nodes)
