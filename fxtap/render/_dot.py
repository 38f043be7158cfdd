"""Write a drawn graph as Graphviz DOT text with HTML-like labels."""

from __future__ import annotations

import html
from collections.abc import Sequence

from fxtap.render._calls import ISLAND_COLOUR, call_legend, style_call
from fxtap.render._marks import node_classes, style_mark
from fxtap.render._view import View, ViewNode, prefixes
from fxtap.render._wrap import column_stubs

__all__ = ["FAST_SETTINGS", "PALETTE", "to_dot"]

#: Okabe-Ito colours (safe for colour-blind readers) by op family; fills use them translucent.
PALETTE = {
    "input/output": "#999999",
    "module": "#56B4E9",
    "function": "#E69F00",
    "operator": "#F0E442",
    "method": "#009E73",
    "attribute": "#CC79A7",
    "opaque": "#0072B2",
}
ONLY_COLOUR = "#D55E00"
#: Marks ops that compute differently per mode (dropout, batch norm, stochastic depth).
MODE_COLOUR = "#882255"
PRUNED_COLOUR = "#999999"
#: Graph attributes that trade layout quality for speed, used when ``dot`` runs out of time.
FAST_SETTINGS = {
    # Network simplex iterations, capped at half the node count, are where dot spends its
    # minutes on long models; line edges skip spline routing.
    "nslimit": "0.5",
    "nslimit1": "0.5",
    "mclimit": "0.5",
    "searchsize": "10",
    "splines": "line",
}
# Viridis stops from low to high cost: a sequential scale readable without colour vision.
_HEAT = ("#FDE725", "#5EC962", "#21918C", "#3B528B", "#440154")
_FILL_ALPHA = "66"
#: A small italic note standing for an edge's other end in another column.
_STUB = {"shape": "plain", "style": "solid", "fontsize": "8", "fontcolor": "#555", "class": "stub"}


def to_dot(views: Sequence[View], *, name: str, settings: dict[str, str] | None = None) -> str:
    """DOT text drawing ``views``: one view at the top level, several side by side.

    Element ids are node names; with several views they get a ``mode:`` prefix.

    >>> print(to_dot([], name="empty"))  # doctest: +ELLIPSIS
    digraph "empty" {
    ...
    }
    """
    lines = [f"digraph {_q(name)} {{"]
    attrs = {
        "rankdir": "TB",
        "newrank": "true",
        "nodesep": "0.2",
        "ranksep": "0.3",
        "fontname": "Helvetica",
        "fontsize": "11",
        "labelloc": "t",
        "outputorder": "edgesfirst",
        **(settings or {}),
    }
    lines += [f"  {k}={_q(v)};" for k, v in attrs.items()]
    lines.append(
        '  node [fontname="Helvetica", fontsize=10, shape=box, style="rounded,filled", '
        'margin="0.08,0.03", height=0.3, color="#333333"];'
    )
    lines.append('  edge [arrowsize=0.6, color="#555555"];')
    if len(views) == 1:
        lines.append(f"  label=<{_title(views[0])}>;")
        lines += _body(views[0], "", "  ")
    else:
        for view in views:
            lines.append(f"  subgraph {_q('cluster_' + view.mode)} {{")
            lines.append(
                f'    id={_q(view.mode + ":graph")}; label=<{_title(view)}>; color="#777777";'
            )
            lines += _body(view, view.mode + ":", "    ")
            lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _body(view: View, prefix: str, indent: str) -> list[str]:
    by_module: dict[str, list[ViewNode]] = {}
    for node in view.nodes.values():
        by_module.setdefault(node.module, []).append(node)
    children = view.children()
    lines: list[str] = []

    def emit(path: str, pad: str, column: int | None = None) -> None:
        if view.columns and path == view.wrap_at and column is None:
            # A wrapped chain: one invisible cluster per column, laid out side by side.
            parts = sorted(set(view.columns.values()))
            for c in parts:
                label = f"part {c + 1} of {len(parts)}" + (
                    " ↓ then part " + str(c + 2) if c + 1 < len(parts) else ""
                )
                lines.append(f"{pad}subgraph {_q(f'cluster_{prefix}fxtap:column{c}')} {{")
                lines.append(
                    f'{pad}  id={_q(f"{prefix}fxtap:column{c}")}; style="dashed"; color="#DDDDDD"; '
                    f'fontcolor="#888888"; fontsize="9"; labeljust="r"; label={_q(label)};'
                )
                emit(path, pad + "  ", c)
                # NOTE: anchors chained on the top rank keep the columns in order, as no edge
                # joins two columns (column_stubs); each still says which part it holds
                lines.append(f"{pad}  {_q(f'{prefix}fxtap:top{c}')} [style=invis, shape=point];")
                for stub, label in stubs.get(c, ()):
                    attrs = {**_STUB, "id": prefix + stub, "label": f"<<i>{_h(label)}</i>>"}
                    lines.append(f"{pad}  {_q(prefix + stub)} [{_attrs(attrs)}];")
                lines.append(f"{pad}}}")
            return
        for node in by_module.get(path, ()):
            if column is not None and view.columns.get(node.id) != column:
                continue
            lines.append(f"{pad}{_q(prefix + node.id)} [{_attrs(_node_attrs(node, prefix))}];")
        for child in children.get(path, ()):
            if column is not None and view.columns.get(first.get(child, ""), column) != column:
                continue
            lines.append(f"{pad}subgraph {_q('cluster_' + prefix + child)} {{")
            lines.append(f"{pad}  {_attrs(_cluster_attrs(view, child, prefix), ';')};")
            emit(child, pad + "  ")
            lines.append(f"{pad}}}")

    stubs, drawn = column_stubs(view)
    first: dict[str, str] = {}
    for node in view.nodes.values():
        for p in prefixes(node.module):
            first.setdefault(p, node.id)
    emit("", indent)
    legend = _legend(view)
    if legend:
        lines.append(
            f"{indent}{_q(prefix + 'fxtap:legend')} [id={_q(prefix + 'fxtap:legend')}, shape=plain, style=solid, label=<{legend}>];"
        )
    lines += _edges(view, drawn, prefix, indent)
    anchors = [_q(f"{prefix}fxtap:top{c}") for c in sorted(set(view.columns.values()))]
    if len(anchors) > 1:
        lines.append(f"{indent}{{rank=min; {'; '.join(anchors)};}}")
        lines.append(f"{indent}{' -> '.join(anchors)} [style=invis];")
    return lines


