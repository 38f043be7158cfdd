"""One self-contained HTML viewer: the SVGs, the node table, and a little JavaScript."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

from fxtap.render._view import View

__all__ = ["Page", "to_html"]


@dataclass(frozen=True)
class Page:
    """One mode of the viewer: its drawing, the view it draws and the view before folding.

    ``expanded`` is an optional second drawing of the same mode with nothing folded or
    collapsed (the viewer's *expand* button); ``None`` when it would be too large.
    """

    mode: str
    svg: str
    view: View
    base: View
    expanded: str | None = None


def to_html(title: str, pages: list[Page], *, same: bool = False) -> str:
    """A viewer page that needs no network: pan and zoom, search, node rows, mode toggle.

    Element ids of each drawing are prefixed ``MODE:`` (``eval:layer1.0.conv1``), and
    ``MODE+:`` in the expanded drawing. Node data is one JSON block: per mode, a row per node
    (``op, target, module type, shape, parameters, source, status``) and, for names not drawn
    themselves, the drawn node standing for them.
    """
    data = {
        "title": title,
        "same": same,
        "modes": [p.mode for p in pages],
        "rows": {p.mode: _rows(p) for p in pages},
        "where": {p.mode: dict(p.view.where) for p in pages},
        "expandable": {p.mode: p.expanded is not None for p in pages},
    }
    views = []
    for p in pages:
        views.append(f'<div class="view" id="view-{_h(p.mode)}">{_inline(p.svg, p.mode)}</div>')
        if p.expanded is not None:
            views.append(
                f'<div class="view" id="view-{_h(p.mode)}+">{_inline(p.expanded, p.mode + "+")}</div>'
            )
    # NOTE: HTML reads a script element's text before JSON does: "</script" closes it and
    # "<!--" changes how it ends. Escaped as JSON escapes, no markup character is left in it.
    payload = json.dumps(data, separators=(",", ":")).translate(_JSON_ESCAPES)
    buttons = "".join(
        f'<button type="button" class="mode" data-mode="{_h(p.mode)}">'
        f"{'train = eval' if same else _h(p.mode)}</button>"
        for p in pages
    )
    return _PAGE.format(
        title=_h(title),
        css=_CSS,
        js=_JS,
        buttons=buttons,
        views="\n".join(views),
        data=payload,
        note="train and eval graphs are identical" if same else "",
    )


_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _rows(page: Page) -> dict[str, list[object]]:
    rows: dict[str, list[object]] = {}
    for view in (page.base, page.view):
        for n in view.nodes.values():
            if n.id in rows:
                continue
            status = [
                s
                for s, on in (
                    ("requested", n.key is not None),
                    ("pruned", n.pruned),
                    (f"{n.only} only", n.only is not None),
                    ("mode-dependent", n.mode_dependent > 0),
                    ("opaque", n.opaque),
                )
                if on
            ]
            rows[n.id] = [
                n.op,
                n.target,
                n.module_type,
                n.shape,
                n.params,
                n.source,
                ", ".join(status) or "kept",
                n.count,
            ]
    return rows


def _inline(svg: str, prefix: str) -> str:
    """An SVG file as an inline element: no prolog, ids prefixed, sizes in user units."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r'\bid="', f'id="{prefix}:', svg)
    return re.sub(r'(width|height)="([\d.]+)pt"', r'\1="\2"', svg, count=2)


def _h(text: str) -> str:
    return html.escape(text, quote=True)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title} · fxtap</title>
<style>{css}</style></head>
<body>
<header>
  <b>{title}</b>
  <span class="modes">{buttons}</span><span class="note">{note}</span>
  <input id="search" type="search" placeholder="search a node (full or partial name)" autocomplete="off">
  <select id="filter" title="show kept and pruned nodes">
    <option value="all">kept and pruned</option><option value="kept">kept only</option>
    <option value="pruned">pruned only</option></select>
  <button type="button" id="expand" title="draw every node: no folds, no collapsed modules">expand</button>
  <button type="button" id="fit" title="fit the whole drawing to the window">whole graph</button>
