"""Run Graphviz's ``dot`` under a time limit, falling back to cheaper layouts."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fxtap._io import write_atomic
from fxtap.errors import DotNotFoundError, InvalidArgumentError, format_choices
from fxtap.render._dot import FAST_SETTINGS, to_dot
from fxtap.render._view import View

__all__ = [
    "FAST_FROM",
    "INSTALL_HINT",
    "DotJob",
    "Drawing",
    "compose",
    "copy_drawing",
    "drawing",
    "find_dot",
    "layout",
    "write",
]

#: Drawings with more nodes than this start with dot's fast settings.
FAST_FROM = 1500
_RESERVE = {"default": 0.55, "fast": 0.2, "collapsed": 0.0}
_HINT = "Pass a writable folder with out_dir= (-o DIR)."
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
class DotJob:
    """What every ``layout`` of one ``render`` call shares: the program, format and budget."""

    program: str
    fmt: str
    title: str
    timeout: float


def layout(
    job: DotJob,
    mode: str,
    views: list[View],
    rebuild: Callable[[int], list[View]],
    paths: tuple[Path, Path],
    messages: list[str],
) -> Drawing:
    """Run ``dot`` with default settings, then fast ones, then on a more collapsed graph.

    ``paths`` are the drawing to write and its DOT text (rewritten when a later attempt
    succeeds, so that it matches the drawing).

    Each attempt may use the time left, less what later attempts are kept (55 % of
    ``timeout`` after the first, 20 % after the second).
    """
    program, fmt, title, timeout = job.program, job.fmt, job.title, job.timeout
    out, dot_path = paths
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
            # NOTE: dot writes to a pipe, not to ``out``: its -o follows links and writes in
            # place; fxtap's one writer replaces regular files only, atomically.
            done = subprocess.run(
                [program, f"-T{fmt}"],
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
        write_atomic(out, done.stdout, hint=_HINT)
        if layout != "default":
            write(dot_path, text)
        if timed_out:
            messages.append(
                f"dot ran out of time on the {mode} graph of {title}; drew it with {layout} "
                f"settings ({shown} nodes). Pass a smaller depth= or max_nodes=, or a larger "
                "timeout=, for a different trade-off."
            )
        return drawing(mode, dot_path, out, views, layout, time.perf_counter() - start)
    messages.append(
        f"dot could not lay out the {mode} graph of {title} within timeout={timeout:g} s; wrote "
        f"the DOT text only to {str(dot_path)!r}. Pass depth=1 or a larger timeout=."
    )
    return drawing(mode, dot_path, None, views, "none", time.perf_counter() - start)


def compose(
    drawings: list[Drawing], out: Path, dot_path: Path, views: Mapping[str, View]
) -> Drawing:
    """Put the per-mode SVGs side by side in one SVG, ids prefixed by their mode."""
    parts, x, height = [], 0.0, 0.0
    for d in drawings[:2]:
        if d.path is None:
            return drawing("both", d.dot_path, None, list(views.values()), "none")
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
    write(out, head + "\n".join(parts) + "</svg>\n")
    write(dot_path, to_dot(list(views.values()), name=out.stem))
    return Drawing("both", dot_path, out, drawings[0].nodes + drawings[1].nodes, "composed")


def copy_drawing(drawing: Drawing, mode: str, dot_path: Path, out: Path) -> Drawing:
    if drawing.path is not None and drawing.path != out:
        write_atomic(out, drawing.path.read_bytes())
    path = out if drawing.path is not None else None
    return dataclasses.replace(drawing, mode=mode, dot_path=dot_path, path=path)


def drawing(
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


def find_dot(dot: str | os.PathLike[str] | None, written: list[Path]) -> str:
    program = shutil.which(os.fspath(dot)) if dot is not None else shutil.which("dot")
    if program is None:
        what = f"{os.fspath(dot)!r}" if dot is not None else "'dot'"
        raise DotNotFoundError(
            f"Graphviz's {what} program was not found on PATH; the DOT text was written to "
            f"{format_choices(str(p) for p in written)}. {INSTALL_HINT}."
        )
    return program


def write(path: Path, text: str) -> Path:
    """Write a drawing's text with fxtap's one atomic writer."""
    return write_atomic(path, text, hint=_HINT)
