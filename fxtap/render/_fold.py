"""Shrink a drawn graph: fold repeats and pruned ops, collapse modules, cut edges."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from fxtap.render._view import View, ViewNode, prefixes, unique

__all__ = ["collapse", "cut_long_edges", "fold_pruned", "fold_repeats", "members"]

#: A source keeps at most this many drawn edges when it has more users (a hub).
HUB_KEEP = 2
#: Users a source may have before it counts as a hub.
HUB_USERS = 4
#: Edges spanning more drawn nodes than this (in graph order) become references.
LONG_SPAN = 80
_NUMBERED = re.compile(r"(\D*?)_?(\d+)")


def fold_pruned(view: View) -> View:
    """Replace the pruned nodes of each module by one ``N pruned ops`` node."""
    groups: dict[str, list[str]] = {}
    for node in view.nodes.values():
        if node.pruned and node.kind == "op" and not node.protected:
            groups.setdefault(node.module, []).append(node.id)
    mapping: dict[str, str] = {}
    nodes: dict[str, ViewNode] = {}
    for node in view.nodes.values():
        members = groups.get(node.module) if node.pruned and not node.protected else None
        if not members:
            nodes[node.id] = node
            continue
        gid = unique(f"{node.module}.pruned" if node.module else "pruned", view.nodes)
        gid = mapping.setdefault(members[0], gid)
        mapping[node.id] = gid
        if node.id == members[0]:
            nodes[gid] = ViewNode(
                id=gid,
                short=f"{len(members)} pruned ops",
                op="pruned",
                target=", ".join(members[:6]) + (" …" if len(members) > 6 else ""),
                module=node.module,
                kind="pruned",
                pruned=True,
                params=sum(view.nodes[m].params for m in members),
                count=len(members),
            )
    return _remap(view, nodes, mapping)


def fold_repeats(view: View) -> View:
    """Fold runs of identical numbered sibling modules (``blocks.0`` … ``blocks.11``) into one.

    The first module of a run is drawn and labelled ``×N``; the others are hidden and their
    edges move to the matching node of the first. A module holding a requested, mode-only or
    marked node (a split's cut, an edit) breaks a run. A run whose members hand values on to
    other consumers than the next member's and the last member's (a U-Net's encoders, each
    feeding its own decoder) does not fold: drawn as one, the skips would seem to leave one
    module.
    """
    inside = members(view)
    children = view.children()
    mapping, folds, member_of = _runs(view, inside, children)
    if not mapping:
        return view
    resolved = {k: _resolve(mapping, k) for k in view.nodes}
    nodes = {k: v for k, v in view.nodes.items() if resolved[k] == k}
    edges = {
        (_resolve(mapping, a), _resolve(mapping, b)): None
        for a, b in view.edges
        if not _crosses(mapping, member_of, a, b)
    }
    for k in view.nodes:
        if k not in nodes:
            rep = nodes[resolved[k]]
            nodes[rep.id] = dataclasses.replace(
                rep, mode_dependent=rep.mode_dependent + view.nodes[k].mode_dependent
            )
    return dataclasses.replace(
        view,
        nodes=nodes,
        edges=[e for e in edges if e[0] != e[1]],
        folds={**view.folds, **folds},
        where=_moved(view, {k: resolved[k] for k in view.nodes if k not in nodes}),
    )


def _runs(
    view: View, inside: Mapping[str, Any], children: Mapping[str, list[str]]
) -> tuple[dict[str, str], dict[str, tuple[int, str, bool]], dict[str, dict[str, str]]]:
    """Runs of identical siblings: hidden node -> node of the first, folds, fold memberships."""
    mapping: dict[str, str] = {}
    folds: dict[str, tuple[int, str, bool]] = {}
    member_of: dict[str, dict[str, str]] = {}
    hidden: set[str] = set()
    for parent, kids in children.items():
        if any(p in hidden for p in prefixes(parent)):
            continue  # inside a module that an outer fold hides
        run: list[str] = []
        first_sig: tuple[object, ...] | None = None
        exact: set[object] = set()
        for child in [*kids, None]:
            sig = _signature(view, child, inside[child]) if child is not None else None
            if child is not None and run and sig is not None and sig[:-1] == first_sig:
                run.append(child)
                exact.add(sig[-1])
                continue
            if len(run) > 1 and _one_way_out(view, run, inside):
                first = run[0]
                folds[first] = (len(run), run[-1], len(exact) == 1)
                hidden.update(run[1:])
                for member in run:
                    for a, b in zip(inside[member], inside[first]):
                        mapping[a] = b
                        member_of.setdefault(a, {})[first] = member
            run = [child] if sig is not None and child is not None else []
            first_sig = sig[:-1] if sig is not None else None
            exact = {sig[-1]} if sig is not None else set()
    return mapping, folds, member_of


def _one_way_out(view: View, run: list[str], inside: Mapping[str, list[str]]) -> bool:
    """Whether every member of ``run`` sends values out of the run only where its last
    member does (a stack of blocks, a dense block's growing concat) and so may fold."""
    within = {n for member in run for n in inside[member]}
    out: dict[str, set[str]] = {member: set() for member in run}
    owner = {n: member for member in run for n in inside[member]}
    for a, b in view.edges:
        if a in owner and b not in within:
            out[owner[a]].add(b)
    return all(out[member] <= out[run[-1]] for member in run[:-1])


def _resolve(mapping: Mapping[str, str], k: str) -> str:
    while mapping.get(k, k) != k:
        k = mapping[k]
    return k


def _crosses(
    mapping: Mapping[str, str], member_of: Mapping[str, Mapping[str, str]], a: str, b: str
) -> bool:
    """An edge from one member of a fold to the next would loop back onto the first.

    Checked at each step, as a fold inside a hidden module maps through an outer fold.
    """
    while True:
        ma, mb = member_of.get(a, {}), member_of.get(b, {})
        if any(ma[f] != mb[f] for f in ma.keys() & mb.keys()):
            return True
        na, nb = mapping.get(a, a), mapping.get(b, b)
        if (na, nb) == (a, b):
            return False
        a, b = na, nb


def collapse(view: View, *, depth: int | None, max_nodes: int | None) -> View:
    """Draw modules deeper than ``depth`` as one box each; collapse more to fit ``max_nodes``.

    Modules holding a requested or mode-only node are never collapsed (their unprotected
    submodules are). To fit ``max_nodes``, modules whose nodes are all pruned go first, then
    modules by size: every module of at most ``s`` drawn nodes becomes a box, for the smallest
    ``s`` that fits, so many small blocks collapse before one big stage does.
    """
    protected = {p for n in view.nodes.values() if n.protected for p in prefixes(n.module)}
    protected.add("")
    deepest = max((_depth(n.module) for n in view.nodes.values()), default=0)
    level = deepest + 1 if depth is None else depth + 1
    roots = _collapse_roots(view, level, protected)
    if max_nodes is not None and _count(view, roots) > max_nodes:
        roots = _by_size(view, roots, protected, max_nodes)
    if not any(roots.values()):
        return view
    mapping: dict[str, str] = {}
    nodes: dict[str, ViewNode] = {}
    taken = set(view.nodes)
    made: dict[str, ViewNode] = {}
    for node in view.nodes.values():
        root = roots[node.id]
        if root is None:
            nodes[node.id] = node
            continue
        box = made.get(root)
        if box is None:
            gid = root if root not in taken else unique(root + ".module", taken)
            taken.add(gid)
            parent = root.rpartition(".")[0]
            box = made[root] = nodes[gid] = ViewNode(
                id=gid,
                short=root[len(parent) + 1 :] if parent else root,
                op="module",
                target=root,
                module=parent,
                kind="module",
                module_type=view.module_types.get(root, ""),
                pruned=True,
                count=0,
            )
        mapping[node.id] = box.id
        box.count += node.count
        box.params += node.params
        box.mode_dependent += node.mode_dependent
        box.pruned = box.pruned and node.pruned
        box.opaque = box.opaque or node.opaque
        if node.heat is not None:
            box.heat = max(box.heat or 0.0, node.heat)
    return _remap(view, nodes, mapping)


def cut_long_edges(view: View) -> View:
    """Replace hub and long edges by small reference nodes next to their users.

    Graphviz's ``dot`` spends its time routing long edges (a mask feeding every layer), not
    placing nodes. A source with more than ``HUB_USERS`` users keeps edges to its
    ``HUB_KEEP`` nearest ones; any edge spanning more than ``LONG_SPAN`` nodes is cut too.
    """
    order = {k: i for i, k in enumerate(view.nodes)}
    users: dict[str, list[str]] = {}
    for a, b in view.edges:
        users.setdefault(a, []).append(b)
    cut: set[tuple[str, str]] = set()
    for a, targets in users.items():
        targets.sort(key=order.__getitem__)
        for i, b in enumerate(targets):
            hub = len(targets) > HUB_USERS and i >= HUB_KEEP
            if hub or order[b] - order[a] > LONG_SPAN:
                cut.add((a, b))
    if not cut:
        return view
    nodes = dict(view.nodes)
    edges: list[tuple[str, str]] = []
    # One reference per user: a concat of 40 earlier features gets one node, not 40.
    into: dict[str, list[str]] = {}
    for a, b in view.edges:
        if (a, b) in cut:
            into.setdefault(b, []).append(a)
        else:
            edges.append((a, b))
    refs: dict[str, int] = {}
    for b, sources in into.items():
        a = sources[0]
        if len(sources) == 1:
            refs[a] = refs.get(a, 0) + 1
            rid = unique(f"{a}@ref{refs[a]}", nodes)
            short = a
        else:
            rid = unique(f"{b}@refs", nodes)
            short = ", ".join(sources[:2]) + (f" +{len(sources) - 2}" if len(sources) > 2 else "")
        nodes[rid] = ViewNode(
            id=rid,
            short=short,
            op="ref",
            target="\n".join(sources),
            module=view.nodes[b].module,
            kind="ref",
            pruned=all(view.nodes[x].pruned for x in sources),
            count=len(sources),
        )
        edges.append((rid, b))
    return dataclasses.replace(view, nodes=nodes, edges=edges)


def _remap(view: View, nodes: dict[str, ViewNode], mapping: Mapping[str, str]) -> View:
    edges: dict[tuple[str, str], None] = {}
    for a, b in view.edges:
        a, b = mapping.get(a, a), mapping.get(b, b)
        if a != b:
            edges.setdefault((a, b), None)
    return dataclasses.replace(view, nodes=nodes, edges=list(edges), where=_moved(view, mapping))


def _moved(view: View, mapping: Mapping[str, str]) -> dict[str, str]:
    """``view.where`` after the nodes in ``mapping`` moved into other drawn nodes."""
    where = {k: mapping.get(v, v) for k, v in view.where.items()}
    where.update((k, v) for k, v in mapping.items() if k != v)
    return where


def _by_size(
    view: View, roots: dict[str, str | None], protected: set[str], max_nodes: int
) -> dict[str, str | None]:
    """Collapse pruned modules, then every module up to the smallest size that fits."""
    inside = members(view)
    size = {p: len({roots[m] or m for m in ms}) for p, ms in inside.items() if p not in protected}
    pruned = {p for p in size if all(view.nodes[m].pruned for m in inside[p])}

    def pick(limit: int, pruned_limit: int) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for node in view.nodes.values():
            root = roots[node.id]
            for path in prefixes(node.module)[1:]:
                s = size.get(path)
                if s is not None and s <= (pruned_limit if path in pruned else limit):
                    root = path if root is None or len(path) < len(root) else root
                    break
            out[node.id] = root
        return out

    sizes = sorted(set(size.values()))
    if not sizes:
        return roots
    big = sizes[-1]

    def smallest(fits: Callable[[int], bool]) -> int | None:
        if not fits(sizes[-1]):
            return None
        lo, hi = 0, len(sizes) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(sizes[mid]) else (mid + 1, hi)
        return sizes[lo]

    if pruned:
        s = smallest(lambda s: _count(view, pick(0, s)) <= max_nodes)
        if s is not None:
            return pick(0, s)
    s = smallest(lambda s: _count(view, pick(s, big)) <= max_nodes)
    return pick(big if s is None else s, big)


def _collapse_roots(view: View, level: int, protected: set[str]) -> dict[str, str | None]:
    """For each node, the module box it disappears into when collapsing from ``level``."""
    roots: dict[str, str | None] = {}
    for node in view.nodes.values():
        root = None
        parts = node.module.split(".") if node.module else []
        for n in range(max(level, 1), len(parts) + 1):
            path = ".".join(parts[:n])
            if path not in protected:
                root = path
                break
        roots[node.id] = root
    return roots


def _count(view: View, roots: Mapping[str, str | None]) -> int:
    boxes = {r for r in roots.values() if r is not None}
    return sum(1 for r in roots.values() if r is None) + len(boxes)


def members(view: View) -> dict[str, list[str]]:
    inside: dict[str, list[str]] = {}
    for node in view.nodes.values():
        for path in prefixes(node.module):
            if path:
                inside.setdefault(path, []).append(node.id)
    return inside


def _signature(view: View, path: str, members: list[str]) -> tuple[object, ...] | None:
    """What must match for sibling modules to fold; ``None`` for modules that never fold.

    Only numbered siblings fold: ``blocks.3`` or ``encoder_layer_3`` (same stem), with the
    same ops and edges; the last item (shapes, parameter counts) may differ.
    """
    numbered = _NUMBERED.fullmatch(path.rpartition(".")[2])
    if numbered is None:
        return None
    nodes = [view.nodes[m] for m in members]
    if any(n.protected or n.opaque or n.kind != "op" for n in nodes):
        return None
    cut = len(path) + 1
    index = {m: i for i, m in enumerate(members)}
    rel = path + "."
    rows = tuple(
        (n.id[cut:], n.op, _relative(n.target, rel), n.module[cut:], n.pruned) for n in nodes
    )
    inner = tuple(sorted((index[a], index[b]) for a, b in view.edges if a in index and b in index))
    # The last item tells identical runs from similar ones (a dense block's growing widths).
    sizes = tuple((n.shape, n.params) for n in nodes)
    return (numbered.group(1), view.module_types.get(path), rows, inner, sizes)


def _relative(target: str, prefix: str) -> str:
    return target[len(prefix) :] if target.startswith(prefix) else target


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0
