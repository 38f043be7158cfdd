"""Draw a model's traced graph, or an extractor's kept and pruned nodes, with Graphviz."""

from __future__ import annotations

import dataclasses
import html as html_
import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxtap._protocol import DrawRequest, is_extractor
from fxtap._query import MODEL_OUTPUT, Request, normalize_return_nodes
from fxtap.capture import build_capture_extractor
from fxtap.errors import InvalidArgumentError, ensure_output_dir, format_choices
from fxtap.render._dot import FAST_SETTINGS, to_dot
from fxtap.render._fold import collapse, cut_long_edges, fold_pruned
from fxtap.render._fold import fold_repeats as fold_repeats_
from fxtap.render._graphs import graph_views
from fxtap.render._html import Page, to_html
from fxtap.render._layout import (
    DotJob,
    Drawing,
    compose,
    copy_drawing,
    drawing,
    find_dot,
    layout,
    write,
)
from fxtap.render._view import View
from fxtap.render._wrap import shorten, wrap
from fxtap.trace import TraceOptions, route

__all__ = ["Drawing", "Rendering", "render"]

#: The viewer's *expand* button draws every node when there are at most this many.
EXPAND_UP_TO = 1500
MODES = ("train", "eval", "both")
FORMATS = ("svg", "png", "pdf", "dot")
PRUNED_STYLES = ("dashed", "fold")