def _edges(
    view: View, drawn: list[tuple[str, str, tuple[str, str]]], prefix: str, indent: str
) -> list[str]:
    """One DOT line per drawn edge: dotted for call order, dashed when pruned, bold when kept."""
    some_pruned = any(n.pruned for n in view.nodes.values())
    lines = []
    for a, b, (u, v) in drawn:
        attrs = []
        if (u, v) in view.sequence:
            attrs.append('style=dotted, class="sequence"')
        elif view.nodes[u].pruned or view.nodes[v].pruned:
            attrs.append(f'style=dashed, color="{PRUNED_COLOUR}", class="pruned"')
        elif some_pruned:
            attrs.append('penwidth=1.6, color="#000000"')  # the path feeding the taps
        style = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"{indent}{_q(prefix + a)} -> {_q(prefix + b)}{style};")
    return lines


def _node_attrs(node: ViewNode, prefix: str) -> dict[str, str]:
    family = _family(node)
    colour = PALETTE[family]
    attrs = {"id": (prefix + node.id), "tooltip": (_tooltip(node))}
    rows = [f"<b>{_h(node.short)}</b>"]
    if node.kind == "ref":
        attrs.update(shape="plain", style="solid", fontsize="8", fontcolor="#555555")
        attrs["label"] = f"<<i>↪ {_h(node.short)}</i>>"
        attrs["class"] = "ref pruned" if node.pruned else "ref kept"
        return attrs
    if node.kind == "module":
        rows.append(_small(f"{node.module_type} · {node.count} ops"))
        attrs.update(shape="tab", fillcolor="#E8E8E8")
    elif node.kind == "pruned":
        rows = [f"<i>{_h(node.short)}</i>"]
    else:
        rows.append(_small(f"{node.op} {_op_text(node)}".strip()))
        attrs["fillcolor"] = colour + _FILL_ALPHA
    if node.opaque:
        attrs.update(shape="box3d", style="filled", fillcolor=PALETTE["opaque"] + _FILL_ALPHA)
        rows.append(_small("opaque (fallback leaf)"))
    style_call(node, attrs, rows)
    if node.shape:
        rows.append(_small(node.shape))
    if node.mode_dependent and node.only is None:
        what = (
            "differs in train/eval"
            if node.kind == "op"
            else f"{node.mode_dependent} differ in train/eval"
        )
        rows.append(f'<font color="{MODE_COLOUR}" point-size="8">◐ {what}</font>')
        attrs["peripheries"] = "2"
    if node.heat is not None:
        attrs["fillcolor"] = _heat_colour(node.heat)
        if node.heat > 0.55:
            attrs["fontcolor"] = "white"
    if node.key is not None:
        attrs.update(penwidth="3", color="#000000")
        rows.append(_small(f"⇒ output {node.key!r}" if node.key != node.id else "⇒ output"))
    style_mark(node, attrs, rows)
    if node.only is not None:
        attrs.update(penwidth="3", color=ONLY_COLOUR)
        rows.append(f'<font color="{ONLY_COLOUR}" point-size="8"><b>{node.only} only</b></font>')
    if node.pruned:
        attrs.update(style="rounded,dashed", color=PRUNED_COLOUR, fontcolor="#777777")
        if attrs.get("shape") != "box3d":
            attrs.pop("fillcolor", None)
    attrs["label"] = "<" + "<br/>".join(rows) + ">"
    attrs["class"] = node_classes(node)
    return attrs


