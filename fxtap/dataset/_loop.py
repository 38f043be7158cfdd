"""The job's inner loop: load batches, run the extractor, fill chunks, hand them to the writer.

SIGINT and SIGTERM stop the loop between batches: the chunk being filled is dropped, the
finished ones are written, and the caller reports what is stored. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import fxtap.dataset._data as _data
import fxtap.dataset._taps as _taps
from fxtap.dataset._progress import Progress
from fxtap.dataset._writer import Chunk, Writer
from fxtap.errors import InvalidArgumentError

__all__ = ["Plan", "Probe", "compute", "forward", "probe"]


class Probe(dict):
    """The taps of one sample (output key -> value), with its ``labels`` and input bytes."""

    labels: torch.Tensor | None = None
    input_bytes: int = 0


@dataclass(frozen=True)
class Plan:
    """What one rank computes: its chunks, their size, the taps and how to store them."""

    chunks: list[int]
    chunk: int
    taps: dict[str, torch.Tensor]
    pools: dict[str, str]
    dtype: torch.dtype | None
    has_labels: bool
    skip_bad: bool
    progress: Progress  # rank 0's bar, which counts every rank's samples (elsewhere: no-op)


@dataclass(frozen=True)
class Outcome:
    """Samples computed by this rank, and the signal that stopped it (None: it finished)."""

    computed: int
    signum: int | None


def probe(
    extractor: nn.Module,
    source: _data.Source,
    device: torch.device,
    layout: torch.memory_format | None,
    *,
    skip_bad: bool,
) -> Probe:
    """The taps of the first readable sample, to learn shapes and dtypes before creating arrays."""
    guarded = _data._Guarded(source.dataset)
    collate = _data._Collate(source.collate_fn)
    for index in range(len(source.dataset)):
        batch = collate([guarded[index]])
        if batch.bad:
            if not skip_bad:
                _data.raise_bad(source.dataset, *batch.bad[0])
            continue
        _data.check_batch_error(batch)
        result = Probe(forward(extractor, batch.inputs, device, layout))
        result.labels = batch.labels
        inputs = batch.inputs.values() if isinstance(batch.inputs, dict) else [batch.inputs]
        result.input_bytes = sum(t.numel() * t.element_size() for t in inputs)
        return result
    raise InvalidArgumentError("no sample of data= can be loaded; check the dataset's files")


def compute(
    extractor: nn.Module,
    source: _data.Source,
    group: Any,
    store: Any,
    plan: Plan,
    device: torch.device,
    layout: torch.memory_format | None,
) -> Outcome:
    """Compute ``plan``'s chunks batch by batch and write each finished chunk."""
    total, batch_size, chunk = len(source.dataset), source.batch_size, plan.chunk
    batches = [
        (k, list(range(s, min(s + batch_size, (k + 1) * chunk, total))))
        for k in plan.chunks
        for s in range(k * chunk, min((k + 1) * chunk, total), batch_size)
    ]
    names = [*plan.taps, *(["labels"] if plan.has_labels else []), "valid"]
    writer = Writer(group, store, names)
    computed = 0
    current: Chunk | None = None
    loader = _data.loader(source, [b for _, b in batches], pin_memory=device.type == "cuda")
    with _stopping() as stop:
        try:
            for (k, indices), batch in _until(stop, zip(batches, loader)):
                if current is None or current.index != k:
                    current = _new_chunk(k, chunk, total, plan)
                _fill(extractor, source, current, batch, plan, device, layout)
                computed += len(indices)
                plan.progress.add(len(indices))
                if indices[-1] + 1 == current.stop:  # the chunk's last batch: hand it over
                    writer.put(current)
                    current = None
            writer.close()  # on a stop, the finished chunks are still written
        except BaseException:
            writer.abort()
            raise
    return Outcome(computed, stop.signum)


def forward(
    extractor: nn.Module,
    inputs: Any,
    device: torch.device,
    layout: torch.memory_format | None = None,
) -> dict[str, Any]:
    """Run the extractor on a batch moved to ``device`` (4-D inputs in ``layout``); its taps."""

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        return t.contiguous(memory_format=layout) if layout is not None and t.dim() == 4 else t

    if isinstance(inputs, dict):
        values = extractor(**{k: move(v) for k, v in inputs.items()})
    else:
        values = extractor(move(inputs))
    if not isinstance(values, dict):
        raise InvalidArgumentError(
            f"the extractor returned a {type(values).__name__}, not a dict of taps; pass a "
            "FeatureExtractor or a model with return_nodes="
        )
    return values


def _fill(
    extractor, source, current: Chunk, batch: _data.Batch, plan: Plan, device, layout
) -> None:
    for index, reason in batch.bad:
        if not plan.skip_bad:
            _data.raise_bad(source.dataset, index, reason)
        where = _data.file_of(source.dataset, index)
        warnings.warn(
            f"skipped sample {index}" + (f" ({where!r})" if where else "") + f": {reason}; "
            "it reads as zeros and is listed in the store's metadata (skipped)",
            stacklevel=5,
        )
    _data.check_batch_error(batch)
    if not batch.indices:
        return
    values = forward(extractor, batch.inputs, device, layout)
    rows = np.asarray(batch.indices) - current.start
    for key in plan.taps:
        value = _taps.prepare(key, values[key], plan.pools.get(key), plan.dtype, batch.indices[0])
        current.arrays[key][rows] = _taps.to_numpy(value)
    if plan.has_labels and batch.labels is not None:
        current.arrays["labels"][rows] = _taps.to_numpy(batch.labels)
    current.arrays["valid"][rows] = True


def _new_chunk(k: int, chunk: int, total: int, plan: Plan) -> Chunk:
    lo, hi = k * chunk, min((k + 1) * chunk, total)
    arrays = {
        key: np.zeros((hi - lo, *v.shape[1:]), dtype=_taps.to_numpy(v[:0]).dtype)
        for key, v in plan.taps.items()
    }
    if plan.has_labels:
        arrays["labels"] = np.full((hi - lo,), -1, dtype=np.int64)
    arrays["valid"] = np.zeros((hi - lo,), dtype=bool)
    return Chunk(k, lo, hi, arrays)


class _Stop:
    signum: int | None = None


@contextlib.contextmanager
def _stopping() -> Iterator[_Stop]:
    """Turn the first SIGINT or SIGTERM into a request to stop; the second interrupts at once."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is not None:
            raise KeyboardInterrupt
        stop.signum = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _until(stop: _Stop, items: Any) -> Iterator[Any]:
    """The items, until a stop is requested; a loader error after the request ends them too.

    NOTE: Ctrl-C in a terminal reaches the DataLoader's workers as well; they exit, and the
    loader then raises in the main process: that is part of the stop, not an error.
    """
    iterator = iter(items)
    while stop.signum is None:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception:
            if stop.signum is None:
                raise
            return
        if stop.signum is None:
            yield item
