"""The feature store: a zarr v3 group with one array per tap, written one whole chunk at a time.

Layout of ``out/``: ``zarr.json`` (the group; its ``fxtap`` attribute holds the job's metadata),
one array per tap named by its output key, ``labels`` and ``ids`` when the data has them,
``valid`` (False for skipped samples) and ``checksums`` (each chunk's files with their SHA-256
and size, written once the chunk is on disk), and the marker ``.fxtap-job.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.storage import LocalStore, WrapperStore

import fxtap.dataset._integrity as _integrity
from fxtap.errors import (
    FxtapError,
    InvalidArgumentError,
    OutputPathError,
    ensure_output_dir,
    format_choices,
)

__all__ = ["RESERVED", "ArraySpec", "Features", "open_features", "write_file"]

#: Array names the store uses itself; no tap may take them.
RESERVED = ("labels", "ids", "valid", "checksums")
FORMAT = 2


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


def open_features(
    out: str | os.PathLike[str], *, partial: bool = False, verify: bool = False
) -> Features:
    """Open a feature store written by ``extract_dataset``; nothing is read until sliced.

    Every chunk of a finished store must be present with the size it was written with, so a
    missing or cut chunk is an error, never zeros; ``verify=True`` also checks every chunk
    file against its SHA-256 (it reads the whole store).

    Args:
        out: the store's folder.
        partial: also open a store whose job has not finished (unwritten rows read as zeros).
        verify: check every chunk's checksum (``fxtap verify DIR`` on the command line).

    Raises:
        InvalidArgumentError: ``out`` holds no fxtap store, an unfinished one without
            ``partial=True``, or a damaged one (the message names the chunks).
        OutputPathError: the store holds a symbolic link.

    >>> feats = open_features("feats")  # doctest: +SKIP
    >>> feats["avgpool"][:2].shape  # doctest: +SKIP
    (2, 512)
    """
    folder = Path(out)
    meta = read_metadata(folder)
    if meta is None or meta.get("format") != FORMAT:
        found = "" if meta is None else f" of format {meta.get('format')!r}, not {FORMAT}"
        raise InvalidArgumentError(
            f"{str(folder)!r} holds no fxtap feature store{found} (no zarr.json with an 'fxtap' "
            "attribute); pass the out= folder of an extract_dataset job"
        )
    if not meta.get("complete") and not partial:
        raise InvalidArgumentError(
            f"the job in {str(folder)!r} has not finished; run the same extract_dataset call (or "
            "fxtap run command) again to finish it, or pass partial=True to read it as it is"
        )
    _integrity.refuse_symlinks(folder)
    group = zarr.open_group(folder, mode="r")
    problems = check_chunks(folder, group, full=verify, complete=bool(meta.get("complete")))
    if problems:
        raise _integrity.damaged(folder, problems)
    arrays = {key: group[key] for key in meta["taps"]}
    labels = group.get("labels")
    ids = group.get("ids")
    return Features(folder, arrays, labels, ids, group["valid"], meta)  # type: ignore[arg-type]


def check_chunks(
    folder: Path, group: zarr.Group, *, full: bool, complete: bool
) -> list[tuple[int, str]]:
    """``(chunk, problem)`` for each done chunk whose files do not match their record.

    With ``complete``, a chunk without a record is a problem too.
    """
    problems = []
    for k, text in enumerate(_records(group)):
        record = _integrity.parse_record(text)
        if record is None:
            if complete:
                problems.append((k, "was never written"))
            continue
        why = _integrity.chunk_problem(folder, record, full=full)
        if why:
            problems.append((k, why))
    return problems


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


def prepare(
    out: str | os.PathLike[str],
    meta: dict[str, Any],
    arrays: Sequence[ArraySpec],
    ids: list[str] | None,
    *,
    resume: bool,
) -> tuple[str, tuple[int, ...]]:
    """Create the store, or check that the one in ``out`` holds this job; rank 0 only.

    A resumed store's done chunks are checked against their checksums; those that do not
    match are marked undone, so the job computes them again.

    Returns:
        ``("new" | "resume" | "complete", chunks found damaged and marked undone)``.

    Raises:
        InvalidArgumentError: ``out`` holds another job (the message lists what differs).
        OutputPathError: ``out`` holds files fxtap did not write, a symbolic link, or cannot
            be written.
    """
    folder = ensure_output_dir(out, hint="Pass another out= (--out on the command line)")
    _integrity.refuse_symlinks(folder)
    existing = read_metadata(folder)
    ours = existing is not None or _integrity.has_marker(folder)
    if ours and (existing is None or not resume):
        # Our own leftovers: a job killed during creation, or a restart (resume=False).
        old = (existing or {}).get("taps", {})
        # "chunks_done": format 1's done markers
        _integrity.clear_own(folder, [*RESERVED, "chunks_done", *old, *(a.name for a in arrays)])
        existing = None
    if existing is None:
        others = sorted(p.name for p in folder.iterdir())
        if others:
            raise OutputPathError(
                f"{str(folder)!r} is not empty and holds no fxtap feature store "
                f"({format_choices(others[:3])}{' ...' if len(others) > 3 else ''}); fxtap "
                "deletes only what it wrote. Pass a new or empty folder as out= (--out)"
            )
    elif existing.get("format") != FORMAT:
        raise InvalidArgumentError(
            f"{str(folder)!r} holds a feature store of format {existing.get('format')!r}, "
            f"written by another fxtap version (this one writes format {FORMAT}); pass "
            "resume=False (--restart) to erase it and start over, or another out= (--out)"
        )
    else:
        differs = differences(existing, meta)
        if differs:
            raise InvalidArgumentError(
                f"{str(folder)!r} holds another job: " + "; ".join(differs) + ". Pass the same "
                "arguments to resume it, resume=False (--restart) to erase it and start over, "
                "or another out= (--out)"
            )
    store = _AtomicStore(LocalStore(folder))
    if existing is None:
        write_file(folder / _integrity.MARKER, _integrity.marker_bytes(job_digest(meta)))
        group = zarr.create_group(store=store, attributes={"fxtap": meta})  # type: ignore[arg-type]
    else:
        _integrity.remove_own_partials(folder)
        group = zarr.open_group(store=store, mode="r+")  # type: ignore[arg-type]
    store.check()
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
            store.check()
    if ids is not None:
        # Rewritten on every resume: the same bytes, and a crash may have cut the first write.
        group["ids"][:] = np.array(ids, dtype=object)  # type: ignore[index]
        store.check()
    if existing is None:
        return "new", ()
    damaged = tuple(k for k, _ in check_chunks(folder, group, full=True, complete=False))
    marks: Any = group["checksums"]
    for k in damaged:
        marks[k] = ""
    if damaged and existing.get("complete"):
        group.attrs["fxtap"] = {**existing, "complete": False}
    store.check()
    return ("complete" if existing.get("complete") and not damaged else "resume"), damaged


def open_store(folder: Path) -> tuple[zarr.Group, _AtomicStore]:
    """The group in ``folder`` opened for writing, every write through ``write_file``."""
    store = _AtomicStore(LocalStore(folder))
    return zarr.open_group(store=store, mode="r+"), store  # type: ignore[arg-type]


def done_chunks(group: zarr.Group) -> set[int]:
    """Indices of the chunks whose every file has been written and recorded."""
    return {k for k, text in enumerate(_records(group)) if text}


def finish(group: zarr.Group, meta: dict[str, Any]) -> tuple[int, ...]:
    """Record the skipped samples and mark the job complete (rank 0, after every rank is done)."""
    valid: Any = group["valid"]
    skipped = tuple(int(i) for i in np.nonzero(~np.asarray(valid[:]))[0])
    group.attrs["fxtap"] = {**meta, "skipped": list(skipped), "complete": True}
    return skipped


def size_on_disk(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def job_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of the job's identity (its ``job`` and ``taps`` metadata)."""
    text = json.dumps([meta.get("job"), meta.get("taps")], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class _AtomicStore(WrapperStore[LocalStore]):
    """A ``LocalStore`` whose writes go through ``write_file`` and are recorded.

    Each written file's ``[sha256, size]`` is kept in ``written`` for the chunk records. A
    failed write is kept in ``error`` instead of raised inside zarr's asyncio tasks (whose
    cancellation would print pages of "Task was destroyed"); ``check()`` raises it.
    """

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store)
        self.written: dict[str, list[Any]] = {}
        self.error: FxtapError | None = None

    async def set(self, key: str, value: Any) -> None:
        if self.error is not None:
            return
        data = value.to_bytes()
        try:
            await asyncio.to_thread(write_file, Path(self._store.root) / key, data)
        except OutputPathError as exc:
            self.error = self.error or exc
            return
        self.written[key] = _integrity.digest_bytes(data)

    def check(self) -> None:
        """Raise the first failed write's error, if any."""
        if self.error is not None:
            raise self.error


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two jobs' metadata, in words; digests are explained."""
    out = []
    for part in ("job", "taps", "versions"):
        a, b = old.get(part, {}), new.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) == b.get(key):
                continue
            if part == "job" and isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                for sub in sorted(set(a[key]) | set(b[key])):
                    if a[key].get(sub) != b[key].get(sub):
                        out.append(_why(f"{key}.{sub}", a[key].get(sub), b[key].get(sub)))
            else:
                out.append(_why(key if part == "job" else f"{part} {key}", a.get(key), b.get(key)))
    return out


#: What a differing digest means, and what to do about it.
_DIGESTS = {
    "parameters_sha256": "the weights differ: a model built with random initialisation gets "
    "new weights on every run unless seeded, and a checkpoint may be another. Build it after "
    "torch.manual_seed(...) and pass that seed as seed= (--seed, default 0, on the command line), run a saved extractor "
    "(fxtap extract MODEL --nodes ... -o FILE.fxtap, then fxtap run FILE.fxtap), or start over "
    "with resume=False (--restart)",
    "code_sha256": "the model's code differs (its traced graphs, module types or settings)",
    "data.samples_sha256": "the data's files differ (added, removed, renamed or changed)",
}


def _why(key: str, there: Any, here: Any) -> str:
    if key in _DIGESTS:
        return f"{_DIGESTS[key]} ({key} {str(there)[:12]}... there, {str(here)[:12]}... here)"
    return f"{key} is {there!r} there, {here!r} here"


def _records(group: zarr.Group) -> list[Any]:
    marks: Any = group["checksums"]
    return list(np.asarray(marks[:], dtype=object))