def _cluster_attrs(view: View, path: str, prefix: str) -> dict[str, str]:
    short = path.rpartition(".")[2]
    kind = view.module_types.get(path, "")
    attrs = {
        "id": (f"{prefix}module:{path}"),
        "tooltip": (f"{path} ({kind})"),
        "style": "rounded",
        "color": "#BBBBBB",
        "labeljust": "l",
        "fontsize": "9",
    }
    if path in view.islands:
        attrs.update(color=ISLAND_COLOUR, penwidth="2")
    fold = view.folds.get(path)
    if fold:
        count, last, exact = fold
        alike = "identical" if exact else "similar (sizes vary)"
        attrs.update(style="rounded,filled", fillcolor="#F2F2F2", penwidth="2")
        attrs["tooltip"] = f"{path} … {last}: {count} {alike} {kind} modules, first drawn"
        label = f"<b>{_h(short)} … {_h(last.rpartition('.')[2])}  ×{count}</b>"
        if not exact:
            label += ' <font point-size="8">sizes vary</font>'
    else:
        label = f"<b>{_h(short)}</b>"
    attrs["label"] = f'<{label} <font color="#666666">{_h(kind)}</font>>' if kind else f"<{label}>"
    return attrs


def _title(view: View) -> str:
    c = view.counts
    drawn = sum(1 for n in view.nodes.values() if n.kind != "ref")
    mode = "train and eval: identical graphs" if view.same else f"{view.mode} mode"
    parts = [
        f"<b>{_h(view.title)}</b>",
        mode,
        f"{drawn} of {c.get('total', 0)} nodes drawn",
    ]
    if c.get("checks"):
        parts.append(f"{c['checks']} input-check nodes hidden")
    if c.get("only"):
        parts.append(f'<font color="{ONLY_COLOUR}">{c["only"]} only in {view.mode} mode</font>')
    return " · ".join(parts)


