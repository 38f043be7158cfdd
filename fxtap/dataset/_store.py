"""The feature store: a zarr v3 group with one array per tap, written one whole chunk at a time.

Layout of ``out/``: ``zarr.json`` (the group; its ``fxtap`` attribute holds the job's metadata),
one array per tap named by its output key, ``labels`` and ``ids`` when the data has them,
``valid`` (False for skipped samples) and ``chunks_done`` (1 once a chunk is fully written).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.storage import LocalStore, WrapperStore

from fxtap.errors import (
    InvalidArgumentError,
    OutputPathError,
    ensure_output_dir,
    format_choices,
)

__all__ = ["RESERVED", "ArraySpec", "Features", "open_features", "write_file"]

#: Array names the store uses itself; no tap may take them.
RESERVED = ("labels", "ids", "valid", "chunks_done")
FORMAT = 1


@dataclass(frozen=True)
class ArraySpec:
    """One array to create: name, full shape, chunk shape, numpy dtype, fill value, attributes."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    fill_value: Any
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class Features:
    """A feature store opened for reading; arrays are zarr arrays, read lazily by slicing.

    Attributes:
        path: the store's folder.
        arrays: output key -> array ``[N, ...]`` in sample order.
        labels: the labels ``[N]`` (-1 for skipped samples), when the data had them.
        ids: per-sample ids (file paths under the dataset root), when the data had them.
        valid: ``[N]`` booleans, False for skipped samples.
        metadata: the job: model, nodes, pool, dtype, transforms, versions, skipped indices.
    """

    path: Path
    arrays: Mapping[str, zarr.Array]
    labels: zarr.Array | None
    ids: zarr.Array | None
    valid: zarr.Array
    metadata: Mapping[str, Any]

    def __getitem__(self, key: str) -> zarr.Array:
        if key not in self.arrays:
            raise KeyError(
                f"no tap {key!r} in {str(self.path)!r}; taps: {format_choices(self.arrays)}"
            )
        return self.arrays[key]

    def keys(self) -> list[str]:
        """The taps' output keys."""
        return list(self.arrays)

    def __len__(self) -> int:
        return int(self.metadata["job"]["num_samples"])

    @property
    def skipped(self) -> tuple[int, ...]:
        """Indices of the samples skipped as unreadable."""
        return tuple(self.metadata.get("skipped", ()))

    def tensor(self, key: str, rows: Any = slice(None)) -> torch.Tensor:
        """Read ``rows`` of one tap as a tensor in its stored dtype (bfloat16 decoded)."""
        data = np.asarray(self[key][rows])
        out = torch.from_numpy(np.ascontiguousarray(data))
        if self.metadata["taps"][key]["dtype"] == "bfloat16":
            out = out.view(torch.bfloat16)
        return out


def open_features(out: str | os.PathLike[str], *, partial: bool = False) -> Features:
    """Open a feature store written by ``extract_dataset``; nothing is read until sliced.

    Args:
        out: the store's folder.
        partial: also open a store whose job has not finished (unwritten rows read as zeros).

    Raises:
        InvalidArgumentError: ``out`` holds no fxtap store, or an unfinished one without
            ``partial=True``.

    >>> feats = open_features("feats")  # doctest: +SKIP
    >>> feats["avgpool"][:2].shape  # doctest: +SKIP
    (2, 512)
    """
    folder = Path(out)
    meta = read_metadata(folder)
    if meta is None:
        raise InvalidArgumentError(
            f"{str(folder)!r} holds no fxtap feature store (no zarr.json with an 'fxtap' "
            "attribute); pass the out= folder of an extract_dataset job"
        )
    if not meta.get("complete") and not partial:
        raise InvalidArgumentError(
            f"the job in {str(folder)!r} has not finished; run the same extract_dataset call (or "
            "fxtap run command) again to finish it, or pass partial=True to read it as it is"
        )
    group = zarr.open_group(folder, mode="r")
    arrays = {key: group[key] for key in meta["taps"]}
    labels = group.get("labels")
    ids = group.get("ids")
    return Features(folder, arrays, labels, ids, group["valid"], meta)  # type: ignore[arg-type]


