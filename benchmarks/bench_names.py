"""Benchmark node naming: plain torch.fx tracing, fxtap's and torchvision's get_graph_node_names.

``get_graph_node_names`` traces twice (train and eval mode), so its cost is compared with two
plain ``torch.fx.symbolic_trace`` calls. Times are CPU seconds of this process
(``time.process_time``) with an explicit torch thread count. Variants are interleaved within each
repeat (in an order that rotates from repeat to repeat) and the median is reported. torchvision
is skipped on a size when its fitted growth predicts more than ``--tv-limit`` seconds. Every
model is measured with its weights on the ``meta`` device (no storage) and on the CPU (real,
randomly initialised weights, as a user traces them).

Run:  python benchmarks/bench_names.py [--repeat 3] [--threads 1] [--devices meta cpu] [--json]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchvision
from torch import fx, nn
from torchvision.models import feature_extraction

import fxtap
from _common import interleave, list_option

__all__ = ["Row", "main", "run", "synthetic"]

TOOLS = ("plain", "fxtap", "torchvision")
ZOO = ("resnet18", "resnet152", "vit_h_14", "densenet201", "maxvit_t")
SIZES = (500, 1000, 2000, 4000, 6000)
DEVICES = ("meta", "cpu")


@dataclass
class Row:
    """Median CPU seconds of each tool on one model (``None`` where skipped)."""

    model: str
    device: str
    nodes: int
    seconds: dict[str, float | None] = field(default_factory=dict)
    synthetic_blocks: int | None = None

    def ratio(self, tool: str) -> float | None:
        """Time of ``tool`` over two plain traces (``get_graph_node_names`` traces twice)."""
        value = self.seconds.get(tool)
        plain = self.seconds.get("plain")
        return None if value is None or not plain else value / (2 * plain)


class Residual(nn.Module):
    """linear, relu, residual add: three graph nodes."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) + x


def synthetic(blocks: int, width: int = 4, device: str = "meta") -> nn.Sequential:
    """An ``nn.Sequential`` of ``blocks`` residual blocks (about ``3 * blocks`` nodes)."""
    with torch.device(device):
        return nn.Sequential(*(Residual(width) for _ in range(blocks)))


def run(
    sizes: Sequence[int] = SIZES,
    zoo: Sequence[str] = ZOO,
    repeat: int = 3,
    tv_limit: float = 60.0,
    log: Callable[[str], None] = print,
    devices: Sequence[str] = DEVICES,
) -> list[Row]:
    """Time the three tools on the zoo models and the synthetic sizes; one row per device each."""
    rows = []
    for name in zoo:
        for device in devices:
            with torch.device(device):
                model = torchvision.models.get_model(name, weights=None)
            rows.append(_measure(name, device, model, repeat, skip=()))
            del model
            log(_format_row(rows[-1]))
    tv_points: dict[str, list[tuple[int, float]]] = {d: [] for d in devices}
    for blocks in sizes:
        for device in devices:
            model = synthetic(blocks, device=device)
            nodes = 3 * blocks + 1  # input and three per block, as named by fxtap
            predicted = _predict(tv_points[device], nodes)
            skip = ("torchvision",) if predicted is not None and predicted > tv_limit else ()
            row = _measure(f"synthetic-{blocks}", device, model, repeat, skip=skip)
            del model
            row.synthetic_blocks = blocks
            rows.append(row)
            tv_seconds = row.seconds.get("torchvision")
            if tv_seconds is not None:
                tv_points[device].append((row.nodes, tv_seconds))
            note = f"  (torchvision skipped: predicted {predicted:.0f} s)" if skip else ""
            log(_format_row(row) + note)
    return rows


