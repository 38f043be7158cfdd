"""Samples in, batches out: a loader over chosen indices that reports bad samples instead of dying."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from fxtap.errors import InputShapeError, InvalidArgumentError

__all__ = ["Batch", "Source", "describe", "loader", "sample_ids", "source_of", "unpack"]

LABEL_KEYS = ("label", "labels", "target")
ID_KEYS = ("id", "sample_id")


@dataclass(frozen=True)
class Source:
    """What ``data=`` resolves to: a map-style dataset and how to batch it."""

    dataset: Any
    batch_size: int
    num_workers: int
    collate_fn: Callable[[list[Any]], Any] | None


@dataclass
class Batch:
    """One batch as a worker hands it over; ``bad`` and ``error`` are raised in the main process.

    Attributes:
        indices: dataset indices of the good samples, in order.
        inputs: the collated model input (a tensor, or a dict of keyword inputs), None if empty.
        labels: the collated labels, when the samples have them.
        bad: ``(index, reason)`` of each sample that could not be loaded.
        error: why the good samples could not be collated (shapes differ), else None.
    """

    indices: list[int]
    inputs: Any = None
    labels: torch.Tensor | None = None
    bad: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None


def source_of(data: Any, *, batch_size: int | None, num_workers: int | None) -> tuple[Source, Any]:
    """Resolve ``data=`` (a map-style ``Dataset`` or a ``DataLoader``) into a ``Source``.

    A ``DataLoader`` gives its dataset, batch size, workers and ``collate_fn``; its sampler is
    returned so that the caller can warn that the job reads samples in the dataset's order.
    """
    sampler = None
    collate = None
    if isinstance(data, DataLoader):
        if batch_size is None:
            batch_size = data.batch_size
        if num_workers is None:
            num_workers = data.num_workers
        if data.collate_fn is not default_collate:
            collate = data.collate_fn
        sampler = data.sampler
        data = data.dataset
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise InvalidArgumentError(
            f"data={type(data).__name__} is not a map-style Dataset (with __getitem__ and "
            "__len__) nor a DataLoader over one; wrap iterable data in a Dataset first"
        )
    batch_size = 64 if batch_size is None else batch_size
    num_workers = 0 if num_workers is None else num_workers
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InvalidArgumentError(f"{name}={value!r} must be a whole number >= {low}")
    return Source(data, batch_size, num_workers, collate), sampler


def loader(source: Source, batches: Sequence[list[int]], *, pin_memory: bool) -> DataLoader:
    """A ``DataLoader`` yielding one ``Batch`` per list of indices, in the given order."""
    return DataLoader(
        _Guarded(source.dataset),
        batch_sampler=list(batches),
        num_workers=source.num_workers,
        collate_fn=_Collate(source.collate_fn),
        pin_memory=pin_memory,
    )


def unpack(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """Split a collated batch into ``(model input, labels or None)``.

    A tensor is the input; a ``(input, label)`` pair gives both; a dict gives its label entry
    (``label``, ``labels`` or ``target``) as labels and its other tensors as keyword inputs.
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        labels = batch[1]
        return batch[0], torch.as_tensor(labels) if labels is not None else None
    if isinstance(batch, dict):
        labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        inputs = {
            k: v
            for k, v in batch.items()
            if k not in LABEL_KEYS and k not in ID_KEYS and isinstance(v, torch.Tensor)
        }
        return inputs, torch.as_tensor(labels) if labels is not None else None
    raise InvalidArgumentError(
        f"a sample is a {type(batch).__name__}; expected a tensor, a (tensor, label) pair or a "
        "dict of tensors"
    )


def describe(dataset: Any) -> dict[str, Any]:
    """What identifies the data of a job: type, length, root folder, transform, and files.

    When the dataset lists its files (``ImageFolder``), ``samples_sha256`` covers every
    sample's id, label, size and modification time, so a renamed, replaced or touched file
    makes another job.
    """
    transform = getattr(dataset, "transform", None)
    target = getattr(dataset, "target_transform", None)
    root = getattr(dataset, "root", None)
    return {
        "type": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
        "length": len(dataset),
        "root": os.fspath(root) if isinstance(root, (str, os.PathLike)) else None,
        "transform": _text_of(transform),
        "target_transform": _text_of(target),
        "samples_sha256": _samples_digest(dataset),
    }


