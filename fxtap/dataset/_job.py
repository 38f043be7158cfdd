"""Run an extractor over a whole dataset into a resumable feature store, alone or under torchrun."""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import RandomSampler

import fxtap.dataset._data as _data
import fxtap.dataset._spec as spec
import fxtap.dataset._store as _store
import fxtap.dataset._taps as _taps
from fxtap.dataset._shard import Ranks, chunks_of, join
from fxtap.dataset._writer import Chunk, Writer
from fxtap.errors import FxtapError, InvalidArgumentError, OutputPathError
from fxtap.extractor import FeatureExtractor, create_feature_extractor

__all__ = ["JobResult", "extract_dataset"]


@dataclass(frozen=True)
class JobResult:
    """What one ``extract_dataset`` call did.

    Attributes:
        out: the store's folder.
        num_samples: samples in the dataset (rows of every array).
        computed: samples this call computed on this rank (0 when the store was complete).
        chunks_before: chunks already done when the call started (resumed work).
        num_chunks: chunks in the store.
        skipped: indices of samples skipped as unreadable.
        seconds: wall time of the call.
        bytes: size of the store on disk at the end.
        rank: this process's rank; world_size: number of ranks.
    """

    out: Path
    num_samples: int
    computed: int
    chunks_before: int
    num_chunks: int
    skipped: tuple[int, ...]
    seconds: float
    bytes: int
    rank: int = 0
    world_size: int = 1

    @property
    def samples_per_second(self) -> float:
        """Samples computed per second by all ranks together (this rank's count x ranks)."""
        return self.computed * self.world_size / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: samples, time, throughput, bytes, resumed chunks and skipped samples."""
        text = (
            f"{self.computed * self.world_size:,} of {self.num_samples:,} samples done in "
            f"{self.seconds:.1f} s ({self.samples_per_second:,.1f} samples/s), "
            f"{self.bytes / 1e6:,.1f} MB in {str(self.out)!r}"
        )
        if self.chunks_before:
            text += f"; resumed: {self.chunks_before} of {self.num_chunks} chunks were done"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unreadable sample(s)"
        return text


def extract_dataset(
    model_or_extractor: nn.Module,
    data: Any,
    out: str | os.PathLike[str],
    *,
    return_nodes: list[str] | dict[str, str] | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    pool: str | Mapping[str, str | None] | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = True,
    skip_bad: bool = False,
    chunk_size: int | None = None,
    model_spec: str | None = None,
) -> JobResult:
    """Compute the taps of every sample of ``data`` and store them in ``out`` (zarr v3).

    The extractor runs in eval mode under ``torch.inference_mode()``; its mode is restored
    after. Samples are cut into chunks of ``chunk_size`` (a multiple of ``batch_size``) and
    each batch lies in one chunk, so every run computes the same batches whatever the
    number of ranks or interruptions: the store is bitwise the same. Under ``torchrun`` each
    rank computes every ``world_size``-th chunk; rank 0 writes the metadata and, once all
    ranks are done, marks the store complete.

    Args:
        model_or_extractor: a ``FeatureExtractor``, or a model to build one of with
            ``return_nodes``. Neither is changed.
        data: a map-style ``Dataset`` or a ``DataLoader`` over one (its batch size, workers and
            ``collate_fn`` are used; samples are read in the dataset's order). A sample is a
            tensor, a ``(tensor, label)`` pair, or a dict of tensors (``label`` is the label,
            other tensors are keyword inputs).
        out: folder of the store (created; must be empty or hold this same job).
        return_nodes: nodes to tap when a model is given, as for ``create_feature_extractor``.
        batch_size: samples per forward pass (default: the DataLoader's, else 64).
        num_workers: DataLoader worker processes (default: the DataLoader's, else 0).
        pool: ``"avg"``/``"max"`` reduce feature maps ``[N, C, ...]`` to ``[N, C]``;
            ``"cls"``/``"token_avg"`` reduce token sequences ``[N, T, D]`` to ``[N, D]``; a dict
            sets it per output key (default: None, full values).
        dtype: ``"float16"`` or ``"bfloat16"`` to store floating taps in half the space
            (default: None, each tap's own dtype).
        device: where to compute (default: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU).
        resume: continue the job found in ``out``; False erases it and starts over.
        progress: show a progress bar and a summary on rank 0 (stderr).
        skip_bad: skip samples that fail to load, with a warning; they read as zeros and are
            listed in the metadata (``skipped``). Default: stop, naming the file.
        chunk_size: samples per chunk (default: the largest multiple of ``batch_size`` whose
            chunk holds at most 16 MiB of features).
        model_spec: how the model was named (stored in the metadata; default: its class).

    Returns:
        A ``JobResult``; ``.summary()`` gives time, throughput and bytes.

    Raises:
        InvalidArgumentError: bad options, unreadable sample, values beyond ``dtype``, or ``out``
            holds another job (the message says what differs).
        InputShapeError: samples of one batch differ in shape.
        OutputPathError: ``out`` cannot be written, or the disk is full (the store stays
            resumable).

    >>> result = extract_dataset(model, images, "feats", return_nodes=["layer4"], pool="avg")  # doctest: +SKIP
    """
    start = time.perf_counter()
    target = _device(device)
    ranks = join(target)
    try:
        return _run(model_or_extractor, data, Path(out), ranks, start, locals())
    finally:
        ranks.close()


def _run(model: nn.Module, data: Any, out: Path, ranks: Ranks, start: float, o: dict) -> JobResult:
    source, sampler = _data.source_of(
        data, batch_size=o["batch_size"], num_workers=o["num_workers"]
    )
    if isinstance(sampler, RandomSampler):
        warnings.warn(
            "the DataLoader shuffles, but the store keeps the dataset's order: its sampler is "
            "not used; pass shuffle=False to silence this",
            stacklevel=3,
        )
    dataset, batch = source.dataset, source.batch_size
    total = len(dataset)
    if total == 0:
        raise InvalidArgumentError("data= has no samples; pass a dataset with at least one")
    device = o["target"]
    extractor, requested = _extractor(model, o["return_nodes"], device)
    store_dtype = _taps.parse_dtype(o["dtype"])
    was_training = extractor.training
    extractor.eval()
    try:
        with torch.inference_mode():
            probe = _probe(extractor, source, device, skip_bad=o["skip_bad"])
            keys = list(probe)
            pools = _taps.parse_pool(o["pool"], keys)
            taps = {k: _taps.prepare(k, v, pools.get(k), store_dtype, 0) for k, v in probe.items()}
            labels = probe.labels
            chunk = spec.chunk_size(o["chunk_size"], batch, taps, total)
            meta = spec.metadata(o, extractor, requested, source, taps, pools, store_dtype, chunk)
            specs = spec.arrays(meta, taps, labels, total, chunk)
            ids = _data.sample_ids(dataset)
            if ids is not None:
                specs.append(_store.ArraySpec("ids", (total,), (chunk,), "str", "", {}))
            state = _prepare(ranks, out, meta, specs, ids, resume=o["resume"])
            ranks.barrier()
            group = _store.open_store(out)
            num_chunks = -(-total // chunk)
            done = _store.done_chunks(group)
            before = len(done)
            mine = [] if state == "complete" else chunks_of(num_chunks, ranks)
            mine = [k for k in mine if k not in done]
            computed = _compute(
                extractor,
                source,
                group,
                mine,
                chunk,
                pools,
                store_dtype,
                taps,
                labels is not None,
                device,
                ranks,
                o,
            )
            ranks.barrier()
            skipped: tuple[int, ...] = tuple(meta.get("skipped", ()))
            if ranks.rank == 0 and state != "complete":
                skipped = _store.finish(group, meta)
            ranks.barrier()
            skipped = tuple(_store.read_metadata(out).get("skipped", ()))  # type: ignore[union-attr]
    finally:
        extractor.train(was_training)
    result = JobResult(
        out,
        total,
        computed,
        before,
        num_chunks,
        skipped,
        time.perf_counter() - start,
        _store.size_on_disk(out),
        ranks.rank,
        ranks.world_size,
    )
    if o["progress"] and ranks.rank == 0:
        print(f"fxtap: run {result.summary()}", file=sys.stderr)
    return result


class _Probe(dict):
    labels: torch.Tensor | None = None


def _probe(
    extractor: nn.Module, source: _data.Source, device: torch.device, *, skip_bad: bool
) -> _Probe:
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
        result = _Probe(_forward(extractor, batch.inputs, device))
        result.labels = batch.labels
        return result
    raise InvalidArgumentError("no sample of data= can be loaded; check the dataset's files")


def _compute(
    extractor, source, group, mine, chunk, pools, store_dtype, taps, has_labels, device, ranks, o
) -> int:
    total = len(source.dataset)
    plan = []  # (chunk index, indices of one batch), chunk by chunk
    for k in mine:
        lo, hi = k * chunk, min((k + 1) * chunk, total)
        plan += [
            (k, list(range(s, min(s + source.batch_size, hi))))
            for s in range(lo, hi, source.batch_size)
        ]
    names = [*taps, *(["labels"] if has_labels else []), "valid"]
    writer = Writer(group, names)
    bar = None
    if o["progress"] and ranks.rank == 0:
        from tqdm.auto import tqdm

        n = sum(len(b) for _, b in plan)
        desc = "fxtap run" + (f" (rank 0 of {ranks.world_size})" if ranks.world_size > 1 else "")
        bar = tqdm(total=n, unit="sample", desc=desc, file=sys.stderr, dynamic_ncols=True)
    computed = 0
    current: Chunk | None = None
    loader = _data.loader(source, [b for _, b in plan], pin_memory=device.type == "cuda")
    try:
        for (k, indices), batch in zip(plan, loader):
            if current is None or current.index != k:
                if current is not None:
                    writer.put(current)
                current = _new_chunk(k, chunk, total, taps, has_labels)
            for index, reason in batch.bad:
                if not o["skip_bad"]:
                    _data.raise_bad(source.dataset, index, reason)
                where = _data.file_of(source.dataset, index)
                warnings.warn(
                    f"skipped sample {index}" + (f" ({where!r})" if where else "") + f": {reason}; "
                    "it reads as zeros and is listed in the store's metadata (skipped)",
                    stacklevel=4,
                )
            _data.check_batch_error(batch)
            if batch.indices:
                values = _forward(extractor, batch.inputs, device)
                rows = np.asarray(batch.indices) - current.start
                for key in taps:
                    value = _taps.prepare(
                        key, values[key], pools.get(key), store_dtype, batch.indices[0]
                    )
                    current.arrays[key][rows] = _taps.to_numpy(value)
                if has_labels and batch.labels is not None:
                    current.arrays["labels"][rows] = _taps.to_numpy(batch.labels)
                current.arrays["valid"][rows] = True
            computed += len(indices)
            if bar is not None:
                bar.update(len(indices))
        if current is not None:
            writer.put(current)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return computed


def _new_chunk(k: int, chunk: int, total: int, taps: dict, has_labels: bool) -> Chunk:
    lo, hi = k * chunk, min((k + 1) * chunk, total)
    arrays = {
        key: np.zeros((hi - lo, *v.shape[1:]), dtype=_taps.to_numpy(v[:0]).dtype)
        for key, v in taps.items()
    }
    if has_labels:
        arrays["labels"] = np.full((hi - lo,), -1, dtype=np.int64)
    arrays["valid"] = np.zeros((hi - lo,), dtype=bool)
    return Chunk(k, lo, hi, arrays)


def _forward(extractor: nn.Module, inputs: Any, device: torch.device) -> dict[str, Any]:
    if isinstance(inputs, dict):
        values = extractor(**{k: v.to(device, non_blocking=True) for k, v in inputs.items()})
    else:
        values = extractor(inputs.to(device, non_blocking=True))
    if not isinstance(values, dict):
        raise InvalidArgumentError(
            f"the extractor returned a {type(values).__name__}, not a dict of taps; pass a "
            "FeatureExtractor or a model with return_nodes="
        )
    return values


def _extractor(model: nn.Module, return_nodes: Any, device: torch.device) -> tuple[nn.Module, Any]:
    if isinstance(model, FeatureExtractor):
        if return_nodes is not None:
            raise InvalidArgumentError(
                "return_nodes= was given with a FeatureExtractor, which already has its taps; "
                "pass the model instead, or leave return_nodes=None"
            )
        extractor: nn.Module = model
        requested: Any = dict(model.outputs["eval"])
    elif isinstance(model, nn.Module):
        if return_nodes is None:
            raise InvalidArgumentError(
                f"a {type(model).__name__} model needs return_nodes= naming the nodes to tap, "
                "e.g. return_nodes=['layer4'] (--nodes on the command line)"
            )
        extractor = create_feature_extractor(model, return_nodes)
        requested = list(return_nodes) if not isinstance(return_nodes, dict) else dict(return_nodes)
    else:
        raise InvalidArgumentError(
            f"model_or_extractor={type(model).__name__} is not a torch.nn.Module; pass a model "
            "with return_nodes=, or a FeatureExtractor"
        )
    here = {p.device for p in extractor.parameters()} | {b.device for b in extractor.buffers()}
    if here and here != {device}:
        # NOTE: the caller's extractor stays where it is; the job moves a copy.
        extractor = copy.deepcopy(extractor).to(device)
    return extractor, requested


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(
            f"device={device!r} is not a device; expected 'cpu' or 'cuda:0'"
        ) from exc


def _prepare(ranks: Ranks, out: Path, meta, specs, ids, *, resume: bool) -> str:
    outcome: tuple[str, str] = ("ok", "")
    if ranks.rank == 0:
        try:
            outcome = ("ok", _store.prepare(out, meta, specs, ids, resume=resume))
        except FxtapError as exc:
            outcome = (type(exc).__name__, str(exc))
            if ranks.world_size == 1:
                raise
    outcome = ranks.broadcast(outcome)
    if outcome[0] != "ok":
        kind = OutputPathError if outcome[0] == "OutputPathError" else InvalidArgumentError
        raise kind(outcome[1])
    return outcome[1]
