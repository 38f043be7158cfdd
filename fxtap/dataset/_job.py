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

import torch
from torch import nn
from torch.utils.data import RandomSampler

import fxtap.dataset._data as _data
import fxtap.dataset._loop as _loop
import fxtap.dataset._options as _options
import fxtap.dataset._spec as spec
import fxtap.dataset._store as _store
import fxtap.dataset._taps as _taps
from fxtap._protocol import is_extractor
from fxtap.dataset._options import JobOptions
from fxtap.dataset._progress import Progress
from fxtap.dataset._shard import Ranks, chunks_of, join
from fxtap.errors import FxtapError, InvalidArgumentError, OutputPathError, ResourceError
from fxtap.extractor import create_feature_extractor

__all__ = ["JobInterrupted", "JobResult", "extract_dataset"]


@dataclass(frozen=True)
class JobResult:
    """What one ``extract_dataset`` call did; counts cover every rank.

    Attributes:
        out: the store's folder.
        num_samples: samples in the dataset (rows of every array).
        computed: samples this call computed, all ranks together (0 when the store was done).
        resumed: samples found done when the call started (kept from an earlier run).
        chunks_before: chunks found done when the call started.
        num_chunks: chunks in the store.
        skipped: indices of samples skipped as unreadable.
        repaired: chunks found damaged (missing or other bytes) and computed again.
        seconds: wall time of the call.
        bytes: size of the store on disk at the end.
        rank: this process's rank; world_size: number of ranks.
        computed_by_rank: samples each rank computed.
    """

    out: Path
    num_samples: int
    computed: int
    resumed: int
    chunks_before: int
    num_chunks: int
    skipped: tuple[int, ...]
    repaired: tuple[int, ...]
    seconds: float
    bytes: int
    rank: int = 0
    world_size: int = 1
    computed_by_rank: tuple[int, ...] = ()

    @property
    def samples_per_second(self) -> float:
        """Samples computed per second by all ranks together."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: samples, time, throughput, bytes, resumed, repaired and skipped samples."""
        ranks = f" by {self.world_size} ranks" if self.world_size > 1 else ""
        text = (
            f"{self.computed:,} of {self.num_samples:,} samples done{ranks} in "
            f"{self.seconds:.1f} s ({self.samples_per_second:,.1f} samples/s), "
            f"{self.bytes / 1e6:,.1f} MB in {str(self.out)!r}"
        )
        if self.resumed:
            text += f"; resumed: {self.resumed:,} samples were done"
        if self.repaired:
            text += f"; recomputed {len(self.repaired)} damaged chunk(s)"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unreadable sample(s)"
        return text


class JobInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the job; its finished chunks are stored and it resumes.

    Attributes:
        out: the store's folder. stored: samples stored. total: samples in the dataset.
        signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
    """

    def __init__(self, out: Path, stored: int, total: int, signum: int) -> None:
        super().__init__(
            f"stored {stored:,} of {total:,} samples in {str(out)!r}; run the same "
            "extract_dataset call again to resume"
        )
        self.out, self.stored, self.total, self.signum = out, stored, total, signum


def extract_dataset(  # noqa: PLR0913 - keyword options of the job, as on the command line
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
    seed: int | None = None,
    channels_last: bool = False,
    compile: bool = False,
) -> JobResult:
    """Compute the taps of every sample of ``data`` and store them in ``out`` (zarr v3).

    The extractor runs in eval mode under ``torch.inference_mode()``; its mode is restored
    after. Samples are cut into chunks of ``chunk_size`` (a multiple of ``batch_size``) and
    each batch lies in one chunk, so every run computes the same batches whatever the
    number of ranks or interruptions: the store is bitwise the same. Under ``torchrun`` rank
    0's parameters and buffers are sent to every rank first (one model everywhere), each rank
    computes every ``world_size``-th chunk, and rank 0 writes the metadata and, once all
    ranks are done, marks the store complete. SIGINT or SIGTERM stops between batches,
    keeps the finished chunks and raises ``JobInterrupted``.

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
        chunk_size: samples per chunk (default: about 1/64 of the samples, in whole batches,
            at most 16 MiB of features per chunk).
        model_spec: how the model was named (stored in the metadata; default: its class).
        seed: the seed the model was built with (``torch.manual_seed``), recorded in the
            metadata; the command line sets ``--seed`` (default 0) before building the model.
        channels_last: run a copy of the extractor, and 4-D inputs, in the channels-last
            memory format (faster convolutions on CPU; values differ from eager within float
            rounding, and are the same on every run).
        compile: run the extractor through ``torch.compile`` (static shapes: one compiled
            program per batch shape, the same on every run; compiling takes seconds to
            minutes). Both are recorded: a resume with other settings is refused.

    Returns:
        A ``JobResult``; ``.summary()`` gives time, throughput and bytes.

    Raises:
        InvalidArgumentError: bad options, a device this machine lacks, unreadable sample,
            values beyond ``dtype``, or ``out`` holds another job (the message says what
            differs) or is inside the data folder.
        ResourceError: one batch needs more memory than the machine has, or the store more
            space than the disk has.
        JobInterrupted: SIGINT or SIGTERM; the finished chunks are kept (a ``KeyboardInterrupt``).
        InputShapeError: samples of one batch differ in shape.
        OutputPathError: ``out`` cannot be written, or the disk is full (the store stays
            resumable).

    >>> result = extract_dataset(model, images, "feats", return_nodes=["layer4"], pool="avg")  # doctest: +SKIP
    """
    start = time.perf_counter()
    options = JobOptions(
        return_nodes=return_nodes,
        batch_size=batch_size,
        num_workers=num_workers,
        pool=pool,
        dtype=dtype,
        device=_options.parse_device(device),
        resume=resume,
        progress=progress,
        skip_bad=skip_bad,
        chunk_size=chunk_size,
        model_spec=model_spec,
        seed=seed,
        channels_last=channels_last,
        compile=compile,
    )
    ranks = join(options.device)
    try:
        return _run(model_or_extractor, data, Path(out), ranks, start, options)
    finally:
        ranks.close()


def _run(
    model: nn.Module, data: Any, out: Path, ranks: Ranks, start: float, o: JobOptions
) -> JobResult:
    source, sampler = _data.source_of(data, batch_size=o.batch_size, num_workers=o.num_workers)
    if isinstance(sampler, RandomSampler):
        warnings.warn(
            "the DataLoader shuffles, but the store keeps the dataset's order: its sampler is "
            "not used; pass shuffle=False to silence this",
            stacklevel=3,
        )
    _options.check_cpu_workers(o.num_workers, stacklevel=3)
    dataset, batch = source.dataset, source.batch_size
    _options.check_out_outside_data(out, getattr(dataset, "root", None))
    total = len(dataset)
    if total == 0:
        raise InvalidArgumentError("data= has no samples; pass a dataset with at least one")
    device = o.device
    extractor = _extractor(model, o.return_nodes, device, ranks, o.channels_last)
    store_dtype = _taps.parse_dtype(o.dtype)
    was_training = extractor.training
    extractor.eval()
    try:
        with torch.inference_mode():
            layout = torch.channels_last if o.channels_last else None
            probe = _loop.probe(extractor, source, device, layout, skip_bad=o.skip_bad)
            pools = _taps.parse_pool(o.pool, list(probe))
            taps = {k: _taps.prepare(k, v, pools.get(k), store_dtype, 0) for k, v in probe.items()}
            raw = sum(v.numel() * v.element_size() for v in probe.values())
            _options.check_memory(min(batch, total) * (probe.input_bytes + raw), batch)
            chunk = spec.chunk_size(o.chunk_size, batch, taps, total)
            layout_ = spec.StoreLayout(taps, pools, store_dtype, chunk)
            meta = spec.metadata(o, extractor, model, source, layout_)
            _same_weights(ranks, meta["job"]["parameters_sha256"])
            specs = spec.arrays(meta, layout_, probe.labels, total)
            ids = _data.sample_ids(dataset)
            if ids is not None:
                specs.append(_store.ArraySpec("ids", (total,), (min(chunk, total),), "str", "", {}))
            needed = total * spec.sample_bytes(taps)
            state, repaired = _prepare(ranks, out, meta, specs, ids, o.resume, needed)
            ranks.barrier()
            group, store = _store.open_store(out)
            num_chunks = -(-total // chunk)
            done = _store.done_chunks(group)
            resumed = sum(_rows(k, chunk, total) for k in done)
            todo = (
                {}
                if state == "complete"
                else {k: _rows(k, chunk, total) for k in range(num_chunks) if k not in done}
            )
            mine = [k for k in chunks_of(num_chunks, ranks) if k in todo]
            label = _bar_label(ranks) if o.progress and ranks.rank == 0 else None
            with Progress(label, out, todo, mine) as bar:
                plan = _loop.Plan(
                    mine, chunk, taps, pools, store_dtype, probe.labels is not None, o.skip_bad, bar
                )
                # NOTE: static shapes, so each batch shape always runs the same compiled program
                runner: Any = torch.compile(extractor, dynamic=False) if o.compile else extractor
                outcome = _loop.compute(runner, source, group, store, plan, device, layout)
                if outcome.signum is not None:
                    stored = sum(_rows(k, chunk, total) for k in _store.done_chunks(group))
                    raise JobInterrupted(out, stored, total, outcome.signum)
                by_rank = tuple(ranks.gather(outcome.computed))
                bar.finished(sum(by_rank))
            if ranks.rank == 0 and state != "complete":
                _store.finish(group, meta)
                store.check()
            ranks.barrier()
            skipped = tuple(_store.read_metadata(out).get("skipped", ()))  # type: ignore[union-attr]
    finally:
        extractor.train(was_training)
    result = JobResult(
        out,
        total,
        sum(by_rank),
        resumed,
        len(done),
        num_chunks,
        skipped,
        repaired,
        time.perf_counter() - start,
        _store.size_on_disk(out),
        ranks.rank,
        ranks.world_size,
        by_rank,
    )
    if o.progress and ranks.rank == 0:
        print(f"fxtap: run {result.summary()}", file=sys.stderr)
    return result


def _rows(k: int, chunk: int, total: int) -> int:
    return min((k + 1) * chunk, total) - k * chunk


def _bar_label(ranks: Ranks) -> str:
    return "fxtap run" + (f" ({ranks.world_size} ranks)" if ranks.world_size > 1 else "")


def _same_weights(ranks: Ranks, mine: str) -> None:
    """After the broadcast every rank holds rank 0's weights; refuse to write if one does not."""
    digests = ranks.gather(mine)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise InvalidArgumentError(
            f"rank(s) {odd} hold other weights than rank 0 after receiving rank 0's; nothing "
            "was written. Build the model the same way on every rank (--seed)"
        )