def _legend(view: View) -> str:
    families: dict[str, None] = {}
    kinds: set[str] = set()
    for node in view.nodes.values():
        kinds.add(node.kind)
        if node.kind == "op" and not node.pruned and node.heat is None:
            families.setdefault(_family(node), None)
    c = view.counts
    rows = [
        f'<tr><td bgcolor="{PALETTE[f]}{_FILL_ALPHA}" width="14"></td><td align="left">{f}</td></tr>'
        for f in PALETTE
        if f in families
    ]
    extra = [
        (c.get("requested"), "requested output", "bold border", "black"),
        (c.get("only"), f"only in {view.mode} mode", "", ONLY_COLOUR),
        (c.get("pruned"), "pruned", "dashed grey", PRUNED_COLOUR),
        (c.get("opaque"), "opaque leaf (fallback)", "3-D box", PALETTE["opaque"]),
        (
            c.get("mode_dependent"),
            "differ in train/eval (dropout, batch norm…)",
            "◐, double border",
            MODE_COLOUR,
        ),
        *call_legend(view),
    ]
    for count, text, style, colour in extra:
        if count:
            what = f" ({style})" if style else ""
            rows.append(
                f'<tr><td bgcolor="{colour}" width="14"></td><td align="left">{count} {text}{what}</td></tr>'
            )
    if "module" in kinds:
        rows.append('<tr><td>▭</td><td align="left">collapsed module (raise depth)</td></tr>')
    if view.folds:
        rows.append('<tr><td>×N</td><td align="left">N identical modules, first drawn</td></tr>')
    if "ref" in kinds:
        rows.append('<tr><td>↪</td><td align="left">reference to a distant node</td></tr>')
    if not rows:
        return ""
    head = '<tr><td colspan="2"><b>legend</b></td></tr>'
    return (
        '<table border="0" cellborder="1" cellspacing="0" cellpadding="2">'
        + head
        + "".join(rows)
        + "</table>"
    )


def _tooltip(node: ViewNode) -> str:
    if node.kind == "ref":
        return f"{node.id}\nedges cut to speed up layout, from:\n{node.target}"
    lines = [node.id, f"op: {node.op}", f"target: {node.target}"]
    if node.module_type:
        lines.append(f"module type: {node.module_type}")
    if node.shape:
        lines.append(f"shape: {node.shape}")
    lines.append(f"parameters: {node.params:,}")
    if node.count > 1:
        lines.append(f"ops: {node.count}")
    if node.source:
        lines.append(f"source: {node.source}")
    for flag, text in (
        (node.key is not None, f"requested output {node.key!r}"),
        (node.only is not None, f"only in {node.only} mode"),
        (node.pruned and not node.skipped, "pruned"),
        (node.opaque, "opaque leaf (tracing fell back)"),
        (bool(node.untraced), f"untraced: {node.untraced}"),
        (node.skipped, "not run: after the early exit"),
        (node.mode_dependent > 0, "computes differently in train and eval mode"),
        (node.heat is not None, f"relative cost {node.heat or 0:.2f}"),
    ):
        if flag:
            lines.append(text)
    return "\n".join(lines)


def _family(node: ViewNode) -> str:
    if node.opaque:
        return "opaque"
    if node.op in ("placeholder", "output"):
        return "input/output"
    if node.op == "call_module":
        return "module"
    if node.op == "call_method":
        return "method"
    if node.op == "get_attr":
        return "attribute"
    return "function" if "." in node.target else "operator"


def _op_text(node: ViewNode) -> str:
    if node.op == "call_module":
        return node.module_type
    if node.op in ("placeholder", "output", "get_attr"):
        return "" if node.op != "get_attr" else node.target
    return node.label or node.target.rpartition(".")[2]


def _heat_colour(value: float) -> str:
    value = min(max(value, 0.0), 1.0) * (len(_HEAT) - 1)
    i = min(int(value), len(_HEAT) - 2)
    t = value - i
    a, b = _HEAT[i], _HEAT[i + 1]
    mix = [round(int(a[k : k + 2], 16) * (1 - t) + int(b[k : k + 2], 16) * t) for k in (1, 3, 5)]
    return "#" + "".join(f"{v:02X}" for v in mix)


def _small(text: str) -> str:
    return f'<font point-size="8">{_h(text)}</font>'


def _h(text: str) -> str:
    """Escape text for an HTML-like label (Graphviz parses it as XML)."""
    return html.escape(text, quote=True)


def _q(text: str) -> str:
    """A DOT quoted string; newlines become ``\\n`` (escString attributes such as tooltips)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(attrs: dict[str, str], sep: str = ",") -> str:
    # NOTE: Graphviz keeps an entity ("&amp;") in an attribute as is: "&" is written "&amp;".
    out = []
    for key, value in attrs.items():
        out.append(
            f"{key}={value}"
            if key == "label" and value.startswith("<")
            else f"{key}={_q(value.replace('&', '&amp;'))}"
        )
    return (sep + " ").join(out)
