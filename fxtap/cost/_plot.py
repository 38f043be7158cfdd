"""Draw a cost report with matplotlib's Agg backend (no display, no pyplot state)."""

from __future__ import annotations

import os
from itertools import accumulate
from typing import Any

from fxtap._io import write_atomic

__all__ = ["plot_report"]


def plot_report(report: Any, path: str | os.PathLike[str]) -> None:
    """Write a two-panel figure of a ``CostReport`` (typed ``Any``: the report imports this module): FLOPs accumulated along the graph, and latency per variant.

    The left panel shades the nodes the extractor keeps and marks the cut (its last kept node);
    the right panel shows each variant's per-round samples and the ideal extractor time.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=(2, 1))

    flops = [n.flops / 1e9 for n in report.nodes]
    total = list(accumulate(flops))
    xs = range(len(flops))
    left.plot(xs, total, color="0.2", lw=1.5, label="full model")
    kept_total = list(accumulate(f if n.kept else 0.0 for f, n in zip(flops, report.nodes)))
    left.plot(xs, kept_total, color="tab:orange", lw=1.5, label="kept by the extractor")
    kept_idx = [i for i, n in enumerate(report.nodes) if n.kept]
    if kept_idx:
        cut = kept_idx[-1]
        left.axvline(cut, color="tab:red", ls="--", lw=1)
        left.annotate(
            f"cut: {report.nodes[cut].name}\n{report.kept_fraction:.1%} of FLOPs",
            (cut, total[cut] if total else 0),
            xytext=(6, -24),
            textcoords="offset points",
            fontsize=8,
            color="tab:red",
        )
    left.set_xlabel("node (execution order)")
    left.set_ylabel("accumulated GFLOPs")
    left.set_title(f"{report.model}: FLOPs along the graph")
    left.legend(loc="upper left", fontsize=8)

    names = [v.name for v in report.variants]
    samples = [[s * 1e3 for s in v.samples] for v in report.variants]
    right.boxplot(samples, tick_labels=names, widths=0.5)
    for i, vals in enumerate(samples, start=1):
        right.scatter([i] * len(vals), vals, s=8, color="tab:blue", alpha=0.5, zorder=3)
    if "extractor" in names:
        right.axhline(report.ideal_time * 1e3, color="tab:green", ls=":", lw=1, label="ideal")
        right.legend(loc="upper right", fontsize=8)
    right.set_ylabel("ms per call")
    right.set_title(f"latency ({report.device}, {report.threads} threads)")
    # NOTE: through fxtap's one writer (atomic, regular files only), in the format the suffix
    # names, as savefig infers it from a path.
    fmt = os.path.splitext(os.fspath(path))[1][1:].lower() or "png"
    write_atomic(
        path,
        lambda f: fig.savefig(f, format=fmt, dpi=100),
        hint="Pass another path with plot(path) (--plot FILE).",
    )