def read_metadata(folder: Path) -> dict[str, Any] | None:
    """The ``fxtap`` attribute of the group in ``folder``, or None if there is none."""
    try:
        data = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    meta = data.get("attributes", {}).get("fxtap") if isinstance(data, dict) else None
    return meta if isinstance(meta, dict) else None


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary ``.partial`` file, then a rename.

    A reader, or a job resumed after a crash, sees the old file or the new one, never a part.

    Raises:
        OutputPathError: the disk is full or the file cannot be written.
    """
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = "the disk is full" if full else (exc.strerror or str(exc))
        raise OutputPathError(
            f"cannot write {str(path)!r}: {reason}. Finished chunks are kept: "
            + ("free some space" if full else "fix the folder")
            + " and run the same job again to resume"
        ) from exc


def open_store(folder: Path, *, mode: str = "r+") -> zarr.Group:
    """The group in ``folder``, opened so that every write goes through ``write_file``."""
    store = _AtomicStore(LocalStore(folder))
    return zarr.open_group(store=store, mode=mode)  # type: ignore[arg-type]


def prepare(
    out: str | os.PathLike[str],
    meta: dict[str, Any],
    arrays: Sequence[ArraySpec],
    ids: list[str] | None,
    *,
    resume: bool,
) -> str:
    """Create the store, or check that the one in ``out`` holds this job; rank 0 only.

    Returns:
        ``"new"``, ``"resume"`` (same job, unfinished) or ``"complete"`` (same job, finished).

    Raises:
        InvalidArgumentError: ``out`` holds another job (the message lists what differs).
        OutputPathError: ``out`` is a non-empty folder without a store, or cannot be written.
    """
    folder = ensure_output_dir(out, hint="Pass another out= (--out on the command line)")
    existing = read_metadata(folder)
    if existing is None and _only_partials(folder):
        # A job killed while writing its very first file left only that file's temporary.
        _clear(folder)
    if existing is None and any(folder.iterdir()):
        raise OutputPathError(
            f"{str(folder)!r} is not empty and holds no fxtap feature store; pass a new or "
            "empty folder as out= (--out), so that nothing in it is overwritten"
        )
    if existing is not None and not resume:
        _clear(folder)
        existing = None
    if existing is not None:
        differs = _differences(existing, meta)
        if differs:
            raise InvalidArgumentError(
                f"{str(folder)!r} holds another job: "
                + "; ".join(differs)
                + ". Pass the same arguments to resume it, resume=False (--restart) to erase "
                "it and start over, or another out= (--out)"
            )
        if existing.get("complete"):
            return "complete"
    _remove_partials(folder)
    if existing is None:
        group = zarr.create_group(
            store=_AtomicStore(LocalStore(folder)), attributes={"fxtap": meta}
        )
    else:
        group = open_store(folder)
    for spec in arrays:
        if spec.name not in group:
            group.create_array(
                spec.name,
                shape=spec.shape,
                chunks=spec.chunks,
                dtype=spec.dtype,
                fill_value=spec.fill_value,
                attributes=dict(spec.attributes),
            )
    if ids is not None:
        # Rewritten on every resume: the same bytes, and a crash may have cut the first write.
        group["ids"][:] = np.array(ids, dtype=object)  # type: ignore[index]
    return "new" if existing is None else "resume"


def done_chunks(group: zarr.Group) -> set[int]:
    """Indices of the chunks whose every array has been written."""
    done: Any = group["chunks_done"]
    return {int(k) for k in np.nonzero(np.asarray(done[:]))[0]}


def finish(group: zarr.Group, meta: dict[str, Any]) -> tuple[int, ...]:
    """Record the skipped samples and mark the job complete (rank 0, after every rank is done)."""
    valid: Any = group["valid"]
    skipped = tuple(int(i) for i in np.nonzero(~np.asarray(valid[:]))[0])
    group.attrs["fxtap"] = {**meta, "skipped": list(skipped), "complete": True}
    return skipped


def size_on_disk(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class _AtomicStore(WrapperStore[LocalStore]):
    """A ``LocalStore`` whose writes go through ``write_file`` (atomic, clear disk-full error)."""

    async def set(self, key: str, value: Any) -> None:
        path = Path(self._store.root) / key
        await asyncio.to_thread(write_file, path, value.to_bytes())


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for part in ("job", "taps", "versions"):
        a, b = old.get(part, {}), new.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{part} {key} is {a.get(key)!r} there, {b.get(key)!r} here")
    return out


def _remove_partials(folder: Path) -> None:
    for path in folder.rglob("*.partial"):
        with contextlib.suppress(OSError):
            path.unlink()


def _only_partials(folder: Path) -> bool:
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    return bool(files) and all(p.name.endswith(".partial") for p in files)


def _clear(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
