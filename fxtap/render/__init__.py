"""Stage 3: draw a model's traced graph, or an extractor's kept and pruned nodes, with Graphviz."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fxtap._stage import make_callable
from fxtap.errors import (
    DotNotFoundError,
    InvalidArgumentError,
    OutputPathError,
    ensure_output_dir,
    format_choices,
)
from fxtap.names import diff_modes
from fxtap.render._dot import FAST_SETTINGS, to_dot
from fxtap.render._fold import collapse, cut_long_edges, fold_pruned, shorten, wrap
from fxtap.render._fold import fold_repeats as fold_repeats_
from fxtap.render._view import View, build_view, model_name, sources, with_shapes

__all__ = ["Drawing", "Rendering", "render"]

MODES = ("train", "eval", "both")
FORMATS = ("svg", "png", "pdf", "dot")
PRUNED_STYLES = ("dashed", "fold")
#: Drawings with more nodes than this start with dot's fast settings.
FAST_FROM = 1500
_RESERVE = {"default": 0.55, "fast": 0.2, "collapsed": 0.0}
INSTALL_HINT = (
    "Install Graphviz: 'apt-get install graphviz' (Debian/Ubuntu), 'brew install graphviz' "
    "(macOS) or 'conda install graphviz'; or pass fmt='dot' to write DOT text only"
)


@dataclass(frozen=True)
class Drawing:
    """One drawing: a mode (``'train'``, ``'eval'``) or the side-by-side ``'both'``.

    Attributes:
        mode: which graph it draws.
        dot_path: the DOT text written.
        path: the rendered file, or ``None`` when only DOT text was written.
        nodes: drawn nodes (references to distant nodes not counted).
        layout: ``'default'``, ``'fast'`` (cheaper ``dot`` settings), ``'collapsed'`` (more
            modules collapsed, fast settings), ``'composed'`` (two SVGs side by side) or
            ``'none'`` (``dot`` not run or out of time).
        seconds: wall time spent in ``dot``.
    """

    mode: str
    dot_path: Path
    path: Path | None
    nodes: int
    layout: str
    seconds: float = 0.0


@dataclass(frozen=True)
class Rendering:
    """What ``render`` wrote; shows the main SVG inline in Jupyter.

    Attributes:
        drawings: one per mode, then the comparison when ``mode='both'``.
        messages: what was changed to finish in time (fallback settings, collapsing).
    """

    drawings: tuple[Drawing, ...]
    messages: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file written: DOT text and rendered files."""
        out: list[Path] = []
        for d in self.drawings:
            out += [d.dot_path] + ([d.path] if d.path is not None else [])
        return tuple(dict.fromkeys(out))

    def _repr_svg_(self) -> str | None:
        for drawing in reversed(self.drawings):
            if drawing.path is not None and drawing.path.suffix == ".svg":
                return drawing.path.read_text(encoding="utf-8")
        return None


