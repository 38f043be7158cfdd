"""What the benchmarks share: interleaved timing in rotating order, and its command-line options.

Every benchmark compares variants measured in one run. ``interleave`` measures each variant
once per round (or block), rotating the order by one from round to round, so no variant always
runs first or right after the same neighbour, and a machine whose load drifts shifts every
variant alike. The benchmarks import it as ``_common``: they run as scripts
(``python benchmarks/bench_x.py``), which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from torch.utils.benchmark import Timer

__all__ = [
    "add_image_options",
    "add_timing_options",
    "interleave",
    "list_option",
    "timer_median",
    "timer_rounds",
    "wall_seconds",
]

V = TypeVar("V")


def interleave(
    variants: Mapping[str, V],
    rounds: int,
    measure: Callable[[str, V, int], float],
    *,
    after_round: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> dict[str, list[float]]:
    """``measure(name, variant, round)`` of every variant in each of ``rounds`` rounds, the
    order rotated by one each round; the measurements of each variant, in round order.

    ``after_round(round, measurements so far)`` runs after each round (progress lines).

    >>> order = []
    >>> _ = interleave({"a": 0, "b": 0, "c": 0}, 3, lambda n, v, i: order.append(n) or 1.0)
    >>> "".join(order)
    'abcbcacab'
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    items = list(variants.items())
    for i in range(rounds):
        turn = i % len(items)
        for name, variant in items[turn:] + items[:turn]:
            samples[name].append(measure(name, variant, i))
        if after_round is not None:
            after_round(i, samples)
    return samples


def timer_median(fn: Callable[[], Any], *, threads: int, min_run_time: float) -> float:
    """Median seconds of ``fn()`` over ``torch.utils.benchmark.Timer`` blocks of at least
    ``min_run_time`` seconds in all, on ``threads`` torch threads."""
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def timer_rounds(
    variants: Mapping[str, Callable[[], Any]],
    *,
    rounds: int,
    threads: int,
    min_run_time: float,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """``timer_median`` of every variant in each of ``rounds`` interleaved rounds, after one
    warm-up call of each (``warmup``); the caller holds ``torch.no_grad()`` where it wants it."""
    if warmup:
        for fn in variants.values():
            fn()
    return interleave(
        variants,
        rounds,
        lambda _name, fn, _i: timer_median(fn, threads=threads, min_run_time=min_run_time),
    )


def wall_seconds(fn: Callable[..., Any], *args: Any) -> float:
    """Wall seconds of one call ``fn(*args)``: no warm-up, no repeats (a run minutes long)."""
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def add_timing_options(
    parser: argparse.ArgumentParser,
    *,
    threads: int = 1,
    rounds: int = 5,
    min_run_time: float | None = None,
) -> None:
    """``--threads``, ``--rounds`` and (where ``min_run_time`` is given) ``--min-run-time``."""
    parser.add_argument(
        "--threads", type=int, default=threads, help=f"torch threads (default: {threads})"
    )
    parser.add_argument(
        "--rounds", type=int, default=rounds, help=f"interleaved rounds (default: {rounds})"
    )
    if min_run_time is not None:
        parser.add_argument(
            "--min-run-time",
            type=float,
            default=min_run_time,
            help=f"seconds per variant per round (default: {min_run_time})",
        )


def add_image_options(parser: argparse.ArgumentParser) -> None:
    """``--batch`` and ``--size``: the batch of square RGB images a vision benchmark runs on."""
    parser.add_argument("--batch", type=int, default=1, help="images per batch (default: 1)")
    parser.add_argument("--size", type=int, default=224, help="image side (default: 224)")


def list_option(
    parser: argparse.ArgumentParser, flag: str, default: Sequence[Any], what: str, **kwargs: Any
) -> None:
    """An option taking one or more values, ``default`` written out in its help."""
    kwargs.setdefault("nargs", "+")
    parser.add_argument(
        flag,
        default=list(default),
        help=f"{what} (default: {' '.join(map(str, default))})",
        **kwargs,
    )
