"""Time variants of one computation in interleaved rounds and summarise the samples."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

# NOTE: torch.utils.benchmark imports cpp_extension, which logs a warning about CUDA_HOME on
# machines without CUDA; it concerns compiling extensions, which fxtap never does.
_CPP_LOG = logging.getLogger("torch.utils.cpp_extension")
_level = _CPP_LOG.level
_CPP_LOG.setLevel(logging.ERROR)
from torch.utils.benchmark import Timer  # noqa: E402

_CPP_LOG.setLevel(_level)

__all__ = [
    "Progress",
    "RoundSamples",
    "bimodal",
    "bootstrap_median_ci",
    "iqr",
    "median",
    "time_rounds",
]


@dataclass(frozen=True)
class RoundSamples:
    """Raw timings, one entry per round for each variant.

    Attributes:
        wall: variant -> seconds per call (median of that round's ``Timer`` blocks).
        device: variant -> CUDA-event seconds per call (empty off CUDA).
        runs: variant -> calls timed in each round.
    """

    wall: dict[str, list[float]]
    device: dict[str, list[float]]
    runs: dict[str, list[int]]


class Progress:
    """A one-line progress indicator on stderr; silent when disabled or not on a terminal.

    The line is redrawn with ``\r``, which only a terminal understands: in a log file or a
    pipe it would pile up, so there nothing is written.
    """

    def __init__(self, enabled: bool, *, stream=None) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and callable(isatty) and isatty())
        self._width = 0

    def show(self, text: str) -> None:
        """Replace the current line with ``text``."""
        if not self.enabled:
            return
        line = f"fxtap cost: {text}"
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def done(self) -> None:
        """End the progress line."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def time_rounds(
    variants: Mapping[str, Callable[[], object]],
    *,
    threads: int,
    min_run_time: float,
    rounds: int,
    warmup: int,
    device: torch.device,
    progress: Progress,
) -> RoundSamples:
    """Time each variant once per round, variants interleaved, starting order rotated.

    Interleaving spreads slow drifts (other processes, thermal limits) evenly over the
    variants, so ratios taken within one round stay fair on a busy machine.

    Args:
        variants: name -> a callable running one forward pass.
        threads: ``num_threads`` given to every ``Timer``.
        min_run_time: seconds each variant is timed per round (``blocked_autorange``).
        rounds: number of rounds.
        warmup: untimed calls of each variant before the first round.
        device: where the variants run; on CUDA, device time is taken with CUDA events.
        progress: where to report progress.
    """
    names = list(variants)
    cuda = device.type == "cuda"
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for i, name in enumerate(names):
            progress.show(f"warm-up {name} ({i + 1}/{len(names)})")
            for _ in range(warmup):
                variants[name]()
            _sync(device)
    finally:
        torch.set_num_threads(previous)
    wall: dict[str, list[float]] = {n: [] for n in names}
    dev: dict[str, list[float]] = {n: [] for n in names}
    runs: dict[str, list[int]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            progress.show(f"latency round {r + 1}/{rounds}: {name}")
            timer = Timer(
                stmt="fn()", globals={"fn": variants[name]}, num_threads=threads, label=name
            )
            # Timer's default clock synchronizes CUDA before reading the time.
            measurement = timer.blocked_autorange(min_run_time=min_run_time)
            wall[name].append(float(measurement.median))
            runs[name].append(int(measurement.number_per_run * len(measurement.raw_times)))
            if cuda:
                dev[name].append(_cuda_event_time(variants[name], device, measurement))
    return RoundSamples(wall, dev if cuda else {}, runs)


def median(values: Sequence[float]) -> float:
    """The median (``nan`` for no values)."""
    return float(np.median(values)) if len(values) else float("nan")


def iqr(values: Sequence[float]) -> float:
    """Interquartile range: 75th minus 25th percentile (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def bootstrap_median_ci(
    values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median, with a fixed seed (reproducible).

    >>> bootstrap_median_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    medians = np.median(data[picks], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return (float(low), float(high))


def bimodal(values: Sequence[float], *, min_gap: float = 0.1) -> bool:
    """True when the sorted samples split at one gap into two well-separated groups.

    The groups must each hold at least a quarter of the samples (and two of them), and the gap
    must exceed ``min_gap`` of the median and the spread inside either group.
    """
    data = sorted(values)
    n = len(data)
    if n < 6:
        return False
    gaps = [data[i + 1] - data[i] for i in range(n - 1)]
    cut = max(range(n - 1), key=gaps.__getitem__)
    low, high = data[: cut + 1], data[cut + 1 :]
    if min(len(low), len(high)) < max(2, n // 4):
        return False
    gap = gaps[cut]
    spread = max(low[-1] - low[0], high[-1] - high[0])
    return gap > min_gap * median(data) and gap > spread


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_event_time(fn: Callable[[], object], device: torch.device, measurement) -> float:  # type: ignore[no-untyped-def]
    """Device seconds per call of ``fn``, between two CUDA events around a block of calls."""
    number = max(1, int(measurement.number_per_run))
    with torch.cuda.device(device):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
    return start.elapsed_time(end) / 1000.0 / number