def render(
    model: Any,
    *,
    mode: str = "both",
    nodes: Sequence[str] | Mapping[str, str] | None = None,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
    tracer_kwargs: Mapping[str, Any] | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] = ".",
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
) -> Rendering:
    """Draw a model's graph (or an extractor's kept and pruned nodes) with Graphviz.

    Each mode gets its own file (``NAME.train.svg``, ``NAME.eval.svg``); ``mode='both'`` adds
    ``NAME.both.svg`` side by side. The DOT text is always written next to them.

    Args:
        model: an ``nn.Module``, an fxtap extractor (kept nodes solid, pruned ones dashed) or a
            ``Traced``.
        mode: ``'train'``, ``'eval'`` or ``'both'``.
        nodes: for a model, node names (or name -> output key) to mark as requested; the
            nodes they do not depend on are drawn pruned. Extractors show their own.
        example_inputs: inputs whose shapes and dtypes are shown on each node.
        tracer_kwargs: ``NodePathTracer`` options, for a model.
        concrete_args: torch.fx's ``concrete_args``, for a model.
        out_dir: folder written to (created when missing).
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
    _check_options(mode, fmt, depth, max_nodes, timeout, pruned)
    modes = ("train", "eval") if mode == "both" else (mode,)
    traces, kept, requested, opaque = sources(model, modes, nodes, tracer_kwargs, concrete_args)
    title = name or model_name(model)
    only: dict[str, set[str]] = {m: set() for m in traces}
    if "train" in traces and "eval" in traces:
        diff = diff_modes(traces["train"], traces["eval"])
        only = {"train": set(diff.train_only), "eval": set(diff.eval_only)}
    if example_inputs is not None:
        for m in modes:
            traces[m] = with_shapes(traces[m], example_inputs, title)

    def make_view(m: str, limit: int | None) -> View:
        view = build_view(
            traces[m],
            title=title,
            kept=kept.get(m),
            requested=requested.get(m),
            only=only.get(m, ()),
            opaque=opaque,
            heat=heat,
            checks=checks,
        )
        if pruned == "fold":
            view = fold_pruned(view)
        if fold_repeats:
            view = fold_repeats_(view)
        view = cut_long_edges(collapse(view, depth=depth, max_nodes=limit))
        return shorten(wrap(view))

    views = {m: make_view(m, max_nodes) for m in modes}
    folder = ensure_output_dir(out_dir, hint="Pass a writable folder with out_dir= (-o DIR).")
    stem = _safe_stem(title)
    same = mode == "both" and _identical(views["train"], views["eval"])
    if same:
        # One drawing says the two graphs are the same; the mode files are copies of it.
        views["eval"] = dataclasses.replace(views["eval"], same=True)
    jobs = [(m, [views[m]]) for m in (("eval",) if same else modes)]
    if mode == "both" and fmt != "svg" and not same:
        jobs.append(("both", [views["train"], views["eval"]]))
    dot_paths = {}
    for m, vs in jobs:
        dot_paths[m] = _write(folder / f"{stem}.{m}.dot", to_dot(vs, name=title))
    if same:
        for m in ("train", "both"):
            dot_paths[m] = _write(folder / f"{stem}.{m}.dot", to_dot([views["eval"]], name=title))
    if fmt == "dot":
        return Rendering(
            tuple(
                _drawing(
                    m,
                    dot_paths[m],
                    None,
                    [views["eval"] if same else views[m]]
                    if m != "both" or same
                    else [views["train"], views["eval"]],
                    "none",
                )
                for m in dot_paths
            )
        )
    program = _find_dot(dot, list(dot_paths.values()))
    messages: list[str] = []

    def run(job: tuple[str, list[View]]) -> Drawing:
        m, vs = job

        def rebuild(limit: int) -> list[View]:
            return [make_view(v.mode, limit) for v in vs]

        return _layout(
            program,
            m,
            vs,
            rebuild,
            folder / f"{stem}.{m}.{fmt}",
            dot_paths[m],
            fmt,
            title,
            timeout,
            messages,
        )

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        drawings = list(pool.map(run, jobs))
    if same:
        drawings = [
            _copy(drawings[0], m, dot_paths[m], folder / f"{stem}.{m}.{fmt}")
            for m in ("train", "eval", "both")
        ]
    elif mode == "both" and fmt == "svg":
        drawings.append(
            _compose(drawings, folder / f"{stem}.both.svg", folder / f"{stem}.both.dot", views)
        )
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=2)
    return Rendering(tuple(drawings), tuple(messages))


def _layout(
    program: str,
    mode: str,
    views: list[View],
    rebuild: Callable[[int], list[View]],
    out: Path,
    dot_path: Path,
    fmt: str,
    title: str,
    timeout: float,
    messages: list[str],
) -> Drawing:
    """Run ``dot`` with default settings, then fast ones, then on a more collapsed graph.

    Each attempt may use the time left, less what later attempts are kept (55 % of
    ``timeout`` after the first, 20 % after the second).
    """
    start = time.perf_counter()
    shown = _drawn(views)
    # Past FAST_FROM nodes dot's default settings rarely finish in time: skip them.
    ladder = ("fast", "collapsed") if shown > FAST_FROM else ("default", "fast", "collapsed")
    timed_out = False
    for layout in ladder:
        if layout == "default":
            text = dot_path.read_text(encoding="utf-8")
        elif layout == "fast":
            text = to_dot(views, name=title, settings=FAST_SETTINGS)
        else:
            views = rebuild(max(shown // 4, 50))
            shown = _drawn(views)
            text = to_dot(views, name=title, settings=FAST_SETTINGS)
        left = timeout - (time.perf_counter() - start) - timeout * _RESERVE[layout]
        try:
            subprocess.run(
                [program, f"-T{fmt}", "-o", str(out)],
                input=text.encode("utf-8"),
                check=True,
                capture_output=True,
                timeout=max(left, 1.0),
            )
        except subprocess.TimeoutExpired:
            timed_out = True
            continue
        except subprocess.CalledProcessError as exc:
            err = exc.stderr.decode("utf-8", "replace").strip()
            raise InvalidArgumentError(
                f"Graphviz's dot failed on {str(dot_path)!r}: {err}. This is a bug in fxtap's "
                "DOT output; please report it with the .dot file."
            ) from exc
        if layout != "default":
            _write(dot_path, text)
        if timed_out:
            messages.append(
                f"dot ran out of time on the {mode} graph of {title}; drew it with {layout} "
                f"settings ({shown} nodes). Pass a smaller depth= or max_nodes=, or a larger "
                "timeout=, for a different trade-off."
            )
        return _drawing(mode, dot_path, out, views, layout, time.perf_counter() - start)
    messages.append(
        f"dot could not lay out the {mode} graph of {title} within timeout={timeout:g} s; wrote "
        f"the DOT text only to {str(dot_path)!r}. Pass depth=1 or a larger timeout=."
    )
    return _drawing(mode, dot_path, None, views, "none", time.perf_counter() - start)


def _compose(
    drawings: list[Drawing], out: Path, dot_path: Path, views: Mapping[str, View]
) -> Drawing:
    """Put the per-mode SVGs side by side in one SVG, ids prefixed by their mode."""
    parts, x, height = [], 0.0, 0.0
    for d in drawings[:2]:
        if d.path is None:
            return _drawing("both", d.dot_path, None, list(views.values()), "none")
        svg = d.path.read_text(encoding="utf-8")
        svg = svg[svg.index("<svg") :]
        w, h = (float(re.search(rf'{k}="([\d.]+)pt"', svg).group(1)) for k in ("width", "height"))  # type: ignore[union-attr]
        svg = re.sub(r'\bid="', f'id="{d.mode}:', svg)
        # The outer viewBox counts in points: sizes inside must be unitless to match.
        svg = re.sub(r'(width|height)="([\d.]+)pt"', r'\1="\2"', svg, count=2)
        parts.append(f'<svg x="{x:g}" y="0"' + svg[4:])
        x += w + 24
        height = max(height, h)
    head = (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        f'<svg width="{x:g}pt" height="{height:g}pt" viewBox="0 0 {x:g} {height:g}" '
        'xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">\n'
    )
    _write(out, head + "\n".join(parts) + "</svg>\n")
    _write(dot_path, to_dot(list(views.values()), name=out.stem))
    return Drawing("both", dot_path, out, drawings[0].nodes + drawings[1].nodes, "composed")


def _identical(train: View, evaluated: View) -> bool:
    """The two views draw the same nodes and edges (mode-dependent ops still differ)."""
    if train.counts.get("only") or evaluated.counts.get("only"):
        return False
    keys = [
        ({k: (n.op, n.target, n.shape, n.kind) for k, n in v.nodes.items()}, set(v.edges))
        for v in (train, evaluated)
    ]
    return keys[0] == keys[1]


def _copy(drawing: Drawing, mode: str, dot_path: Path, out: Path) -> Drawing:
    if drawing.path is not None and drawing.path != out:
        shutil.copyfile(drawing.path, out)
    path = out if drawing.path is not None else None
    return dataclasses.replace(drawing, mode=mode, dot_path=dot_path, path=path)


def _drawing(
    mode: str,
    dot_path: Path,
    path: Path | None,
    views: list[View],
    layout: str,
    seconds: float = 0.0,
) -> Drawing:
    return Drawing(mode, dot_path, path, _drawn(views), layout, seconds)


def _drawn(views: list[View]) -> int:
    return sum(1 for v in views for n in v.nodes.values() if n.kind != "ref")


def _find_dot(dot: str | os.PathLike[str] | None, written: list[Path]) -> str:
    program = shutil.which(os.fspath(dot)) if dot is not None else shutil.which("dot")
    if program is None:
        what = f"{os.fspath(dot)!r}" if dot is not None else "'dot'"
        raise DotNotFoundError(
            f"Graphviz's {what} program was not found on PATH; the DOT text was written to "
            f"{format_choices(str(p) for p in written)}. {INSTALL_HINT}."
        )
    return program


def _write(path: Path, text: str) -> Path:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {str(path)!r}: {exc.strerror or exc}. Pass a writable folder with "
            "out_dir= (-o DIR)."
        ) from exc
    return path


def _check_options(
    mode: str, fmt: str, depth: int | None, max_nodes: int | None, timeout: float, pruned: str
) -> None:
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


make_callable(__name__, render)