def growth_exponent(rows: Sequence[Row], tool: str, device: str = "meta") -> float | None:
    """Least-squares slope of log(seconds) against log(nodes) over the synthetic rows."""
    points = [
        (math.log(r.nodes), math.log(s))
        for r in rows
        if r.synthetic_blocks is not None and r.device == device and (s := r.seconds.get(tool))
    ]
    if len(points) < 2:
        return None
    return _slope(points)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the table and optionally writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per variant (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    list_option(parser, "--sizes", SIZES, "synthetic block counts", type=int)
    list_option(parser, "--zoo", ZOO, "torchvision models", nargs="*")
    where = "where the weights live: meta (no storage) or cpu"
    list_option(parser, "--devices", DEVICES, where, choices=DEVICES)
    parser.add_argument(
        "--tv-limit",
        type=float,
        default=60.0,
        help="skip torchvision where its predicted time exceeds this many seconds (default: 60)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="write results as JSON; without FILE, name it by torch version (default: off)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, fxtap "
        f"{fxtap.__version__}, {args.threads} thread(s), median of {args.repeat}"
    )
    print(_header())
    rows = run(args.sizes, args.zoo, args.repeat, args.tv_limit, devices=args.devices)
    print()
    print(_markdown(rows))
    exponents = {
        device: {tool: growth_exponent(rows, tool, device) for tool in TOOLS}
        for device in args.devices
    }
    print()
    for device, by_tool in exponents.items():
        print(
            f"growth exponent over the synthetic sizes ({device}, log-log least squares): "
            + ", ".join(f"{t} {_fmt(e, '.2f')}" for t, e in by_tool.items())
        )
    for device in args.devices:
        worst = max((r.ratio("fxtap") or 0.0) for r in rows if r.device == device)
        print(
            f"worst fxtap / 2 plain traces ({device}): {worst:.2f} (target <= 1.50); "
            f"fxtap exponent {_fmt(exponents[device]['fxtap'], '.2f')} (target <= 1.10)"
        )
    if args.json is not None:
        path = args.json or f"bench_names_cpu_torch-{torch.__version__}.json"
        payload = {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "fxtap": fxtap.__version__,
            "python": platform.python_version(),
            "threads": args.threads,
            "devices": args.devices,
            "repeat": args.repeat,
            "rows": [asdict(r) | {"ratios": {t: r.ratio(t) for t in TOOLS}} for r in rows],
            "growth_exponent": exponents,
        }
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {path}")
    return 0


def _variants() -> dict[str, Callable[[nn.Module], Any]]:
    return {
        "plain": fx.symbolic_trace,
        "fxtap": functools.partial(fxtap.get_graph_node_names, suppress_diff_warning=True),
        "torchvision": functools.partial(
            feature_extraction.get_graph_node_names, suppress_diff_warning=True
        ),
    }


def _measure(name: str, device: str, model: nn.Module, repeat: int, skip: Sequence[str]) -> Row:
    variants = {k: v for k, v in _variants().items() if k not in skip}
    nodes = len(fxtap.trace(model, training=False).names)  # also warms up imports and caches

    def cpu_seconds(_tool: str, fn: Callable[[nn.Module], Any], _round: int) -> float:
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # NOTE: CPU time of this process, not wall time: on a shared machine the wall
            # clock also counts the time other processes hold the core.
            start = time.process_time()
            fn(model)
            return time.process_time() - start

    times = interleave(variants, repeat, cpu_seconds)
    seconds: dict[str, float | None] = {t: None for t in TOOLS}
    seconds.update({t: statistics.median(v) for t, v in times.items()})
    return Row(name, device, nodes, seconds)


def _predict(points: Sequence[tuple[int, float]], nodes: int) -> float | None:
    """Extrapolate seconds at ``nodes`` from measured points with a log-log fit."""
    if not points:
        return None
    if len(points) == 1:
        n0, t0 = points[0]
        return t0 * (nodes / n0) ** 2  # assume the worst plausible growth until fitted
    logs = [(math.log(n), math.log(t)) for n, t in points]
    slope = _slope(logs)
    n0, t0 = points[-1]
    return t0 * (nodes / n0) ** slope


def _slope(points: Sequence[tuple[float, float]]) -> float:
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _header() -> str:
    return (
        f"{'model':<18} {'device':<6} {'nodes':>6} {'plain ms':>9} {'fxtap ms':>9} {'tv ms':>9} "
        f"{'fxtap/2plain':>12} {'tv/2plain':>9}"
    )


def _format_row(row: Row) -> str:
    s = row.seconds
    ms = {t: (None if s.get(t) is None else 1000 * s[t]) for t in TOOLS}  # type: ignore[operator]
    return (
        f"{row.model:<18} {row.device:<6} {row.nodes:>6} {_fmt(ms['plain'], '9.1f')} "
        f"{_fmt(ms['fxtap'], '9.1f')} {_fmt(ms['torchvision'], '9.1f')} "
        f"{_fmt(row.ratio('fxtap'), '12.2f')} {_fmt(row.ratio('torchvision'), '9.2f')}"
    )


def _markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| model | weights | nodes | plain trace (ms) | fxtap (ms) | torchvision (ms) "
        "| fxtap / 2 plain | torchvision / 2 plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r.seconds
        cells = [_fmt(None if s.get(t) is None else 1000 * s[t], ".1f") for t in TOOLS]  # type: ignore[operator]
        lines.append(
            f"| {r.model} | {r.device} | {r.nodes} | {' | '.join(cells)} "
            f"| {_fmt(r.ratio('fxtap'), '.2f')} | {_fmt(r.ratio('torchvision'), '.2f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