def _extractor(
    model: nn.Module, return_nodes: Any, device: torch.device, ranks: Ranks, channels_last: bool
) -> nn.Module:
    """The extractor to run, on ``device``, holding rank 0's weights on every rank.

    The caller's model and extractor are never changed: moving or receiving weights happens
    on a copy.
    """
    if is_extractor(model):
        if return_nodes is not None:
            raise InvalidArgumentError(
                "return_nodes= was given with an extractor, which already has its taps; "
                "pass the model instead, or leave return_nodes=None"
            )
        extractor: nn.Module = model
    elif isinstance(model, nn.Module):
        if return_nodes is None:
            raise InvalidArgumentError(
                f"a {type(model).__name__} model needs return_nodes= naming the nodes to tap, "
                "e.g. return_nodes=['layer4'] (--nodes on the command line)"
            )
        extractor = create_feature_extractor(model, return_nodes)
    else:
        raise InvalidArgumentError(
            f"model_or_extractor={type(model).__name__} is not a torch.nn.Module; pass a model "
            "with return_nodes=, or a FeatureExtractor"
        )
    tensors = [*extractor.parameters(), *extractor.buffers()]
    here = {t.device for t in tensors}
    # NOTE: an extractor already in channels-last (every 4-D weight) is run as it is: a copy
    # would be another module, and torch.compile would compile it again on every job.
    relayout = channels_last and any(
        t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last) for t in tensors
    )
    if (here and here != {device}) or ranks.world_size > 1 or relayout:
        # NOTE: the caller's extractor stays where it is and keeps its weights and layout; the
        # job moves a copy, and under torchrun that copy receives rank 0's weights.
        extractor = copy.deepcopy(extractor).to(device)
        ranks.broadcast_module(extractor)
        if relayout:
            extractor.to(memory_format=torch.channels_last)
    return extractor


def _prepare(
    ranks: Ranks, out: Path, meta, specs, ids, resume: bool, needed: int
) -> tuple[str, tuple[int, ...]]:
    """Rank 0 checks the disk, creates or checks the store; every rank gets its answer or error."""
    outcome: tuple[str, Any] = ("ok", ("new", ()))
    if ranks.rank == 0:
        try:
            _options.check_disk(out, needed, _store.size_on_disk(out) if out.is_dir() else 0)
            outcome = ("ok", _store.prepare(out, meta, specs, ids, resume=resume))
        except FxtapError as exc:
            outcome = (type(exc).__name__, str(exc))
            if ranks.world_size == 1:
                raise
    outcome = ranks.broadcast(outcome)
    if outcome[0] != "ok":
        kinds = {"OutputPathError": OutputPathError, "ResourceError": ResourceError}
        raise kinds.get(outcome[0], InvalidArgumentError)(outcome[1])
    return outcome[1]