</header>
<ul id="matches" hidden></ul>
<main id="stage">
{views}
</main>
<aside id="panel">
  <label>full name <input id="fullname" readonly value=""></label>
  <span id="copied"></span>
  <table id="row"></table>
  <p class="help">drag to pan · wheel to zoom · click a node to copy its name</p>
</aside>
<script type="application/json" id="fxtap-data">{data}</script>
<script>{js}</script>
</body></html>
"""

_CSS = """
html,body{margin:0;height:100%;font:13px Helvetica,Arial,sans-serif;color:#222;overflow:hidden}
header{position:fixed;top:0;left:0;right:0;height:38px;display:flex;gap:8px;align-items:center;
 padding:0 10px;background:#f6f6f6;border-bottom:1px solid #ccc;z-index:2}
header input[type=search]{flex:1;max-width:420px;padding:4px 6px}
button.mode.on{background:#0072B2;color:#fff}
.note{color:#882255}
#stage{position:fixed;top:39px;left:0;right:330px;bottom:0;overflow:hidden;cursor:grab;background:#fff}
#stage.drag{cursor:grabbing}
.view{position:absolute;left:0;top:0;transform-origin:0 0;display:none}
.view.on{display:block}
.view svg{display:block}
#panel{position:fixed;top:39px;right:0;width:330px;bottom:0;overflow:auto;border-left:1px solid #ccc;
 padding:8px;box-sizing:border-box;background:#fafafa}
#panel label{display:block;font-weight:bold}
#fullname{width:100%;box-sizing:border-box;font:12px monospace;margin-top:3px}
#row td{vertical-align:top;padding:1px 4px;font-size:12px;word-break:break-all}
#row td:first-child{color:#666;white-space:nowrap}
#matches{position:fixed;top:36px;left:260px;margin:0;padding:0;list-style:none;background:#fff;
 border:1px solid #999;z-index:3;max-height:50%;overflow:auto;min-width:320px}
#matches li{padding:3px 8px;cursor:pointer;font:12px monospace}
#matches li.on,#matches li:hover{background:#e3f1fa}
#matches li.none{color:#882255;cursor:default;background:#fff;font-family:Helvetica,Arial,sans-serif}
.help{color:#777;font-size:11px}
g.node.hit :is(path,polygon,ellipse){stroke:#D55E00;stroke-width:4px}
g.node.stub{cursor:pointer}
.hide-pruned g.pruned,.hide-kept g.kept{opacity:.08}
"""

_JS = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("fxtap-data").textContent);
  const stage = document.getElementById("stage");
  const search = document.getElementById("search");
  const matches = document.getElementById("matches");
  const field = document.getElementById("fullname");
  let mode = data.modes[data.modes.length - 1], expanded = false, picked = null;
  let s = 1, tx = 0, ty = 0;
  const key = () => mode + (expanded ? "+" : "");
  const view = () => document.getElementById("view-" + key());
  const apply = () => { view().style.transform = `translate(${tx}px,${ty}px) scale(${s})`; };

  function fit() {
    const svg = view().querySelector("svg"), r = stage.getBoundingClientRect();
    const w = svg.width.baseVal.value, h = svg.height.baseVal.value;
    s = Math.min(r.width / w, r.height / h, 1.5);
    tx = (r.width - w * s) / 2; ty = Math.max((r.height - h * s) / 2, 0);
    apply();
  }
  // The smallest zoom at which labels (10 pt) stay readable.
  const READABLE = 0.75;
  function box(els) {
    const r = stage.getBoundingClientRect();
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const el of els) {
      const b = el.getBoundingClientRect();
      x0 = Math.min(x0, (b.left - r.left - tx) / s); y0 = Math.min(y0, (b.top - r.top - ty) / s);
      x1 = Math.max(x1, (b.right - r.left - tx) / s); y1 = Math.max(y1, (b.bottom - r.top - ty) / s);
    }
    return [x0, y0, x1, y1];
  }
  function frame([x0, y0, x1, y1], most) {
    const r = stage.getBoundingClientRect(), pad = 120;
    const w = x1 - x0 + 2 * pad, h = y1 - y0 + 2 * pad;
    s = Math.max(Math.min(r.width / w, r.height / h, most), READABLE);
    tx = r.width / 2 - ((x0 + x1) / 2) * s; ty = r.height / 2 - ((y0 + y1) / 2) * s;
    apply();
  }
  // The first view: the taps and their neighbourhood, readable; without taps, the whole graph
  // when it is readable at that size, else its start. "whole graph" is one click away.
  function home() {
    const taps = Object.keys(data.rows[mode]).filter(n =>
      String(data.rows[mode][n][6]).includes("requested") && element(n));
    const note = document.getElementById("copied");
    fit();
    if (taps.length) {
      const [x0, y0, x1, y1] = box(taps.map(element));
      const r = stage.getBoundingClientRect();
      if ((x1 - x0 + 240) * READABLE <= r.width && (y1 - y0 + 240) * READABLE <= r.height) {
        frame([x0, y0, x1, y1], 1.2);
      } else {
        frame(box([element(taps[0])]), 1.2);
      }
      note.textContent = "showing the requested nodes; press 'whole graph' to see all";
    } else if (s < READABLE) {
      const first = view().querySelector("g.node");
      const [x0, y0, x1, y1] = box([first]);
      const r = stage.getBoundingClientRect();
      s = 1; tx = r.width / 2 - ((x0 + x1) / 2) * s; ty = 20 - y0 * s; apply();
      note.textContent = "showing the start; press 'whole graph' to see all";
    }
  }
  function show(m, exp, first = false) {
    document.querySelectorAll(".view").forEach(v => v.classList.remove("on"));
    mode = m; expanded = exp && data.expandable[m];
    view().classList.add("on");
    document.querySelectorAll("button.mode").forEach(
      b => b.classList.toggle("on", b.dataset.mode === mode));
    document.getElementById("expand").textContent = expanded ? "fold" : "expand";
    document.getElementById("expand").disabled = !data.expandable[m];
    if (!(picked && go(picked, false))) {
      if (picked) { field.value = ""; document.getElementById("row").textContent = "";
        document.getElementById("copied").textContent = picked + " is not in the " + mode + " graph"; }
      picked = null;
      if (first) home(); else fit();
    }
  }
  function element(name) {
    const el = document.getElementById(key() + ":" + name);
    return el && el.classList.contains("node") ? el : null;
  }
  function drawnAs(name) {
    if (element(name)) return name;
    const w = data.where[mode][name];
    return w && element(w) ? w : null;
  }
  function go(name, zoom = true) {
    const id = drawnAs(name);
    if (id === null) return false;
    const el = element(id), r = stage.getBoundingClientRect();
    if (zoom) { s = Math.max(s, 1); apply(); }
    const b = el.getBoundingClientRect();
    tx += r.left + r.width / 2 - (b.left + b.width / 2);
    ty += r.top + r.height / 2 - (b.top + b.height / 2);
    apply();
    document.querySelectorAll("g.node.hit").forEach(n => n.classList.remove("hit"));
    el.classList.add("hit");
    pick(name, id);
    return true;
  }
  function pick(name, id) {
    picked = name;
    field.value = name;
    const row = data.rows[mode][name] || data.rows[mode][id] || [];
    const labels = ["op", "target", "module type", "shape", "parameters", "source", "status", "ops"];
    const cells = labels.map((l, i) => [l, row[i]]).filter(([l, v]) =>
      v !== null && v !== undefined && v !== "" && !(l === "ops" && v === 1));
    if (id !== name) cells.push(["drawn as", id]);
    const table = document.getElementById("row");
    table.textContent = "";
    for (const [l, v] of cells) {
      const tr = table.insertRow();
      tr.insertCell().textContent = l;
      tr.insertCell().textContent = typeof v === "number" ? v.toLocaleString("en") : String(v);
    }
  }
  function copy(name) {
    const done = () => { document.getElementById("copied").textContent = "copied"; };
    field.select();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(name).then(done, () => {});
    }
  }
  function find(q) {
    q = q.trim();
    if (!q) return [];
    // "name@ref1" and the like are the drawing's own ids, not names a user asks for
    const names = Object.keys(data.rows[mode]).filter(n => !n.includes("@") && drawnAs(n) !== null);
    const score = n => n === q ? 0 : n.endsWith("." + q) ? 1 : n.startsWith(q) ? 2 :
      n.includes(q) ? 3 : 9;
    return names.map(n => [score(n), n.length, n]).filter(x => x[0] < 9)
      .sort((a, b) => a[0] - b[0] || a[1] - b[1] || (a[2] < b[2] ? -1 : 1))
      .slice(0, 15).map(x => x[2]);
  }
  function list(q) {
    const found = find(q);
    matches.textContent = "";
    matches.hidden = found.length === 0 && !q.trim();
    if (!found.length && q.trim()) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = `no node matches "${q.trim()}" in the ${mode} graph`;
      matches.appendChild(li);
    }
    found.forEach((n, i) => {
      const li = document.createElement("li");
      li.textContent = n;
      li.className = i === 0 ? "on" : "";
      li.addEventListener("mousedown", e => { e.preventDefault(); matches.hidden = true; go(n); });
      matches.appendChild(li);
    });
    return found;
  }
  search.addEventListener("input", () => list(search.value));
  search.addEventListener("keydown", e => {
    if (e.key === "Enter") {
      const f = list(search.value);
      if (f.length) { matches.hidden = true; go(f[0]); }
    }
    if (e.key === "Escape") matches.hidden = true;
  });
  search.addEventListener("blur", () => { matches.hidden = true; });

  let down = null, moved = false;
  stage.addEventListener("mousedown", e => {
    down = [e.clientX, e.clientY, tx, ty]; moved = false; stage.classList.add("drag");
  });
  window.addEventListener("mousemove", e => {
    if (!down) return;
    const dx = e.clientX - down[0], dy = e.clientY - down[1];
    if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
    tx = down[2] + dx; ty = down[3] + dy; apply();
  });
  window.addEventListener("mouseup", () => { down = null; stage.classList.remove("drag"); });
  stage.addEventListener("click", e => {
    if (moved) return;
    const g = e.target.closest("g.node");
    if (!g) return;
    const stub = g.id.slice(key().length + 1).match(/^fxtap:(to|from):(.*)>(.*)$/);
    if (stub) { go(stub[1] === "to" ? stub[3] : stub[2]); return; }
    const name = g.id.slice(key().length + 1);
    document.querySelectorAll("g.node.hit").forEach(n => n.classList.remove("hit"));
    g.classList.add("hit");
    pick(name, name);
    copy(name);
    if (g.classList.contains("folded") && data.expandable[mode] && !expanded) {
      document.getElementById("copied").textContent = "folded: press expand to open it";
    }
  });
  stage.addEventListener("wheel", e => {
    e.preventDefault();
    const r = stage.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
    const f = Math.exp(-e.deltaY / 400);
    tx = px - (px - tx) * f; ty = py - (py - ty) * f; s *= f; apply();
  }, { passive: false });
  document.querySelectorAll("button.mode").forEach(
    b => b.addEventListener("click", () => show(b.dataset.mode, expanded)));
  document.getElementById("fit").addEventListener("click", () => { picked = null; fit(); });
  document.getElementById("expand").addEventListener("click", () => show(mode, !expanded));
  document.getElementById("filter").addEventListener("change", e => {
    stage.classList.toggle("hide-pruned", e.target.value === "kept");
    stage.classList.toggle("hide-kept", e.target.value === "pruned");
  });
  window.fxtap = { go, show, find, state: () => ({ mode, expanded, picked, s, tx, ty }) };
  show(mode, false, true);
  // The first frame with the drawing on screen, for tests and timing.
  requestAnimationFrame(() => setTimeout(() => { window.fxtapPainted = performance.now(); }));
})();
"""