def _text_of(value: Any) -> str | None:
    # NOTE: addresses in reprs ('<function f at 0x7f..>') change every run; drop them.
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value)) if value is not None else None


def _samples_digest(dataset: Any) -> str | None:
    samples = getattr(dataset, "samples", None)
    ids = sample_ids(dataset)
    if ids is None or not isinstance(samples, list):
        return None
    h = hashlib.sha256()
    for sample_id, item in zip(ids, samples):
        path = item[0] if isinstance(item, tuple) else item
        label = item[1] if isinstance(item, tuple) and len(item) > 1 else None
        try:
            stat = os.stat(path)
            where = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            where = "missing"
        h.update(f"{sample_id}\0{label!r}\0{where}\n".encode())
    return h.hexdigest()


def sample_ids(dataset: Any) -> list[str] | None:
    """Per-sample ids when the dataset lists its files (``ImageFolder``): paths under its root."""
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, list) or len(samples) != len(dataset):
        return None
    root = getattr(dataset, "root", None)
    out = []
    for item in samples:
        path = item[0] if isinstance(item, tuple) else item
        if not isinstance(path, (str, os.PathLike)):
            return None
        out.append(os.path.relpath(path, root) if root else os.fspath(path))
    return out


def file_of(dataset: Any, index: int) -> str | None:
    """The file sample ``index`` is read from, when the dataset says (``ImageFolder``)."""
    samples = getattr(dataset, "samples", None)
    try:
        item = samples[index]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return None
    path = item[0] if isinstance(item, tuple) else item
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else None


class _Guarded(Dataset):
    """Returns ``(index, sample, None)``, or ``(index, None, reason)`` when loading fails."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            return index, self.dataset[index], None
        except Exception as exc:  # a corrupt file, a failing transform: reported by the job
            return index, None, f"{type(exc).__name__}: {exc}"


class _Collate:
    """Collate the good samples; never raises, so the main process can name the culprit."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None) -> None:
        self.collate_fn = collate_fn or default_collate

    def __call__(self, items: list[tuple[int, Any, str | None]]) -> Batch:
        good = [(i, s) for i, s, why in items if why is None]
        batch = Batch([i for i, _ in good], bad=[(i, why) for i, _, why in items if why])
        if not good:
            return batch
        batch.error = _shape_mismatch(good)
        if batch.error is None:
            try:
                batch.inputs, batch.labels = unpack(self.collate_fn([s for _, s in good]))
            except Exception as exc:
                batch.error = f"samples {good[0][0]}..{good[-1][0]} cannot be batched: {exc}"
        return batch


def _shape_mismatch(good: list[tuple[int, Any]]) -> str | None:
    first_index, first = good[0]
    want = _shape(first)
    for index, sample in good[1:]:
        got = _shape(sample)
        if got != want:
            return (
                f"sample {index} has shape {_text(got)} but sample {first_index} of the same "
                f"batch has {_text(want)}; make every sample the same size (a Resize and "
                "CenterCrop transform) or pass batch_size=1 (--batch-size 1)"
            )
    return None


def _shape(sample: Any) -> Any:
    if isinstance(sample, torch.Tensor):
        return tuple(sample.shape)
    if isinstance(sample, (tuple, list)) and sample and isinstance(sample[0], torch.Tensor):
        return tuple(sample[0].shape)
    if isinstance(sample, dict):
        return {k: tuple(v.shape) for k, v in sample.items() if isinstance(v, torch.Tensor)}
    return None


def _text(shape: Any) -> str:
    if isinstance(shape, tuple):
        return "x".join(map(str, shape)) or "a scalar"
    return repr(shape)


def raise_bad(dataset: Any, index: int, reason: str) -> None:
    """Raise the error for a sample that cannot be loaded, naming its file when known."""
    path = file_of(dataset, index)
    where = f"sample {index} ({path!r})" if path else f"sample {index}"
    raise InvalidArgumentError(
        f"{where} cannot be loaded: {reason}. Fix or remove the file, or pass skip_bad=True "
        "(--skip-bad) to skip it; finished chunks are kept, so the same call resumes"
    )


def check_batch_error(batch: Batch) -> None:
    """Raise ``InputShapeError`` when a batch's samples could not be collated."""
    if batch.error:
        raise InputShapeError(batch.error)