@dataclass(frozen=True)
class Rendering:
    """What ``render`` wrote; shows the main SVG inline in Jupyter.

    Attributes:
        drawings: one per mode, then the comparison when ``mode='both'``.
        messages: what was changed to finish in time (fallback settings, collapsing).
    """

    drawings: tuple[Drawing, ...]
    messages: tuple[str, ...] = ()
    html: Path | None = None
    viewer: str | None = field(default=None, repr=False, compare=False)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file written: DOT text, rendered files and the HTML viewer."""
        out: list[Path] = []
        for d in self.drawings:
            out += [d.dot_path] + ([d.path] if d.path is not None else [])
        return tuple(dict.fromkeys(out + ([self.html] if self.html else [])))

    def _repr_html_(self) -> str | None:
        """The interactive viewer in a sandboxed frame (Jupyter), when SVGs were drawn."""
        if self.viewer is None:
            return None
        doc = html_.escape(self.viewer, quote=True)
        return (
            f'<iframe srcdoc="{doc}" style="width:100%;height:720px;border:1px solid #ccc" '
            'sandbox="allow-scripts allow-same-origin"></iframe>'
        )

    def _repr_svg_(self) -> str | None:
        for d in reversed(self.drawings):
            if d.path is not None and d.path.suffix == ".svg":
                return d.path.read_text(encoding="utf-8")
        return None


def render(  # noqa: PLR0913 - keyword drawing options, each a CLI flag
    model: Any,
    *,
    mode: str = "both",
    nodes: Sequence[str] | Mapping[str, str] | None = None,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor | Mapping[str, Any] | None = None,
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    fmt: str = "svg",
    depth: int | None = None,
    fold_repeats: bool = True,
    pruned: str = "dashed",
    max_nodes: int | None = 150,
    timeout: float = 30.0,
    heat: Mapping[str, float] | None = None,
    dot: str | os.PathLike[str] | None = None,
    checks: bool = False,
    html: bool = False,
    tracer: str = "auto",
    auto_leaf: bool = True,
) -> Rendering:
    """Draw a model's graph (or an extractor's kept and pruned nodes) with Graphviz.

    Each mode gets its own file (``NAME.train.svg``, ``NAME.eval.svg``); ``mode='both'`` adds
    ``NAME.both.svg`` side by side. The DOT text is always written next to them.

    Args:
        model: an ``nn.Module``, an fxtap extractor (kept nodes solid, pruned ones dashed) or a
            ``Traced``. A ``CaptureExtractor``, or a model whose root forward cannot be traced,
            is drawn as the module calls of a probe run: islands as clusters of their graphs,
            untraced calls hatched, what the early exit skips dashed (docs/render.md).
        mode: ``'train'``, ``'eval'`` or ``'both'``.
        nodes: for a model, node names (or name -> output key) to mark as requested; the
            nodes they do not depend on are drawn pruned. Extractors show their own.
        example_inputs: inputs whose shapes and dtypes are shown on each node; required for
            the probe run of a capture extractor. For a model traced with torch.export, the
            inputs it traces with (a dict of keyword inputs is allowed there).
        tracer_kwargs: ``NodePathTracer`` options, for a model.
        concrete_args: torch.fx's ``concrete_args``, for a model.
        out_dir: folder written to (created when missing); by default a new temporary
            folder (``fxtap-render-*``), never the current one (a repository root).
        name: file stem and title (default: the model's class name).
        fmt: ``'svg'``, ``'png'``, ``'pdf'`` or ``'dot'`` (DOT text only, no Graphviz needed).
        depth: draw modules nested deeper than this as one box each (default: all levels).
        fold_repeats: draw runs of identical numbered siblings (``blocks.0`` …) once, ``×N``.
        pruned: ``'dashed'`` draws each pruned node; ``'fold'`` one node per module.
        max_nodes: collapse modules, pruned ones first, then the smallest, to draw about this
            many nodes; ``None`` draws every node. Modules holding requested or mode-only
            nodes stay open. Long chains are wrapped into columns either way.
        timeout: seconds ``dot`` may take per drawing before faster settings, then more
            collapsing, then DOT text only, are tried within the same budget.
        heat: node name -> cost; fills nodes on a colour-blind-safe scale.
        dot: path of Graphviz's ``dot`` program (default: found on ``PATH``).
        checks: draw input checks (nodes feeding only ``torch._assert``) instead of hiding them.
        tracer: for a model: ``"auto"`` (torch.fx; torch.export with ``example_inputs`` when
            torch.fx cannot trace the root), ``"fx"`` or ``"export"`` (docs/tracing.md).
        auto_leaf: for a model: keep untraceable submodules opaque, and draw the capture path
            when the root forward cannot be traced, as ``create_feature_extractor`` does;
            ``False`` raises ``TraceError`` instead.
        html: also write ``NAME.html``, a self-contained viewer (search, pan and zoom, node
            rows, train/eval toggle, kept/pruned filter, an expanded drawing when it has at
            most ``EXPAND_UP_TO`` nodes). Needs ``fmt='svg'``.

    Returns:
        A ``Rendering`` listing the files written (shown inline in Jupyter).

    Raises:
        DotNotFoundError: ``dot`` is missing; the DOT files were still written.
        OutputPathError: ``out_dir`` cannot be written.
        NodeNotFoundError: a name in ``nodes`` is in neither mode's graph.
        InvalidArgumentError: a bad option value.

    >>> r = render(nn.Sequential(nn.Linear(2, 2)), mode="eval", fmt="dot", out_dir=tmp)
    >>> [p.name for p in r.paths]
    ['Sequential.eval.dot']
    """
    _check_options(mode, fmt, depth, max_nodes, timeout, pruned, html)
    modes: tuple[str, ...] = ("train", "eval") if mode == "both" else (mode,)
    options = TraceOptions(
        tracer, tracer_kwargs, concrete_args, auto_leaf, example_inputs, check=False
    )
    request = DrawRequest(modes, name, options, heat, checks)
    bases, messages = _bases(model, nodes, request)
    modes = tuple(bases)
    mode = "both" if len(modes) == 2 else modes[0]
    title = bases[modes[0]].title

    make_view = _Shaper(bases, pruned == "fold", fold_repeats, depth)
    views = {m: make_view(m, max_nodes) for m in modes}
    out_dir = tempfile.mkdtemp(prefix="fxtap-render-") if out_dir is None else out_dir
    folder = ensure_output_dir(out_dir, hint="Pass a writable folder with out_dir= (-o DIR).")
    stem = _safe_stem(title)
    same = mode == "both" and _identical(views["train"], views["eval"])
    if same:
        # One drawing says the two graphs are the same; the mode files are copies of it.
        views["eval"] = dataclasses.replace(views["eval"], same=True)
    drawn = ("eval",) if same else modes
    jobs = [(m, [views[m]]) for m in drawn]
    if mode == "both" and fmt != "svg" and not same:
        jobs.append(("both", [views["train"], views["eval"]]))
    written = [("train", [views["eval"]]), *jobs, ("both", [views["eval"]])] if same else jobs
    dot_paths = {m: write(folder / f"{stem}.{m}.dot", to_dot(vs, name=title)) for m, vs in written}
    if fmt == "dot":
        shown = {**views, "both": views["eval"]} if same else views
        for message in messages:
            warnings.warn(message, UserWarning, stacklevel=2)
        return Rendering(
            tuple(
                drawing(m, p, None, [shown[m]] if m in shown else list(views.values()), "none")
                for m, p in dot_paths.items()
            ),
            tuple(messages),
        )
    program = find_dot(dot, list(dot_paths.values()))
    dot_job = DotJob(program, fmt, title, timeout)

    def run(job: tuple[str, list[View]]) -> Drawing:
        m, vs = job
        return layout(
            dot_job,
            m,
            vs,
            lambda limit: [make_view(v.mode, limit) for v in vs],
            (folder / f"{stem}.{m}.{fmt}", dot_paths[m]),
            messages,
        )

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        drawings = list(pool.map(run, jobs))
    if same:
        drawings = [
            copy_drawing(drawings[0], m, dot_paths[m], folder / f"{stem}.{m}.{fmt}")
            for m in ("train", "eval", "both")
        ]
    elif mode == "both" and fmt == "svg":
        drawings.append(
            compose(drawings, folder / f"{stem}.both.svg", folder / f"{stem}.both.dot", views)
        )
    viewer, html_path = None, None
    if fmt == "svg":
        svgs = {d.mode: d.path for d in drawings if d.path is not None and d.mode in drawn}
        if set(svgs) == set(drawn):
            expanded = {}
            if html:
                expanded = _expanded(program, drawn, make_view, views, title, timeout)
            pages = [
                Page(
                    m,
                    svgs[m].read_text(encoding="utf-8"),
                    views[m],
                    bases[m],
                    expanded.get(m),
                )
                for m in drawn
            ]
            viewer = to_html(title, pages, same=same)
            if html:
                html_path = write(folder / f"{stem}.html", viewer)
        elif html:
            messages.append(f"no HTML viewer for {title}: dot drew no SVG in time")
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=2)
    return Rendering(tuple(drawings), tuple(messages), html_path, viewer)


def _expanded(
    program: str,
    modes: Sequence[str],
    make_view: Any,
    views: Mapping[str, View],
    title: str,
    timeout: float,
) -> dict[str, str]:
    """SVGs of every node (nothing folded or collapsed) for the viewer, when small enough."""
    out: dict[str, str] = {}
    for m in modes:
        full = make_view(m, None, False)
        if len(full.nodes) > EXPAND_UP_TO or len(full.nodes) == len(views[m].nodes):
            continue
        if views[m].same:
            full = dataclasses.replace(full, same=True)
        text = to_dot([full], name=title, settings=FAST_SETTINGS if len(full.nodes) > 400 else None)
        try:
            done = subprocess.run(
                [program, "-Tsvg"],
                input=text.encode(),
                capture_output=True,
                timeout=timeout,
                check=True,
            )
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
            continue
        out[m] = done.stdout.decode("utf-8")
    return out


def _identical(train: View, evaluated: View) -> bool:
    """The two views draw the same nodes and edges, kept and requested alike (mode-dependent
    ops still differ; an extractor may tap other nodes in each mode)."""
    if train.counts.get("only") or evaluated.counts.get("only"):
        return False
    keys = [
        (
            {k: (n.op, n.target, n.shape, n.kind, n.pruned, n.key) for k, n in v.nodes.items()},
            set(v.edges),
        )
        for v in (train, evaluated)
    ]
    return keys[0] == keys[1]


@dataclass(frozen=True)
class _Shaper:
    """Turn a mode's base view into the one drawn: folded, collapsed, cut and wrapped."""

    bases: Mapping[str, View]
    folds_pruned: bool
    folds_repeats: bool
    depth: int | None

    def __call__(self, mode: str, limit: int | None, folds: bool | None = None) -> View:
        """The view of ``mode`` with at most ``limit`` nodes; ``folds`` overrides repeats."""
        view = self.bases[mode]
        if self.folds_pruned:
            view = fold_pruned(view)
        if self.folds_repeats if folds is None else folds:
            view = fold_repeats_(view)
        view = cut_long_edges(collapse(view, depth=self.depth, max_nodes=limit))
        return shorten(wrap(view))


def _check_options(
    mode: str,
    fmt: str,
    depth: int | None,
    max_nodes: int | None,
    timeout: float,
    pruned: str,
    html: bool,
) -> None:
    if html and fmt != "svg":
        raise InvalidArgumentError(
            f"html=True draws SVGs into the viewer, not fmt={fmt!r}; pass fmt='svg' (--format svg)"
        )
    for label, value, choices in (
        ("mode", mode, MODES),
        ("fmt", fmt, FORMATS),
        ("pruned", pruned, PRUNED_STYLES),
    ):
        if value not in choices:
            raise InvalidArgumentError(
                f"{label}={value!r} is not supported; expected one of {format_choices(choices)}"
            )
    for label, number, low in (("depth", depth, 0), ("max_nodes", max_nodes, 1)):
        if number is not None and (
            isinstance(number, bool) or not isinstance(number, int) or number < low
        ):
            raise InvalidArgumentError(f"{label}={number!r}; expected None or an integer >= {low}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidArgumentError(f"timeout={timeout!r}; expected a number of seconds > 0")


def _safe_stem(title: str) -> str:
    return re.sub(r"[^\w.-]+", "_", title).strip("._") or "model"


def _bases(
    model: Any, nodes: Sequence[str] | Mapping[str, str] | None, request: DrawRequest
) -> tuple[dict[str, View], list[str]]:
    """One view per drawable mode: an extractor draws itself, a model its traces.

    A model whose root forward cannot be traced is drawn as the capture extractor serving
    ``nodes``; a message names each mode its probe run could not draw.
    """
    if is_extractor(model):
        if nodes is not None:
            raise InvalidArgumentError(
                "nodes= is for a model; an extractor draws its own return_nodes. "
                "Pass the model itself to mark other nodes."
            )
        return model.views(request)
    if isinstance(model, nn.Module):
        chosen = route(model, request.trace.recording_source())
        if chosen.error is not None:
            # the root forward cannot be traced: draw what a capture extractor serving
            # ``nodes`` (default: the model's output) runs
            wanted = [Request(MODEL_OUTPUT, MODEL_OUTPUT)]
            if nodes is not None:
                wanted = normalize_return_nodes(nodes, argument="nodes")
            with warnings.catch_warnings():
                # NOTE: the drawing says what the warnings say (islands, untraced calls)
                warnings.simplefilter("ignore", UserWarning)
                drawn = build_capture_extractor(
                    model,
                    {"train": wanted, "eval": wanted},
                    error=chosen.error,
                    tracer_kwargs=request.trace.tracer_kwargs,
                )
            return drawn.views(request)
        return graph_views(model, chosen.traces, nodes, request), []
    return graph_views(model, None, nodes, request), []
